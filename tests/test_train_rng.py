"""A random key per training step (`lm.train.step.step_keys`): it reaches the loss as `LossContext.rng` and the
model as `rngs`; a resumed run draws what the uninterrupted one drew. The sharded side (mesh (2,2,2) against one
device, with this file's objective) is in tests/sharded_run.py, read by tests/test_parallel.py."""

import json
import pathlib
import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import objectives
from lm.objectives.base import LossTerms, next_unit_nll
from lm.train import loop
from lm.train.step import step_keys


@objectives.register("test_random_drop")
def random_drop(keep: float = 0.5):
  """Next-token loss on a random fraction `keep` of the positions, drawn from the step's key."""
  def loss(outputs, batch, ctx):
    mask = batch["loss_mask"].astype(jnp.float32) * jax.random.bernoulli(ctx.rng, keep, batch["targets"].shape)
    nll = next_unit_nll(outputs, batch["targets"]).nll
    return LossTerms(total=jnp.sum(nll * mask), count=jnp.sum(mask),
                     metrics=dict(nll_sum=jnp.sum(nll * mask),
                                  n_bytes=jnp.sum(ctx.unit_bytes[batch["targets"]] * mask)))
  return loss


def test_step_keys_depend_on_the_step_and_never_repeat_a_later_state_key():
  rng = jax.random.PRNGKey(3)
  chain, seen = rng, set()
  for step in range(6):
    rngs, loss_key = step_keys(chain, jnp.int32(step))
    again = step_keys(chain, jnp.int32(step))
    assert np.array_equal(again[1], loss_key)
    keys = [tuple(np.asarray(k).tolist()) for k in (*rngs.values(), loss_key)]
    assert len(set(keys)) == len(keys) and not seen & set(keys)
    seen |= set(keys)
    chain = jax.random.fold_in(chain, step)  # how TrainState.rng advances
    seen.add(tuple(np.asarray(chain).tolist()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  rng = random.Random(0)
  words = "river stone light quiet seven paper north glass among under the a".split()
  for i in range(20):
    (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(150)) + ".\n")
  return d


def config_for(corpus, steps, objective):
  config = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(config, [
      f"data.source={corpus}", f"train.steps={steps}", "train.checkpoint_every=2", "train.log_every=1",
      "train.eval_every=0", "eval.max_batches=1", "sample.max_new=0", "data.seq_len=32", "data.batch_size=8",
      "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=2", "model.d_ff=64"])
  config.objectives = [dict(name=objective, weight=1.0)]
  return config


def losses(workdir) -> dict[int, float]:
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "loss" in record:
      out[record["step"]] = record["loss"]
  return out


def test_an_objective_drawing_from_the_step_key_trains_and_resumes_bitwise(corpus, tmp_path):
  whole = tmp_path / "whole"
  loop.train(config_for(corpus, 4, "test_random_drop"), whole)
  a = losses(whole)
  assert sorted(a) == [1, 2, 3, 4]
  # Interrupted after step 2's checkpoint: drop step 4's and the records past step 2, then resume.
  shutil.rmtree(whole / "checkpoints" / "4")
  metrics = whole / "metrics.jsonl"
  metrics.write_text("".join(l for l in metrics.read_text().splitlines(True) if json.loads(l).get("step", 0) <= 2))
  loop.train(config_for(corpus, 4, "test_random_drop"), whole)
  b = losses(whole)
  assert {s: b[s] for s in (3, 4)} == {s: a[s] for s in (3, 4)}  # bitwise
  plain = tmp_path / "plain"
  loop.train(config_for(corpus, 1, "ntp"), plain)
  assert losses(plain)[1] != a[1]  # the draw is used: a random half of the positions is not the whole
