"""The optimizer (`lm/train/optim.py`): warmup then decay, clipping, and weight decay on matrices only."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lm import config as config_lib
from lm.data.tokenizers import ByteTokenizer
from lm.train import run as run_lib
from lm.train.optim import learning_rate, make_optimizer


def _optim(**kw):
  base = config_lib.base_config().optim.to_dict()
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _setup(*overrides):
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, ["model.num_layers=1", "model.d_model=32", "model.d_ff=64", "data.seq_len=16",
                                 "data.batch_size=8", *overrides])
  return run_lib.build_run(c, ByteTokenizer()), None


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_linearly_then_decays_to_the_floor(schedule):
  o = _optim(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
  lr = learning_rate(o, 110)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10)], [0.0, 0.5, 1.0], rtol=1e-6)
  end = 1.0 if schedule == "constant" else 0.1
  np.testing.assert_allclose(float(lr(110)), end, rtol=1e-5)
  if schedule == "cosine":  # halfway through the decay: (1 + cos(pi / 2)) / 2 between peak and floor
    np.testing.assert_allclose(float(lr(60)), 0.1 + 0.9 * 0.5, rtol=1e-5)
  if schedule == "linear":
    np.testing.assert_allclose(float(lr(60)), 0.55, rtol=1e-5)


def test_clipping_bounds_the_global_norm_of_the_first_update():
  """Adam's first update is lr * g / (|g| + eps) elementwise whatever the scale, so clip and compare the
  clipped gradient Adam saw: a gradient 100x over `clip_norm` moves like one at the norm."""
  o = _optim(lr=1e-2, warmup_steps=0, clip_norm=1.0, weight_decay=0.0, schedule="constant", eps=1e-3)
  params = {"w": jnp.ones((4,))}
  tx = make_optimizer(o, 10)
  big = {"w": jnp.full((4,), 50.0)}   # norm 100
  at_norm = {"w": jnp.full((4,), 0.5)}  # norm 1: what clipping leaves of `big`
  u_big, _ = tx.update(big, tx.init(params), params)
  u_norm, _ = tx.update(at_norm, tx.init(params), params)
  np.testing.assert_allclose(u_big["w"], u_norm["w"], rtol=1e-6)


def test_weight_decay_skips_norms():
  run, _ = _setup("optim.weight_decay=1.0", "optim.warmup_steps=0")
  state = run.init(0)
  zero_grads = jax.tree.map(jnp.zeros_like, state.params)
  updates, _ = run.tx.update(zero_grads, state.opt_state, state.params)
  flat = dict(jax.tree_util.tree_flatten_with_path(updates)[0])
  for path, u in flat.items():
    name = jax.tree_util.keystr(path)
    if "norm" in name:
      assert not np.any(np.asarray(u)), name
  assert any(np.any(np.asarray(u)) for p, u in flat.items() if "mlp" in jax.tree_util.keystr(p))
