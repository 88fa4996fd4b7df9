"""Batched sampling that returns the log-probabilities of what it sampled, and teacher-forced scoring that
gives the same numbers: what sequence-level objectives (policy gradients, importance ratios) are built on.

The distribution a unit is drawn from is `processed_log_probs(logits)`: logits / temperature, then top-k, then
top-p (nucleus) renormalised. Sampling draws from it and records the drawn unit's log-probability; `score`
runs one forward pass over prompt + completion and applies the same function, so a sampled sequence's
log-probability and its teacher-forced one agree (to float rounding): the mismatch RL libraries are known
for (sampling at temperature T, scoring at 1) cannot arise here by construction.

Prompts of different lengths are left-padded into one [B, P] array (`left_pad`): padded slots get segment id 0
and stay out of every attention, positions count from each row's first real unit. `group` repeats each
prompt G times (GRPO's group of samples per prompt).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def processed_log_probs(logits_BxV: jax.Array, temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0) -> jax.Array:
  """log-probabilities [..., V] of the distribution sampled from: -inf outside the top-k / top-p set.
  temperature 0 is greedy: log-probability 0 at the argmax, -inf elsewhere."""
  logits = logits_BxV.astype(jnp.float32)
  if temperature == 0.0:
    best = jnp.argmax(logits, axis=-1)[..., None]
    units = jnp.arange(logits.shape[-1]).reshape((1,) * (logits.ndim - 1) + (-1,))
    return jnp.where(units == best, 0.0, -jnp.inf)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
    threshold = jnp.min(jnp.where(before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def left_pad(prompts: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompts of any lengths (each at least one unit) as [B, P] int32, right-aligned, and their lengths [B]."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  if len(prompts) == 0 or lengths.min() < 1:
    raise ValueError("every prompt needs at least one unit (a document-start id)")
  out = np.full((len(prompts), int(lengths.max())), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, out.shape[1] - len(p):] = p
  return out, lengths


def _prompt_layout(lengths_B: jax.Array, P: int):
  slot_BxP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (lengths_B.shape[0], P))
  pad_B = P - lengths_B
  segment_BxP = (slot_BxP >= pad_B[:, None]).astype(jnp.int32)
  positions_BxP = jnp.maximum(slot_BxP - pad_B[:, None], 0)
  return segment_BxP, positions_BxP, pad_B


@functools.partial(jax.jit, static_argnames=("model", "max_new", "temperature", "top_k", "top_p", "group"))
def sample(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, rng: jax.Array, *, max_new: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop_ids: jax.Array | None = None,
           group: int = 1):
  """Sample `group` continuations of each left-padded prompt row (rows b*group .. b*group+group-1 are prompt
  b's). Returns (ids [B*G, max_new], log_probs [B*G, max_new] of each drawn unit under the processed
  distribution, lengths [B*G]): a row ends after a unit in `stop_ids` (kept, counted in its length); ids
  past a row's length are `stop_ids[0]` (or 0) and their log-probabilities 0."""
  prompt_BxP = jnp.repeat(prompt_BxP, group, axis=0)
  lengths_B = jnp.repeat(lengths_B, group, axis=0)
  B, P = prompt_BxP.shape
  stop_S = jnp.zeros((0,), jnp.int32) if stop_ids is None else jnp.asarray(stop_ids, jnp.int32).reshape(-1)
  fill = stop_S[0] if stop_S.shape[0] else jnp.int32(0)
  segment_BxP, positions_BxP, pad_B = _prompt_layout(lengths_B, P)
  cache = model.init_cache(B, P + max_new)

  def forward(cache, ids_BxT, positions_BxT, segment_BxT):
    outputs, mutated = model.apply({"params": params, "cache": cache},
                                   {"inputs": ids_BxT, "positions": positions_BxT, "segment_ids": segment_BxT},
                                   with_heads=False, mutable=["cache"])
    return outputs.logits[:, -1], mutated["cache"]

  def draw(logits_BxV, rng):
    logp_BxV = processed_log_probs(logits_BxV, temperature, top_k, top_p)
    if temperature == 0.0:
      token_B = jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
    else:
      token_B = jax.random.categorical(rng, logp_BxV, axis=-1).astype(jnp.int32)
    return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]

  logits_BxV, cache = forward(cache, prompt_BxP, positions_BxP, segment_BxP)
  rng, first = jax.random.split(rng)
  token_B, logp_B = draw(logits_BxV, first)
  ids_BxN = jnp.full((B, max_new), fill, jnp.int32)
  logp_BxN = jnp.zeros((B, max_new), jnp.float32)

  def cond(carry):
    i, _, _, _, _, _, _, done_B, _ = carry
    return (i < max_new) & ~jnp.all(done_B)

  def body(carry):
    i, token_B, logp_B, cache, rng, ids_BxN, logp_BxN, done_B, lengths_out_B = carry
    ids_BxN = ids_BxN.at[:, i].set(jnp.where(done_B, fill, token_B))
    logp_BxN = logp_BxN.at[:, i].set(jnp.where(done_B, 0.0, logp_B))
    lengths_out_B = lengths_out_B + (~done_B).astype(jnp.int32)
    done_B = done_B | jnp.any(token_B[:, None] == stop_S[None, :], axis=1)
    ones_Bx1 = jnp.ones((B, 1), jnp.int32)
    logits_BxV, cache = forward(cache, token_B[:, None], (P + i - pad_B)[:, None], ones_Bx1)
    rng, step = jax.random.split(rng)
    token_B, logp_B = draw(logits_BxV, step)
    return i + 1, token_B, logp_B, cache, rng, ids_BxN, logp_BxN, done_B, lengths_out_B

  carry = (jnp.zeros((), jnp.int32), token_B, logp_B, cache, rng, ids_BxN, logp_BxN, jnp.zeros((B,), bool),
           jnp.zeros((B,), jnp.int32))
  _, _, _, _, _, ids_BxN, logp_BxN, _, lengths_out_B = jax.lax.while_loop(cond, body, carry)
  return ids_BxN, logp_BxN, lengths_out_B


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p"))
def score(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, ids_BxN: jax.Array,
          completion_lengths_B: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Teacher-forced log-probabilities [B, N] of completions `ids_BxN` after left-padded prompts, under the same
  processing as `sample` (one pass of the training-mode model over prompt + completion); 0 past each row's
  completion length."""
  B, P = prompt_BxP.shape
  N = ids_BxN.shape[1]
  segment_BxP, positions_BxP, pad_B = _prompt_layout(lengths_B, P)
  inputs = jnp.concatenate([prompt_BxP, ids_BxN[:, :-1]], axis=1)
  positions = jnp.concatenate([positions_BxP, (P - pad_B)[:, None] + jnp.arange(N - 1)[None, :]], axis=1)
  segment = jnp.concatenate([segment_BxP, jnp.ones((B, N - 1), jnp.int32)], axis=1)
  logits = model.apply({"params": params}, {"inputs": inputs, "positions": positions, "segment_ids": segment},
                       with_heads=False).logits[:, P - 1:]
  logp_BxNxV = processed_log_probs(logits, temperature, top_k, top_p)
  logp_BxN = jnp.take_along_axis(logp_BxNxV, ids_BxN[..., None], axis=-1)[..., 0]
  return jnp.where(jnp.arange(N)[None, :] < completion_lengths_B[:, None], logp_BxN, 0.0)
