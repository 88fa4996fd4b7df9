"""Autoregressive decoding with a KV cache inside one jitted `jax.lax.while_loop`: greedy (temperature 0),
temperature, top-k and top-p (nucleus) sampling of any unit decoder.

The model is a family module built with `decode=True` that takes `{"inputs", "positions", "segment_ids"}` one
unit at a time, keeps keys and values in the `cache` collection (made by its `init_cache` method) and appends
at the cache index (the unit-decoder step protocol, `lm.families.base.UnitDecoder`). Self-speculative decoding
with the token family's heads is `lm.families.token.speculative`; chunk-by-chunk decoding of the chunked
families is `lm.families.chunked.sampler`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.decoding import rollout


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Next ids [B]. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. Draws from
  `rollout.processed_log_probs` (the same draws as from the filtered logits: a per-row constant apart)."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logp_BxV = rollout.processed_log_probs(logits_BxV, temperature, top_k, top_p)
  return jax.random.categorical(rng, logp_BxV, axis=-1).astype(jnp.int32)


def zero_cache(init: Callable) -> Any:
  """The `cache` collection that `init()` (a `model.init(...)` call) creates, as zeros, without running it."""
  shapes = jax.eval_shape(init)["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_new", "temperature", "top_k", "top_p", "eos_id"))
def generate(model: nn.Module, params, prompt_BxP: jax.Array, rng: jax.Array, *, max_new: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int = -1):
  """Continue every prompt row by up to `max_new` units. Returns (ids [B, max_new], lengths [B]);
  a row stops after emitting `eos_id` (kept in its ids, padded with eos after)."""
  B, P = prompt_BxP.shape
  cache = model.init_cache(B, P + max_new)

  def forward(cache, ids_BxT, start):
    positions_BxT = start + jnp.broadcast_to(jnp.arange(ids_BxT.shape[1], dtype=jnp.int32), ids_BxT.shape)
    outputs, mutated = model.apply({"params": params, "cache": cache},
                                   {"inputs": ids_BxT, "positions": positions_BxT}, with_heads=False,
                                   mutable=["cache"])
    return outputs.logits[:, -1], mutated["cache"]

  logits_BxV, cache = forward(cache, prompt_BxP, 0)
  rng, first_rng = jax.random.split(rng)
  token_B = sample_logits(logits_BxV, first_rng, temperature, top_k, top_p)
  out_BxN = jnp.full((B, max_new), eos_id if eos_id >= 0 else 0, jnp.int32)
  done_B = jnp.zeros((B,), bool)
  lengths_B = jnp.zeros((B,), jnp.int32)

  def cond(carry):
    i, _, _, _, _, done_B, _ = carry
    return (i < max_new) & ~jnp.all(done_B)

  def body(carry):
    i, token_B, cache, rng, out_BxN, done_B, lengths_B = carry
    out_BxN = out_BxN.at[:, i].set(jnp.where(done_B, out_BxN[:, i], token_B))
    lengths_B = lengths_B + (~done_B).astype(jnp.int32)
    done_B = done_B | (token_B == eos_id)
    logits_BxV, cache = forward(cache, token_B[:, None], P + i)
    rng, step_rng = jax.random.split(rng)
    token_B = sample_logits(logits_BxV, step_rng, temperature, top_k, top_p)
    return i + 1, token_B, cache, rng, out_BxN, done_B, lengths_B

  carry = (jnp.zeros((), jnp.int32), token_B, cache, rng, out_BxN, done_B, lengths_B)
  _, _, _, _, out_BxN, _, lengths_B = jax.lax.while_loop(cond, body, carry)
  return out_BxN, lengths_B


def set_cache_index(cache, index):
  """Every attention cache's write index set to `index`: later slots are then unwritten (masked out), which
  is how rejected draft units are rolled back."""
  def put(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.full_like(leaf, index) if name == "index" else leaf
  return jax.tree_util.tree_map_with_path(put, cache)
