"""Chunk-by-chunk decoding for the chunked families (words of HAT, sentences of the concept family)."""

from __future__ import annotations


import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp

from lm import parallel
from lm.decoding.generate import sample_logits, set_cache_index


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
    cache = set_cache_index(decoder_cache, 0)
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
