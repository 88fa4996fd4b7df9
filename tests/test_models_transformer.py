"""The decoder stack (`lm/models/transformer.py`): causal vs bidirectional, and named remat policies that
change memory, never values or gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.layers import TransformerConfig
from lm.models.transformer import REMAT_NAMES, Transformer

CFG = TransformerConfig(vocab_size=8, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, d_ff=32, scan_unroll=2)


def _run(cfg, causal, x):
  T = x.shape[1]
  pos, seg = jnp.arange(T)[None], jnp.ones((1, T), jnp.int32)
  model = Transformer(cfg, causal=causal)
  params = model.init(jax.random.PRNGKey(0), x, pos, seg)["params"]
  return lambda p, y: model.apply({"params": p}, y, pos, seg), params


@pytest.mark.parametrize("causal", [True, False])
def test_a_later_position_changes_earlier_outputs_only_without_causality(causal):
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 6, 16))
  f, params = _run(CFG, causal, x)
  moved = f(params, x.at[0, 5].add(1.0)) - f(params, x)
  assert bool(jnp.all(moved[0, :5] == 0)) == causal
  assert float(jnp.abs(moved[0, 5]).sum()) > 0


@pytest.mark.parametrize("policy", ["full", "dots", ",".join(REMAT_NAMES), "attn_residual"])
def test_remat_policies_keep_values_and_gradients(policy):
  import dataclasses
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 16))
  f, params = _run(CFG, True, x)
  g, _ = _run(dataclasses.replace(CFG, remat_policy=policy), True, x)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda p: jnp.sum(fn(p, x) ** 2)))  # noqa: E731
  (a, ga), (b, gb) = loss(f)(params), loss(g)(params)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), ga, gb)
