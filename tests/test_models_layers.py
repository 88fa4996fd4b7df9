"""Layers against explicit slow references (float64 numpy loops)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models import layers
from lm.models import rope as rope_lib
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


@pytest.mark.parametrize("causal,K", [(True, 2), (False, 2), (True, 4)])
def test_attention_matches_slow_reference_with_gqa_and_packing(causal, K):
  rng = np.random.default_rng(2)
  B, T, H, E = 2, 7, 4, 8
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
  from lm.families.token.family import TokenLM
  cfg = TransformerConfig(vocab_size=11, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, num_layers=2)
  ids = jnp.zeros((1, 4), jnp.int32)
  boxed = TokenLM(cfg).init(jax.random.PRNGKey(0), {"inputs": ids})["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim


def _grads(f, *args):
  w = jax.random.normal(jax.random.PRNGKey(9), jax.eval_shape(f, *args).shape)
  return jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("K", [2, 4])
def test_attention_gradients_match_jax_nn_dot_product_attention(K):
  """The written-out kernel against jax's own, gradients included (empty padding rows zeroed in both)."""
  rng = np.random.default_rng(5)
  B, T, H, E = 2, 6, 4, 8
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, E)), jnp.float32) for n in (H, K, K))
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0], [1] * 6], jnp.int32)
  pos = jnp.asarray([[0, 1, 0, 1, 2, 0], list(range(6))], jnp.int32)
  mask = layers.attention_mask(seg, seg, pos, pos, True)

  def reference(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return jnp.where(jnp.any(mask, -1)[:, 0, :, None, None], out, 0)
  got = _grads(lambda q, k, v: layers.dot_product_attention(q, k, v, mask), q, k, v)
  want = _grads(reference, q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_rope_and_swish_gate_custom_gradients_match_autodiff():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 5, 3, 8)), jnp.float32)
  pos = jnp.asarray(rng.integers(0, 50, size=(2, 5)), jnp.int32)

  def plain_rope(x):  # the same rotation, left to autodiff
    half = x.shape[-1] // 2
    angle = pos.astype(jnp.float32)[..., None] * 10_000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)[None, None]
    return rope_lib._rotate(x, jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :])
  np.testing.assert_allclose(np.asarray(_grads(lambda x: layers.rope(x, pos), x)[0]),
                             np.asarray(_grads(plain_rope, x)[0]), rtol=1e-5, atol=1e-6)
  gate, up = (jnp.asarray(rng.normal(size=(7, 5)) * 3, jnp.float32) for _ in range(2))
  got = _grads(layers.swish_gate, gate, up)
  want = _grads(lambda g, u: jax.nn.silu(g) * u, gate, up)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_layernorm_and_gelu_mlp_match_formulas():
  x = np.random.default_rng(7).normal(size=(2, 3, 8)).astype(np.float32)
  norm = layers.LayerNorm(eps=1e-6)
  params = nn.unbox(norm.init(jax.random.PRNGKey(0), jnp.asarray(x)))
  centred = x.astype(np.float64) - x.mean(-1, keepdims=True)
  want = centred / np.sqrt(np.mean(centred ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(norm.apply(params, jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
  cfg = TransformerConfig(vocab_size=11, d_model=8, d_ff=16, mlp="gelu")
  mlp = layers.MLP(cfg)
  p = nn.unbox(mlp.init(jax.random.PRNGKey(1), jnp.asarray(x)))["params"]
  h = x.astype(np.float64) @ np.asarray(p["wi"]["kernel"], np.float64)
  gelu = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": p}, jnp.asarray(x))),
                             gelu @ np.asarray(p["wo"]["kernel"], np.float64), rtol=1e-4, atol=1e-5)


def test_gpt2_shaped_token_model_uses_learned_absolute_positions():
  """mlp=gelu, positions=learned, norm=layer: a position table of seq_len rows, no RoPE (shifting every
  position by one changes the outputs only through the table; past its end the last row is reused)."""
  from lm import config as config_lib, families
  c = config_lib.resolve_backend_defaults(families.load_config(
      "token_ntp:tiny", ["model.mlp=gelu", "model.positions=learned", "model.norm=layer", "data.seq_len=16"]), "cpu")
  model = families.get("token").build_model(c, 259)
  ids = jnp.asarray(np.random.default_rng(8).integers(0, 259, size=(2, 16)), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), {"inputs": ids}))["params"]
  assert params["embed"]["positions"].shape == (16, c.model.d_model)
  assert "wi" in params["decoder"]["layers"]["mlp"] and "wi_0" not in params["decoder"]["layers"]["mlp"]
  pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), ids.shape)
  run = lambda p, positions: model.apply({"params": p}, {"inputs": ids, "positions": positions}).logits  # noqa: E731
  assert not np.allclose(run(params, pos), run(params, pos + 1))
  # The same table row at every position: no position information is left anywhere else.
  flat = dict(params, embed=dict(params["embed"], positions=jnp.broadcast_to(params["embed"]["positions"][:1], (16, c.model.d_model))))
  np.testing.assert_allclose(run(flat, pos), run(flat, pos + 1), rtol=1e-5, atol=1e-5)
