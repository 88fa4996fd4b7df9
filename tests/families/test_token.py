"""The token LM: packing isolation, scan/unroll/remat equivalence."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models.layers import TransformerConfig
from lm.families.token.family import TokenLM

CFG = TransformerConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64)


def _init(cfg, T=8):
  ids = jnp.zeros((1, T), jnp.int32)
  return nn.unbox(jax.jit(TokenLM(cfg).init)(jax.random.PRNGKey(0), {"inputs": ids})["params"])


def test_packed_documents_do_not_see_each_other():
  """Logits of a packed row equal those of each document run alone."""
  params = _init(CFG)
  apply = jax.jit(lambda b: TokenLM(CFG).apply({"params": params}, b).logits)
  doc_a = jnp.asarray([[3, 5, 7, 9, 11]], jnp.int32)
  doc_b = jnp.asarray([[4, 6, 8]], jnp.int32)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  batch = dict(inputs=packed, segment_ids=jnp.asarray([[1] * 5 + [2] * 3], jnp.int32),
               positions=jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2]], jnp.int32))
  got = apply(batch)
  alone_a = apply({"inputs": doc_a})
  alone_b = apply({"inputs": doc_b})
  np.testing.assert_allclose(got[:, :5], alone_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 5:], alone_b, rtol=1e-5, atol=1e-5)


def test_logits_are_causal():
  params = _init(CFG)
  ids = jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32)
  changed = ids.at[0, 4].set(9)
  apply = jax.jit(lambda ids: TokenLM(CFG).apply({"params": params}, {"inputs": ids}).logits)
  a, b = apply(ids), apply(changed)
  np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("variant", [dict(scan_unroll=2), dict(scan_unroll=1, remat_policy="full"),
                                     dict(scan_unroll=2, remat_policy="attn_out,mlp_hidden")])
def test_scan_unroll_and_remat_do_not_change_values_or_gradients(variant):
  base = dataclasses.replace(CFG, scan_unroll=1)
  other = dataclasses.replace(CFG, **variant)
  params = _init(base)
  batch = {"inputs": jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8]], jnp.int32)}

  def loss(cfg, p):
    return jnp.sum(TokenLM(cfg).apply({"params": p}, batch).logits ** 2)

  la, ga = jax.jit(jax.value_and_grad(lambda p: loss(base, p)))(params)
  lb, gb = jax.jit(jax.value_and_grad(lambda p: loss(other, p)))(params)
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), ga, gb)


def test_unscanned_layers_match_scanned_with_same_weights():
  scanned = _init(CFG)
  flat = dataclasses.replace(CFG, scan_layers=False)
  unstacked = {k: v for k, v in scanned.items() if k != "decoder"}
  unstacked["decoder"] = {f"layers_{i}": jax.tree.map(lambda x: x[i], scanned["decoder"]["layers"])
                          for i in range(CFG.num_layers)}
  batch = {"inputs": jnp.asarray([[5, 4, 3, 2, 1]], jnp.int32)}
  a = jax.jit(TokenLM(CFG).apply)({"params": scanned}, batch).logits
  b = jax.jit(TokenLM(flat).apply)({"params": unstacked}, batch).logits
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_untied_head_has_its_own_parameters():
  params = _init(dataclasses.replace(CFG, tie_embeddings=False))
  assert "unembed" in params and params["unembed"]["kernel"]["kernel"].shape == (32, 24)  # padded to a multiple of 8


def test_padded_vocabulary_gets_no_probability():
  params = _init(CFG)
  logits = jax.jit(TokenLM(CFG).apply)({"params": params}, {"inputs": jnp.asarray([[1, 2, 3]], jnp.int32)}).logits
  assert logits.shape[-1] == 24
  probs = jax.nn.softmax(logits, axis=-1)
  assert float(jnp.max(probs[..., CFG.vocab_size:])) == 0.0
