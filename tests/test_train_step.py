"""The train step (`lm/train/step.py`): gradient accumulation is exact, a non-finite step changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import config as config_lib
from lm import objectives
from lm.data.tokenizers import ByteTokenizer
from lm.objectives.base import LossTerms, register
from lm.train import run as run_lib
from lm.train.step import make_train_step


def _setup(*overrides):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, ["model.num_layers=1", "model.d_model=32", "model.d_ff=64",
                                 "data.seq_len=16", "data.batch_size=8", *overrides])
  run = run_lib.build_run(c, ByteTokenizer())
  rng = np.random.default_rng(0)
  B, T = 8, 16
  batch = dict(inputs=rng.integers(0, 256, (B, T)), targets=rng.integers(0, 256, (B, T)),
               segment_ids=np.repeat([[1] * 10 + [2] * 6], B, 0), positions=np.tile(np.arange(T), (B, 1)),
               loss_mask=(rng.random((B, T)) > 0.2))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  return run, batch


def _step(run, objectives_cfg, accum):
  lr = optax.constant_schedule(1e-2)
  return jax.jit(make_train_step(run.model, objectives.build(objectives_cfg), run.tx, lr,
                                 jnp.ones(259), accum))


def test_gradient_accumulation_equals_one_big_batch():
  run, batch = _setup()
  s1, m1 = _step(run, run.config.objectives, 1)(run.init(0), batch)
  s4, m4 = _step(run, run.config.objectives, 4)(run.init(0), batch)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s4.params)


@register("test_nan")
def _nan_objective():
  def loss(outputs, batch, ctx):
    return LossTerms(total=jnp.sum(outputs.logits) * jnp.nan, count=jnp.asarray(1.0), metrics={})
  return loss


def test_non_finite_step_is_skipped_and_counted():
  run, batch = _setup()
  state = run.init(0)
  before = jax.device_get(state.params)
  new, metrics = _step(run, [dict(name="test_nan")], 1)(state, batch)
  assert float(metrics["skipped"]) == 1.0 and int(new.nonfinite_streak) == 1 and int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new.params), before)
