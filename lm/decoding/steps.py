"""One token model in decode mode, as the sequence-level samplers drive it: prefill left-padded prompts, take
one unit per row at a time, reorder rows (beam search keeps its best rows, SMC resamples particles).

Rows live in the KV cache's batch axis. Reordering gathers every cache leaf on that axis; the write index is
shared by all rows and stays. The batch axis of each leaf is found by shape (a cache built for one row more),
so this works whether layers are scanned (a leading layer axis) or not.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import parallel
from lm.decoding import rollout


def vocab_size(model: nn.Module) -> int:
  """The real vocabulary (logits are padded past it, with a huge negative value)."""
  return int(model.cfg.vocab_size)


def prefill(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, length: int):
  """A cache of `length` slots holding the prompts, and log-probabilities [B, V] of each row's next unit
  (float32, the real vocabulary only). Returns (log_probs_BxV, cache, next_position_B)."""
  B, P = prompt_BxP.shape
  segment_BxP, positions_BxP, pad_B = rollout._prompt_layout(lengths_B, P)  # pylint: disable=protected-access
  cache = model.init_cache(B, length)
  outputs, mutated = model.apply({"params": params, "cache": cache},
                                 {"inputs": prompt_BxP, "positions": positions_BxP, "segment_ids": segment_BxP},
                                 with_heads=False, mutable=["cache"])
  return _log_probs(model, outputs.logits[:, -1]), mutated["cache"], P - pad_B


def step(model: nn.Module, params, cache, token_B: jax.Array, position_B: jax.Array):
  """Feed one unit per row at its position; (log_probs_BxV of the next unit, cache)."""
  ones_Bx1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
  outputs, mutated = model.apply({"params": params, "cache": cache},
                                 {"inputs": token_B[:, None], "positions": position_B[:, None],
                                  "segment_ids": ones_Bx1}, with_heads=False, mutable=["cache"])
  return _log_probs(model, outputs.logits[:, -1]), mutated["cache"]


def _log_probs(model: nn.Module, logits_BxV: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits_BxV[:, :vocab_size(model)].astype(jnp.float32), axis=-1)


def batch_axes(model: nn.Module, length: int):
  """Per cache leaf: its batch axis, or None (the write index)."""
  one = jax.eval_shape(lambda: model.init_cache(1, length))
  two = jax.eval_shape(lambda: model.init_cache(2, length))

  def axis(a, b):
    differ = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    return differ[0] if differ else None
  return jax.tree.map(axis, one, two)


def take_rows(cache, axes, rows_R: jax.Array):
  """The cache with rows `rows_R` (indices into the current rows, repeats allowed) in that order."""
  return jax.tree.map(lambda leaf, ax: leaf if ax is None else jnp.take(leaf, rows_R, axis=ax), cache, axes,
                      is_leaf=lambda x: x is None)


def repeat_rows(cache, axes, times: int):
  """Each row repeated `times` times in place (row b becomes rows b*times .. b*times+times-1)."""
  return jax.tree.map(lambda leaf, ax: leaf if ax is None else jnp.repeat(leaf, times, axis=ax), cache, axes,
                      is_leaf=lambda x: x is None)


def next_log_probs_fn(model: nn.Module, params, context: np.ndarray, bucket: int = 16):
  """A host callable: list of unit-id prefixes (tuples, after the `context` ids) -> float64 [n, V] log-probs
  of the next unit. One training-mode forward over right-padded rows (no cache), unembedding only each row's
  last position; rows are padded to a multiple of `bucket` and lengths to a multiple of 8, so few shapes
  compile. What the exact enumeration and the byte-level cover sets use."""
  context = np.asarray(context, np.int32).reshape(-1)
  V = vocab_size(model)

  @jax.jit
  def last_log_probs(ids_NxT, last_N):
    positions = jnp.broadcast_to(jnp.arange(ids_NxT.shape[1], dtype=jnp.int32), ids_NxT.shape)
    segment = (positions <= last_N[:, None]).astype(jnp.int32)
    hidden_NxTxD = model.apply({"params": params}, {"inputs": ids_NxT, "positions": positions,
                                                    "segment_ids": segment}, with_heads=False).aux["hidden"]
    hidden_Nx1xD = jnp.take_along_axis(hidden_NxTxD, last_N[:, None, None], axis=1)
    logits = model.apply({"params": params}, hidden_Nx1xD, method=lambda m, h: m._logits(h))  # pylint: disable=protected-access
    return jax.nn.log_softmax(logits[:, 0, :V].astype(jnp.float32), axis=-1)

  def call(prefixes) -> np.ndarray:
    if not prefixes:
      return np.zeros((0, V))
    rows = [np.concatenate([context, np.asarray(p, np.int32)]) for p in prefixes]
    T = -(-max(len(r) for r in rows) // 8) * 8
    n = len(rows)
    N = -(-n // bucket) * bucket
    ids = np.zeros((N, T), np.int32)
    last = np.zeros((N,), np.int32)
    for i, r in enumerate(rows):
      ids[i, :len(r)] = r
      last[i] = len(r) - 1
    return np.asarray(parallel.to_host(last_log_probs(ids, last)), np.float64)[:n]
  return call
