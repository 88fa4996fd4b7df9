"""Objectives beyond the next unit against float64 loop references, on packed segments; heads and gradients
through the real model; composition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import objectives
from lm.data.tokenizers import ByteTokenizer
from lm.errors import ConfigError
from lm.models.base import ModelOutputs
from lm.objectives.base import LossContext
from lm.families.token.objectives import future_targets, top_targets
from lm.train import loop
from lm.train import run as run_lib

B, T, V = 3, 12, 11


def packed_batch(seed=0):
  rng = np.random.default_rng(seed)
  seg = np.array([[1] * 5 + [2] * 7, [1] * 12, [1] * 3 + [2] * 4 + [0] * 5])  # row 2 ends in padding
  mask = (seg > 0).astype(np.int32)
  targets = np.where(mask > 0, rng.integers(0, 4, (B, T)), 0)  # few distinct units: repeats for TOP
  inputs = rng.integers(0, V, (B, T))
  return {k: jnp.asarray(v, jnp.int32) for k, v in dict(
      inputs=inputs, targets=targets, segment_ids=seg, loss_mask=mask,
      positions=np.tile(np.arange(T), (B, 1))).items()}


def ref_valid(batch, b, t, k):
  seg, mask = np.asarray(batch["segment_ids"]), np.asarray(batch["loss_mask"])
  p = t + k - 1
  return p < T and mask[b, t] and mask[b, p] and seg[b, p] == seg[b, t]


def ref_ce(logits, target):
  logits = np.asarray(logits, np.float64)
  return np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[target]


def ref_head_loss(logits_BxTxV, batch, k):
  targets = np.asarray(batch["targets"])
  total = 0.0
  for b in range(B):
    for t in range(T):
      if ref_valid(batch, b, t, k):
        total += ref_ce(logits_BxTxV[b, t], targets[b, t + k - 1])
  return total


def ctx():
  return LossContext(step=jnp.asarray(0), unit_bytes=jnp.ones(V))


def logits(seed, *lead):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(*lead, B, T, V)) * 2, jnp.float32)


def test_future_targets_stay_inside_their_segment():
  batch = packed_batch()
  for k in (1, 2, 4):
    targets, mask = future_targets(batch, k)
    for b in range(B):
      for t in range(T):
        assert bool(mask[b, t]) == bool(ref_valid(batch, b, t, k)), (k, b, t)
        if mask[b, t]:
          assert targets[b, t] == batch["targets"][b, t + k - 1]


def test_mtp_matches_a_loop_reference():
  batch = packed_batch()
  main, heads = logits(1), logits(2, 3)
  terms = objectives.build([dict(name="mtp", n=4)])(ModelOutputs(main, {"mtp_logits": heads}), batch, ctx())
  expect = ref_head_loss(main, batch, 1) + sum(ref_head_loss(heads[k - 2], batch, k) for k in (2, 3, 4))
  np.testing.assert_allclose(float(terms.total), expect, rtol=1e-5)
  assert float(terms.count) == float(np.sum(batch["loss_mask"]))
  assert float(terms.metrics["mtp/nll_3_count"]) == sum(ref_valid(batch, b, t, 3) for b in range(B) for t in range(T))


def test_dsmtp_matches_a_loop_reference():
  batch = packed_batch()
  heads = logits(3, 2)
  terms = objectives.build([dict(name="dsmtp", depth=2)])(ModelOutputs(logits(1), {"dsmtp_logits": heads}),
                                                          batch, ctx())
  expect = (ref_head_loss(heads[0], batch, 2) + ref_head_loss(heads[1], batch, 3)) / 2
  np.testing.assert_allclose(float(terms.total), expect, rtol=1e-5)


def test_ftp_matches_a_loop_reference():
  batch = packed_batch()
  heads = logits(4, 3)
  terms = objectives.build([dict(name="ftp", n=3, gamma=0.5)])(ModelOutputs(logits(1), {"ftp_logits": heads}),
                                                              batch, ctx())
  expect = sum(0.5 ** (j - 1) * ref_head_loss(heads[j - 1], batch, j) for j in (1, 2, 3))
  np.testing.assert_allclose(float(terms.total), expect, rtol=1e-5)


def brute_top_targets(batch, window):
  targets = np.asarray(batch["targets"])
  out = np.full((B, T, V), -np.inf)
  for b in range(B):
    for t in range(T):
      for v in range(V):
        for d in range(1, window + 1):
          if ref_valid(batch, b, t, d) and targets[b, t + d - 1] == v:
            out[b, t, v] = window - d
            break
  return out


@pytest.mark.parametrize("window", [1, 3, 16])
def test_top_targets_match_brute_force(window):
  batch = packed_batch(window)
  got = top_targets(batch["targets"], batch["loss_mask"], batch["segment_ids"], V, window)
  np.testing.assert_array_equal(np.asarray(got), brute_top_targets(batch, window))


def test_top_listnet_matches_a_loop_reference():
  batch, window = packed_batch(), 5
  top_logits = logits(5)
  terms = objectives.build([dict(name="top", window=window)])(ModelOutputs(logits(1), {"top_logits": top_logits}),
                                                             batch, ctx())
  scores = brute_top_targets(batch, window)
  expect = 0.0
  for b in range(B):
    for t in range(T):
      if batch["loss_mask"][b, t]:
        p = np.exp(scores[b, t] - scores[b, t].max())
        p /= p.sum()
        z = np.asarray(top_logits[b, t], np.float64)
        logq = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        expect -= np.sum(p[p > 0] * logq[p > 0])
  np.testing.assert_allclose(float(terms.total), expect, rtol=1e-5)


def test_rho_keeps_the_largest_excess_and_reports_unweighted_bpb():
  batch, keep = packed_batch(), 0.4
  main, ref = logits(6), logits(7)
  c = LossContext(step=jnp.asarray(0), unit_bytes=jnp.ones(V), reference_logits=ref)
  terms = objectives.build([dict(name="rho", keep=keep, reference="unused-here")])(ModelOutputs(main), batch, c)
  targets, mask = np.asarray(batch["targets"]), np.asarray(batch["loss_mask"])
  rows = [(ref_ce(main[b, t], targets[b, t]) - ref_ce(ref[b, t], targets[b, t]), ref_ce(main[b, t], targets[b, t]))
          for b in range(B) for t in range(T) if mask[b, t]]
  n_keep = math.ceil(keep * len(rows))
  kept = sorted(rows, reverse=True)[:n_keep]
  np.testing.assert_allclose(float(terms.total), sum(nll for _, nll in kept), rtol=1e-5)
  assert float(terms.count) == n_keep
  summary = objectives.summarize(jax.device_get(terms.metrics))
  all_nll = sum(nll for _, nll in rows)
  np.testing.assert_allclose(summary["rho/nll"], all_nll / len(rows), rtol=1e-5)
  np.testing.assert_allclose(summary["rho/bpb"], all_nll / (math.log(2) * len(rows)), rtol=1e-5)
  np.testing.assert_allclose(summary["rho/selected"], n_keep / len(rows), rtol=1e-6)


def test_composition_is_the_weighted_sum_and_keeps_both_metrics():
  batch = packed_batch()
  out = ModelOutputs(logits(1), {"mtp_logits": logits(2, 1)})
  ntp = objectives.build([dict(name="ntp")])(out, batch, ctx())
  mtp = objectives.build([dict(name="mtp", n=2)])(out, batch, ctx())
  both = objectives.build([dict(name="ntp", weight=1.0), dict(name="mtp", n=2, weight=0.5)])(out, batch, ctx())
  np.testing.assert_allclose(float(both.total), float(ntp.total) + 0.5 * float(mtp.total), rtol=1e-6)
  assert {"ntp/nll_sum", "mtp/nll_2_sum", "ntp/count", "mtp/count"} <= set(both.metrics)


def test_schedules_weight_each_term_by_step():
  batch = packed_batch()
  out = ModelOutputs(logits(1), {"dsmtp_logits": logits(2, 1)})
  spec = [dict(name="ntp"), dict(name="dsmtp", weight=dict(kind="step", values=[0.3, 0.1], boundaries=[100]))]
  loss = objectives.build(spec)
  ntp = float(objectives.build([dict(name="ntp")])(out, batch, ctx()).total)
  ds = float(objectives.build([dict(name="dsmtp")])(out, batch, ctx()).total)
  for step, w in ((0, 0.3), (99, 0.3), (100, 0.1)):
    c = LossContext(step=jnp.asarray(step), unit_bytes=jnp.ones(V))
    np.testing.assert_allclose(float(loss(out, batch, c).total), ntp + w * ds, rtol=1e-6)


def test_a_head_that_takes_every_layer_fails_before_compiling():
  c = config_lib.load_experiment("token_ntp:tiny")
  c.objectives = [dict(name="mtp", n=5, equal_params=True)]
  with pytest.raises(ConfigError, match=r"heads take 4 of model.num_layers=4 layers"):
    run_lib.build_run(c, ByteTokenizer())


def test_conflicting_heads_are_one_line():
  with pytest.raises(ConfigError, match="'mtp' head twice with different options"):
    objectives.requirements([dict(name="mtp", n=2), dict(name="mtp", n=3)])


@pytest.mark.parametrize("name", ["top", "ftp", "dsmtp"])
def test_auxiliary_objective_alone_is_one_line(name):
  # `--config.objectives.0.name=top` in place of ntp would train the TOP head and leave the sampling head at init.
  with pytest.raises(ConfigError, match=rf"'{name}' train extra heads only.*objectives=\[ntp, {name}\]"):
    objectives.requirements([dict(name=name)])
  assert objectives.requirements([dict(name="ntp"), dict(name=name)]).heads  # beside ntp: fine


@pytest.mark.parametrize("spec, subtree, layers", [
    (dict(name="mtp", n=3), "mtp_head", 3),
    (dict(name="mtp", n=3, equal_params=True), "mtp_head", 1),
    (dict(name="dsmtp", depth=2), "dsmtp_head", 3),
    (dict(name="top", window=4), "top_head", 3),
    (dict(name="ftp", n=3, pseudo=2), "ftp_head", 3),
])
def test_heads_train_with_finite_gradients_and_eval_ignores_them(spec, subtree, layers):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, ["model.num_layers=3", "model.d_model=32", "model.d_ff=64", "model.num_heads=2",
                                 "model.num_kv_heads=2", "data.seq_len=12", "data.batch_size=3"])
  c.objectives = [dict(name="ntp"), spec]
  run = run_lib.build_run(c, ByteTokenizer())
  params = run.init(0).params
  assert subtree in params and params["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == layers
  batch = packed_batch()
  loss_fn = objectives.build(c.objectives)

  def total(p):
    return loss_fn(run.model.apply({"params": p}, batch), batch, ctx()).total
  grads = jax.jit(jax.grad(total))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads[subtree]))
  # The next-unit logits do not depend on the head: dropping its subtree changes nothing for evaluation.
  logits = jax.jit(lambda p: run.model.apply({"params": p}, batch, with_heads=False).logits)
  full = logits(params)
  trimmed = logits({k: v for k, v in params.items() if k != subtree})
  np.testing.assert_array_equal(np.asarray(full), np.asarray(trimmed))


def test_rho_trains_against_a_reference_run_and_checks_its_tokenizer(tmp_path):
  corpus = tmp_path / "corpus"  # not tmp_path itself: the runs write their checkpoints there
  corpus.mkdir()
  import random
  rng = random.Random(0)
  for i in range(12):
    (corpus / f"{i}.txt").write_text(" ".join(rng.choice(["ab", "cd", "efg", "hi"]) for _ in range(150)))
  base = ["train.steps=6", "train.log_every=1", "train.checkpoint_every=0", "train.eval_every=0",
          "eval.max_batches=1", "data.seq_len=16", "data.batch_size=4", "model.num_layers=1", "model.d_model=16",
          "model.d_ff=32", "model.num_heads=2", "model.num_kv_heads=2", f"data.source={corpus}",
          "data.val_fraction=0.2", "data.test_fraction=0"]
  ref = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(ref, base)
  loop.train(ref, str(tmp_path / "ref"))
  c = config_lib.load_experiment("token_rho:tiny")
  config_lib.apply_overrides(c, [*base, "objectives.0.keep=0.5"])
  with pytest.raises(ConfigError, match="needs a reference run"):
    loop.train(c, str(tmp_path / "no-ref"))
  config_lib.apply_overrides(c, [f"objectives.0.reference={tmp_path / 'ref'}"])
  loop.train(c, str(tmp_path / "rho"))
  import json
  rows = [json.loads(l) for l in (tmp_path / "rho" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
  assert len(rows) == 6 and all(0.5 <= r["rho/selected"] < 0.6 for r in rows), rows
  assert all(r["rho/reference_nll"] > 0 and np.isfinite(r["loss"]) for r in rows)
  bpe = config_lib.load_experiment("token_rho:tiny")
  config_lib.apply_overrides(bpe, [*base, "data.tokenizer=bpe", "data.vocab_size=270",
                                   f"objectives.0.reference={tmp_path / 'ref'}"])
  from lm.errors import CheckpointError
  with pytest.raises(CheckpointError, match=r"reference run .* has a tokenizer of 259 ids, this run's has"):
    loop.train(bpe, str(tmp_path / "rho-bpe"))
