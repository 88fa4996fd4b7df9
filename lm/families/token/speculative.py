"""Self-speculative greedy decoding with the token family's own multi-token heads (Gloeckle et al. 2024, §3.2;
Stern et al. 2018): the heads draft, one forward pass verifies, rejected drafts roll back in the KV cache."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.decoding.generate import set_cache_index


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
    cache = set_cache_index(cache, pos + a + 1)
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
