"""Packing documents into [N, T] rows of (input, target) pairs with segment ids, positions and a loss mask.

Shapes: N rows, T = seq_len pairs per row, D documents (or S held-out segments). A document of n ids becomes the
n + 1 (input, target) pairs of `[bos] + ids + [eos]`; packing concatenates pairs, so a target always belongs to
the document of its input, and `segment_ids` (1, 2, ... per row, 0 = padding) keep attention inside a document.

Completion-only loss (`data.completion_after`, TRL's response template): each document's targets up to and
including the first occurrence of a marker (`=` in `2+3=5`) are context, `loss_mask` 0; the rest and the eos are
scored, in training and in held-out bits per byte (whose bytes are then the scored units' bytes plus the eos).
"""

import numpy as np

from lm.errors import DataError

KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def context_units(tokenizer, texts, ids, marker: bytes) -> np.ndarray:
  """Per document: how many of its leading targets are context under completion-only loss, i.e. the units that
  end at or before the end of the first `marker` (all of them and the eos, when the marker is absent)."""
  unit_bytes = np.asarray(tokenizer.unit_bytes(), np.int64)
  out = np.zeros(len(texts), np.int64)
  for i, (text, x) in enumerate(zip(texts, ids)):
    at = bytes(text).find(marker)
    if at < 0:
      out[i] = len(x) + 1
      continue
    ends = np.cumsum(unit_bytes[np.asarray(x, np.int64)])
    if not len(ends) or ends[-1] != len(text):
      raise DataError(f"data.completion_after={marker.decode('utf-8', 'replace')!r}: the {type(tokenizer).__name__}'s "
                      f"units do not map onto the bytes of {bytes(text[:40])!r}...; completion-only loss needs "
                      "the bytes tokenizer or byte-level BPE")
    out[i] = int(np.searchsorted(ends, at + len(marker), side="right"))
  return out


def _flat_pairs(token_docs, bos_id: int, eos_id: int):
  """All (input, target) pairs of all documents back to back, with each pair's document index."""
  pairs_D = np.array([len(d) for d in token_docs], dtype=np.int64) + 1
  total = int(pairs_D.sum())
  starts_D = np.cumsum(pairs_D) - pairs_D
  ids = np.concatenate([np.zeros(0, np.int32)] + [np.asarray(d, dtype=np.int32).ravel() for d in token_docs])
  is_first = np.zeros(total, dtype=bool)
  is_first[starts_D] = True
  is_last = np.zeros(total, dtype=bool)
  is_last[starts_D + pairs_D - 1] = True
  inputs = np.empty(total, dtype=np.int32)
  inputs[is_first], inputs[~is_first] = bos_id, ids
  targets = np.empty(total, dtype=np.int32)
  targets[is_last], targets[~is_last] = eos_id, ids
  doc = np.repeat(np.arange(len(pairs_D)), pairs_D)
  return inputs, targets, doc, pairs_D


def _scored_pairs(pairs_D, context_D) -> np.ndarray | None:
  """Per flat pair: scored (True) unless among its document's first `context_D` targets; None: all scored."""
  if context_D is None:
    return None
  starts_D = np.cumsum(pairs_D) - pairs_D
  within = np.arange(int(np.sum(pairs_D))) - np.repeat(starts_D, pairs_D)
  return within >= np.repeat(np.asarray(context_D, np.int64), pairs_D)


