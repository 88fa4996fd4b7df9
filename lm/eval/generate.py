"""Autoregressive decoding with a KV cache inside one jitted `jax.lax.while_loop`.

Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling, and self-speculative greedy decoding
with the model's own multi-token heads. The model is a family module built with `decode=True`: it keeps keys
and values in the `cache` collection and appends at the cache index.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Next ids [B]. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass strictly above each candidate
    keep_BxV = before_BxV < top_p                                  # always keeps the most likely one
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def init_cache(model: nn.Module, batch: int, length: int, with_heads: bool = False):
  """Zeroed KV cache for `batch` rows of up to `length` units (and for the heads' blocks if asked)."""
  ids = jnp.zeros((batch, length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {"inputs": ids}, with_heads=with_heads))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_new", "temperature", "top_k", "top_p", "eos_id"))
def generate(model: nn.Module, params, prompt_BxP: jax.Array, rng: jax.Array, *, max_new: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int = -1):
  """Continue every prompt row by up to `max_new` units. Returns (ids [B, max_new], lengths [B]);
  a row stops after emitting `eos_id` (kept in its ids, padded with eos after)."""
  B, P = prompt_BxP.shape
  cache = init_cache(model, B, P + max_new)

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
  kinds = dict(getattr(model, "heads", ()))
  if "mtp" in kinds:
    return int(dict(kinds["mtp"])["n"]) - 1
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
  sequential = "mtp" not in dict(model.heads)
  B, P = prompt_BxP.shape
  N = K + 1
  cache = init_cache(model, B, P + max_new + N, with_heads=True)

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
    heads, mutated = model.apply({"params": params, "cache": mutated["cache"]},
                                 {"inputs": ids_BxT, "positions": pos_BxT, "trunk_out": outputs.aux["trunk_out"],
                                  "next_inputs": ahead_BxT}, heads_only=True, mutable=["cache"])
    drafts_BxTxK = jnp.argmax(heads.aux["dsmtp_logits"][0], axis=-1).astype(jnp.int32)[..., None]
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


def generate_words(model: nn.Module, params, prompt: bytes, *, max_new: int, chunk_len: int, max_words: int,
                   rng: jax.Array, eod_id: int, eow_id: int, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0) -> bytes:
  """Byte-hierarchical decoding, word by word: the decoder emits bytes (KV cache reset per word) until an
  end-of-word or end-of-document event, the finished word is encoded and fed to the backbone (its own KV
  cache), whose output conditions the next word. The prompt's last word is a prefix the model may extend.
  `model` is a `HierarchicalLM` built with `decode=True`; returns up to `max_new` new bytes."""
  from lm.data import segment  # the model side never imports data; decoding needs the same word split
  L = chunk_len
  words = segment.chunk_words(segment.split_hat_words(prompt), L) if prompt else []
  complete, prefix = words[:-1], bytearray(words[-1] if words else b"")
  if len(complete) + 2 > max_words:
    raise ValueError(f"the prompt has {len(complete) + 1} words; the backbone holds {max_words}")
  Dd = model.decoder.d_model

  def init(batch, step):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, step=step))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  z = jnp.zeros
  backbone_cache = init(dict(units=z((1, max_words, L), jnp.int32), unit_mask=z((1, max_words, L), jnp.int32),
                             positions=z((1, max_words), jnp.int32)), "backbone")
  decoder_cache = init(dict(inputs=z((1, L + 1), jnp.int32), positions=z((1, L + 1), jnp.int32),
                            context=z((1, Dd))), "decoder")

  @jax.jit
  def backbone_step(cache, units_1x1xL, unit_mask_1x1xL, position):
    batch = dict(units=units_1x1xL, unit_mask=unit_mask_1x1xL, positions=jnp.full((1, 1), position, jnp.int32))
    out, mutated = model.apply({"params": params, "cache": cache}, batch, step="backbone", mutable=["cache"])
    return out.aux["context"], mutated["cache"]

  @jax.jit
  def decoder_step(cache, context_1xDd, unit, position):
    batch = dict(inputs=jnp.full((1, 1), unit, jnp.int32), positions=jnp.full((1, 1), position, jnp.int32),
                 context=context_1xDd)
    out, mutated = model.apply({"params": params, "cache": cache}, batch, step="decoder", mutable=["cache"])
    return out.logits[:, 0], mutated["cache"]

  def word_arrays(word: bytes):
    units = np.full((1, 1, L), 256, np.int32)
    units[0, 0, :len(word)] = np.frombuffer(word, np.uint8)
    return jnp.asarray(units), jnp.asarray((units < 256).astype(np.int32))

  no_word = word_arrays(b"")
  context, backbone_cache = backbone_step(backbone_cache, *no_word, 0)  # position 0 reads the start vector
  position = 0
  for w in complete:
    position += 1
    context, backbone_cache = backbone_step(backbone_cache, *word_arrays(w), position)
  out = bytearray()
  ends = jnp.zeros((model.decoder.padded_vocab,), bool).at[jnp.array([eod_id, eow_id])].set(True)
  while len(out) < max_new:
    cache = _set_cache_index(decoder_cache, 0)
    logits, cache = decoder_step(cache, context, 0, 0)
    for j, b in enumerate(prefix):
      logits, cache = decoder_step(cache, context, b, j + 1)
    word = bytearray(prefix)
    prefix = bytearray()
    while True:
      if len(word) == L:  # a full chunk can only end (longer words continue as the next chunk)
        logits = jnp.where(ends[None], logits, -jnp.inf)
      rng, key = jax.random.split(rng)
      unit = int(sample_logits(logits, key, temperature, top_k, top_p)[0])
      if unit in (eod_id, eow_id) or unit >= 256 or len(out) >= max_new:
        break
      word.append(unit)
      out.append(unit)
      logits, cache = decoder_step(cache, context, unit, len(word))
    if unit == eod_id or len(out) >= max_new or position + 1 >= max_words:
      break
    position += 1
    context, backbone_cache = backbone_step(backbone_cache, *word_arrays(bytes(word)), position)
  return bytes(out)
