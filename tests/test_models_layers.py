"""Layers against explicit slow references (float64 numpy loops)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models import layers
from lm.models.layers import TransformerConfig


def test_rope_matches_explicit_rotation():
  rng = np.random.default_rng(0)
  B, T, H, E, base = 2, 5, 3, 8, 10_000.0
  x = rng.normal(size=(B, T, H, E)).astype(np.float32)
  pos = rng.integers(0, 100, size=(B, T)).astype(np.int32)
  got = np.asarray(layers.rope(jnp.asarray(x), jnp.asarray(pos), base))
  want = np.zeros_like(x, dtype=np.float64)
  half = E // 2
  for b in range(B):
    for t in range(T):
      for i in range(half):
        theta = pos[b, t] * base ** (-i / half)
        c, s = np.cos(theta), np.sin(theta)
        a, bb = x[b, t, :, i].astype(np.float64), x[b, t, :, i + half].astype(np.float64)
        want[b, t, :, i] = a * c - bb * s
        want[b, t, :, i + half] = bb * c + a * s
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_rope_is_relative():
  """<rope(q, m), rope(k, n)> depends only on m - n."""
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  dots = [float(jnp.sum(layers.rope(q, jnp.array([[m + 7]])) * layers.rope(k, jnp.array([[m]]))))
          for m in (0, 3, 50)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-4)


def slow_attention(q, k, v, seg, pos, causal):
  """Explicit loops in float64: query (b, t, h) attends to keys of the same segment (and not later)."""
  B, T, H, E = q.shape
  K = k.shape[2]
  out = np.zeros((B, T, H, E))
  for b in range(B):
    for t in range(T):
      for h in range(H):
        kh = h // (H // K)
        allowed = [s for s in range(T) if seg[b, s] == seg[b, t] and seg[b, s] != 0
                   and (not causal or pos[b, s] <= pos[b, t])]
        if not allowed or seg[b, t] == 0:
          continue
        scores = np.array([q[b, t, h] @ k[b, s, kh] for s in allowed]) / np.sqrt(E)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        out[b, t, h] = sum(wi * v[b, s, kh] for wi, s in zip(w, allowed))
  return out


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_slow_reference_with_gqa_and_packing(causal):
  rng = np.random.default_rng(2)
  B, T, H, K, E = 2, 7, 4, 2, 8
  q, k, v = (rng.normal(size=(B, T, n, E)).astype(np.float32) for n in (H, K, K))
  seg = np.array([[1, 1, 1, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1, 1]], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 0, 0], list(range(7))], np.int32)
  mask = layers.attention_mask(jnp.asarray(seg), jnp.asarray(seg), jnp.asarray(pos), jnp.asarray(pos), causal)
  got = np.asarray(layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask))
  want = slow_attention(q, k, v, seg, pos, causal)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_module_matches_reference_from_its_own_params():
  cfg = TransformerConfig(vocab_size=11, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32)
  module = layers.Attention(cfg)
  rng = np.random.default_rng(3)
  B, T = 2, 6
  x = jnp.asarray(rng.normal(size=(B, T, 16)), jnp.float32)
  pos = jnp.tile(jnp.arange(T, dtype=jnp.int32), (B, 1))
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2], [1] * 6], jnp.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x, pos, seg))["params"]
  got = module.apply({"params": params}, x, pos, seg)
  q = layers.rope(jnp.einsum("btd,dhe->bthe", x, params["query"]), pos)
  k = layers.rope(jnp.einsum("btd,dke->btke", x, params["key"]), pos)
  v = jnp.einsum("btd,dke->btke", x, params["value"])
  att = slow_attention(np.asarray(q), np.asarray(k), np.asarray(v), np.asarray(seg), np.asarray(pos), True)
  want = np.einsum("bthe,hed->btd", att, np.asarray(params["out"], np.float64))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_rmsnorm_matches_formula():
  x = np.random.default_rng(4).normal(size=(2, 3, 8)).astype(np.float32)
  norm = layers.RMSNorm(eps=1e-6)
  params = nn.unbox(norm.init(jax.random.PRNGKey(0), jnp.asarray(x)))
  want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(norm.apply(params, jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)


def test_every_parameter_has_logical_axes():
  from lm.families.token import TokenLM
  cfg = TransformerConfig(vocab_size=11, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, num_layers=2)
  ids = jnp.zeros((1, 4), jnp.int32)
  boxed = TokenLM(cfg).init(jax.random.PRNGKey(0), {"inputs": ids})["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