def rows_of_units(inputs_NxT, targets_NxT, unit_NxT, scored_NxT=None) -> dict[str, np.ndarray]:
  """Segment ids and positions from each pair's unit (document or piece) index; unit -1 is padding; pairs with
  `scored_NxT` False (completion-only context) keep their attention but get no loss."""
  valid_NxT = unit_NxT >= 0
  col_T = np.arange(unit_NxT.shape[1])
  changed_NxT = np.ones_like(valid_NxT)
  changed_NxT[:, 1:] = unit_NxT[:, 1:] != unit_NxT[:, :-1]
  # A row's first pair always opens a segment, so a document cut across rows restarts in the next row.
  new_NxT = valid_NxT & changed_NxT
  segment_ids = np.cumsum(new_NxT, axis=1, dtype=np.int32) * valid_NxT
  start_NxT = np.maximum.accumulate(np.where(new_NxT, col_T, 0), axis=1)
  positions = (col_T - start_NxT) * valid_NxT
  return dict(
      inputs=inputs_NxT.astype(np.int32),
      targets=targets_NxT.astype(np.int32),
      segment_ids=segment_ids.astype(np.int32),
      positions=positions.astype(np.int32),
      loss_mask=(valid_NxT if scored_NxT is None else valid_NxT & scored_NxT).astype(np.int32),
  )


def pack_rows(token_docs, seq_len: int, bos_id: int, eos_id: int, pad_id: int,
              context_D=None) -> dict[str, np.ndarray]:
  """Concat-then-split packing of documents into int32 [N, T] rows; only the last row is padded."""
  inputs, targets, doc, pairs_D = _flat_pairs(token_docs, bos_id, eos_id)
  scored = _scored_pairs(pairs_D, context_D)
  T = seq_len
  if scored is not None:  # a document's piece in a later row sees none of its prompt: context only
    first_row_D = (np.cumsum(pairs_D) - pairs_D) // T
    scored &= np.arange(len(inputs)) // T == np.repeat(first_row_D, pairs_D)
  n_rows = -(-len(inputs) // T)
  pad = n_rows * T - len(inputs)

  def grid(x, fill):
    return np.concatenate([x, np.full(pad, fill, x.dtype)]).reshape(n_rows, T)

  return rows_of_units(grid(inputs, pad_id), grid(targets, pad_id), grid(doc, -1),
               None if scored is None else grid(scored, False))


def pack_eval_segments(token_segments, seq_len: int, bos_id: int, eos_id: int, pad_id: int, context_S=None):
  """`pack_eval_rows` (with each segment's completion-only context, if given), plus the row that holds each
  segment's last pair (its end-of-segment event)."""
  inputs, targets, _, pairs_S = _flat_pairs(token_segments, bos_id, eos_id)
  scored = _scored_pairs(pairs_S, context_S)
  T = seq_len
  # Sequential fill: a piece (a segment, or T pairs of a longer one) goes on the current row if it fits,
  # else it opens the next row. Pieces cover the pairs in order, so the pair source index is just arange.
  dst_starts, piece_pairs, last_row = [], [], []
  row, col = 0, 0
  for n in pairs_S.tolist():
    for a in range(0, n, T):
      m = min(T, n - a)
      if col + m > T:
        row, col = row + 1, 0
      dst_starts.append(row * T + col)
      piece_pairs.append(m)
      col += m
    last_row.append(row)
  n_rows = row + 1 if len(pairs_S) else 0
  piece_pairs = np.array(piece_pairs, dtype=np.int64)
  offsets = np.arange(len(inputs)) - np.repeat(np.cumsum(piece_pairs) - piece_pairs, piece_pairs)
  dst = np.repeat(np.array(dst_starts, dtype=np.int64), piece_pairs) + offsets

  def grid(x, fill):
    out = np.full(n_rows * T, fill, dtype=x.dtype)
    out[dst] = x
    return out.reshape(n_rows, T)

  piece = np.repeat(np.arange(len(piece_pairs)), piece_pairs)
  rows = rows_of_units(grid(inputs, pad_id), grid(targets, pad_id), grid(piece, -1),
               None if scored is None else grid(scored, False))
  return rows, np.array(last_row, dtype=np.int64)


def pack_eval_rows(token_segments, seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """Packs segments into [N, T] rows without splitting any across rows (longer ones: pieces of T pairs)."""
  return pack_eval_segments(token_segments, seq_len, bos_id, eos_id, pad_id)[0]
