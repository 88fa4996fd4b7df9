"""Autoregressive decoding with a KV cache inside one jitted `jax.lax.while_loop`.

Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling, and self-speculative greedy decoding
with the model's own multi-token heads, and chunk-by-chunk decoding for the chunked families. The model is a
family module built with `decode=True`: it keeps keys and values in the `cache` collection (made by its
`init_cache` method) and appends at the cache index.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp

from lm import parallel
from lm.models import rollout


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


def _set_cache_index(cache, index):
  """Every attention cache's write index set to `index`: later slots are then unwritten (masked out), which
  is how rejected draft units are rolled back."""
  def put(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.full_like(leaf, index) if name == "index" else leaf
  return jax.tree_util.tree_map_with_path(put, cache)


def draft_heads(model: nn.Module) -> int:
  """How many units one step drafts beyond the next one: the `mtp` head's n - 1, or 1 with `dsmtp`
  modules (the first module drafts; deeper ones would need units not yet drafted)."""
  kinds = {head.kind: dict(head.options) for head in getattr(model, "heads", ())}
  if "mtp" in kinds:
    return int(kinds["mtp"]["n"]) - 1
  return 1 if "dsmtp" in kinds else 0


@functools.partial(jax.jit, static_argnames=("model", "max_new", "eos_id"))
def speculative_greedy(model: nn.Module, params, prompt_BxP: jax.Array, *, max_new: int, eos_id: int = -1):
  """Self-speculative greedy decoding (Gloeckle et al. 2024, §3.2; Stern et al. 2018's blockwise parallel
  decoding): the `mtp` heads draft units t+2..t+n (or the first `dsmtp` module drafts unit t+2), one forward
  pass of the block [next unit, drafts] verifies them against the next-unit head, the longest agreeing
  prefix plus the next-unit head's own unit is kept, and the KV caches are rolled back past the rest. The
  output is plain greedy decoding's, unit for unit.

  Rows advance together by the fewest units any live row accepted. Returns (ids [B, max_new], lengths [B],
  forward passes including the prompt's).
  """
  K = draft_heads(model)
  if K < 1:
    raise ValueError("speculative decoding needs a model trained with the `mtp` or `dsmtp` objective")
  sequential = "mtp" not in {head.kind for head in model.heads}
  B, P = prompt_BxP.shape
  N = K + 1
  cache = model.init_cache(B, P + max_new + N, with_heads=True)

  def positions(ids_BxT, start):
    return start + jnp.broadcast_to(jnp.arange(ids_BxT.shape[1], dtype=jnp.int32), ids_BxT.shape)

  def forward(cache, ids_BxT, start, is_prompt=False):
    """Greedy next units [B, T] and drafts [B, T, K] at every position of `ids_BxT`.

    `mtp` heads draft in the same pass. A `dsmtp` module needs unit t+1 at position t: the pass's own
    greedy units, except inside the prompt, whose next units are known. Its cache entries are then right up
    to the last kept position, and the rollback below drops the rest.
    """
    pos_BxT = positions(ids_BxT, start)
    outputs, mutated = model.apply({"params": params, "cache": cache}, {"inputs": ids_BxT, "positions": pos_BxT},
                                   with_heads=not sequential, mutable=["cache"])
    next_BxT = jnp.argmax(outputs.logits, axis=-1).astype(jnp.int32)
    if not sequential:
      drafts_BxTxK = jnp.moveaxis(jnp.argmax(outputs.aux["mtp_logits"], axis=-1), 0, -1).astype(jnp.int32)
      return next_BxT, drafts_BxTxK, mutated["cache"]
    ahead_BxT = jnp.concatenate([ids_BxT[:, 1:], next_BxT[:, -1:]], axis=1) if is_prompt else next_BxT
    aux, mutated = model.apply({"params": params, "cache": mutated["cache"]}, outputs.aux["trunk_out"], ids_BxT,
                               pos_BxT, ahead_BxT, method=model.run_heads, mutable=["cache"])
    drafts_BxTxK = jnp.argmax(aux["dsmtp_logits"][0], axis=-1).astype(jnp.int32)[..., None]
    return next_BxT, drafts_BxTxK, mutated["cache"]

  next_BxP, drafts_BxPxK, cache = forward(cache, prompt_BxP, 0, is_prompt=True)
  fill = eos_id if eos_id >= 0 else 0
  out_BxM = jnp.full((B, max_new + N), fill, jnp.int32).at[:, 0].set(next_BxP[:, -1])
  done_B = next_BxP[:, -1] == eos_id
  carry = (jnp.asarray(1), jnp.asarray(P), next_BxP[:, -1], drafts_BxPxK[:, -1], cache, out_BxM, done_B,
           jnp.asarray(1))

  def cond(carry):
    emitted, _, _, _, _, _, done_B, _ = carry
    return (emitted < max_new) & ~jnp.all(done_B)

  def body(carry):
    emitted, pos, unit_B, drafts_BxK, cache, out_BxM, done_B, passes = carry
    block_BxN = jnp.concatenate([unit_B[:, None], drafts_BxK], axis=1)
    next_BxN, new_drafts_BxNxK, cache = forward(cache, block_BxN, pos)
    # Draft j (block unit j) stands when it is what the next-unit head predicts after block units < j.
    agree_BxK = block_BxN[:, 1:] == next_BxN[:, :K]
    accepted_B = jnp.sum(jnp.cumprod(agree_BxK.astype(jnp.int32), axis=1), axis=1)
    a = jnp.min(jnp.where(done_B, K, accepted_B))
    # Kept: next_BxN[:, :a + 1] (the agreeing drafts are those same units, then the head's own next one).
    out_BxM = jax.lax.dynamic_update_slice(out_BxM, next_BxN, (0, emitted))
    kept_BxN = jnp.arange(N)[None, :] <= a
    done_B = done_B | jnp.any((next_BxN == eos_id) & kept_BxN, axis=1)
    cache = _set_cache_index(cache, pos + a + 1)
    unit_B = jnp.take_along_axis(next_BxN, jnp.full((B, 1), a), axis=1)[:, 0]
    drafts_BxK = jnp.take_along_axis(new_drafts_BxNxK, jnp.full((B, 1, 1), a), axis=1)[:, 0]
    return emitted + a + 1, pos + a + 1, unit_B, drafts_BxK, cache, out_BxM, done_B, passes + 1

  emitted, _, _, _, _, out_BxM, _, passes = jax.lax.while_loop(cond, body, carry)
  del emitted
  out_BxM = out_BxM[:, :max_new]
  is_eos_BxM = out_BxM == eos_id
  first_eos_B = jnp.where(jnp.any(is_eos_BxM, axis=1), jnp.argmax(is_eos_BxM, axis=1) + 1, max_new)
  after_BxM = jnp.arange(max_new)[None, :] >= first_eos_B[:, None]
  return jnp.where(after_BxM, fill, out_BxM), first_eos_B.astype(jnp.int32), passes


def generate_chunks(model: nn.Module, params, prompt_chunks: list, *, max_new: int, chunk_len: int,
                    max_chunks: int, rng: jax.Array, eod_id: int, end_id: int, pad_id: int, stop_ids=(),
                    feed_predicted: bool = False, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0) -> list[int]:
  """Chunk-by-chunk decoding for the chunked families (words of HAT, sentences of the concept family).

  The decoder emits units (its KV cache reset per chunk) until an end-of-chunk (`end_id`) or end-of-document
  event; the finished chunk is fed to the backbone (its own KV cache), whose output conditions the next chunk.
  `prompt_chunks` are unit-id lists; the last is a prefix the model may extend. `model` is built with
  `decode=True` and has the methods `init_cache(batch, max_chunks, L)`, `backbone_step(chunk)` (a dict with
  `context` and, for concept models, `concept_pred`) and `decoder_step(context, inputs, positions)`. With
  `feed_predicted` (concept models on precomputed concepts, which have no encoder) the backbone reads its own
  predicted concept instead of an encoding of the chunk. Units in `stop_ids` (special ids that are not text)
  stop decoding. Returns up to `max_new` new units.
  """
  L = chunk_len
  complete, prefix = prompt_chunks[:-1], list(prompt_chunks[-1]) if prompt_chunks else []
  if len(complete) + 2 > max_chunks:
    raise ValueError(f"the prompt has {len(complete) + 1} chunks; the backbone holds {max_chunks}")
  K = getattr(model, "concept_dim", None) or 1
  backbone_cache, decoder_cache = model.init_cache(1, max_chunks, L)

  @jax.jit
  def backbone_step(cache, units_1x1xL, position, concept_1x1xK):
    chunk = dict(units=units_1x1xL, unit_mask=(units_1x1xL != pad_id).astype(jnp.int32),
                 positions=jnp.full((1, 1), position, jnp.int32))
    if feed_predicted:
      chunk["concepts"] = concept_1x1xK
    out, mutated = model.apply({"params": params, "cache": cache}, chunk, method=model.backbone_step,
                               mutable=["cache"])
    return out["context"], out.get("concept_pred", jnp.zeros((1, K))), mutated["cache"]

  @jax.jit
  def decoder_step(cache, context_1xDd, unit, position):
    logits, mutated = model.apply({"params": params, "cache": cache}, context_1xDd, jnp.full((1, 1), unit, jnp.int32),
                                  jnp.full((1, 1), position, jnp.int32), method=model.decoder_step,
                                  mutable=["cache"])
    return logits[:, 0], mutated["cache"]

  def chunk_units(ids) -> jax.Array:
    units = np.full((1, 1, L), pad_id, np.int32)
    units[0, 0, :len(ids)] = ids
    return jnp.asarray(units)

  concept = jnp.zeros((1, 1, K))
  context, pred, backbone_cache = backbone_step(backbone_cache, chunk_units([]), 0, concept)  # the start vector
  position = 0
  for ids in complete:
    position += 1
    if feed_predicted:
      raise ValueError("a model on precomputed concepts cannot read a prompt's sentences (it has no encoder); "
                       "give a prompt of one unfinished sentence")
    context, pred, backbone_cache = backbone_step(backbone_cache, chunk_units(ids), position, concept)
  out: list[int] = []
  ends = jnp.zeros((model.decoder_cfg.padded_vocab,), bool).at[jnp.array([eod_id, end_id])].set(True)
  stops = {eod_id, end_id, *stop_ids}
  unit = end_id
  while len(out) < max_new:
    cache = _set_cache_index(decoder_cache, 0)
    logits, cache = decoder_step(cache, context, 0, 0)
    for j, u in enumerate(prefix):
      logits, cache = decoder_step(cache, context, u, j + 1)
    chunk, prefix = list(prefix), []
    while True:
      if len(chunk) == L:  # a full chunk can only end (a longer word or sentence continues as the next chunk)
        logits = jnp.where(ends[None], logits, -jnp.inf)
      rng, key = jax.random.split(rng)
      unit = int(parallel.to_host(sample_logits(logits, key, temperature, top_k, top_p))[0])
      if unit in stops or len(out) >= max_new:
        break
      chunk.append(unit)
      out.append(unit)
      logits, cache = decoder_step(cache, context, unit, len(chunk))
    if unit != end_id or len(out) >= max_new or position + 1 >= max_chunks:
      break
    position += 1
    context, pred, backbone_cache = backbone_step(backbone_cache, chunk_units(chunk), position, pred[:, None])
  return out
