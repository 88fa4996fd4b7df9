"""Token-family data: split, tokenize, pack documents into [N, T] rows with segment ids, batch with grain.

Shapes: N rows, T = seq_len pairs per row, B rows per batch. A document of n ids becomes the n + 1
(input, target) pairs of `[bos] + ids + [eos]`; packing concatenates pairs, so a target always belongs to the
document of its input, and `segment_ids` (1, 2, ... per row, 0 = padding) keep attention inside a document.
"""

import functools
import hashlib

import grain
import numpy as np

from lm.data import corpus, segment
from lm.data import tokenizers as tokenizers_lib
from lm.errors import DataError, plural

KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


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


def _rows(inputs_NxT, targets_NxT, unit_NxT) -> dict[str, np.ndarray]:
  """Segment ids and positions from each pair's unit (document or piece) index; unit -1 is padding."""
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
      loss_mask=valid_NxT.astype(np.int32),
  )


def pack_rows(token_docs, seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """Concat-then-split packing of documents into int32 [N, T] rows; only the last row is padded."""
  inputs, targets, doc, _ = _flat_pairs(token_docs, bos_id, eos_id)
  T = seq_len
  n_rows = -(-len(inputs) // T)
  pad = n_rows * T - len(inputs)

  def grid(x, fill):
    return np.concatenate([x, np.full(pad, fill, x.dtype)]).reshape(n_rows, T)

  return _rows(grid(inputs, pad_id), grid(targets, pad_id), grid(doc, -1))


def _pack_eval(token_segments, seq_len: int, bos_id: int, eos_id: int, pad_id: int):
  """pack_eval_rows, plus the row that holds each segment's last pair (its end-of-segment event)."""
  inputs, targets, _, pairs_S = _flat_pairs(token_segments, bos_id, eos_id)
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
  rows = _rows(grid(inputs, pad_id), grid(targets, pad_id), grid(piece, -1))
  return rows, np.array(last_row, dtype=np.int64)


def pack_eval_rows(token_segments, seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """Packs segments into [N, T] rows without splitting any across rows (longer ones: pieces of T pairs)."""
  return _pack_eval(token_segments, seq_len, bos_id, eos_id, pad_id)[0]


def _shuffle_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e, so seeds 0 and 1 would share epochs; hashing decorrelates them.
  digest = hashlib.blake2b(int(seed).to_bytes(16, "little", signed=True), digest_size=4).digest()
  return int.from_bytes(digest, "little")


class _TakeRows:
  """Gathers this process's rows for a batch of global row indices (a grain map; keeps no state)."""

  def __init__(self, rows: dict[str, np.ndarray], lo: int, hi: int):
    self.rows, self.lo, self.hi = rows, lo, hi

  def __call__(self, index_B):
    index_b = np.asarray(index_B)[self.lo : self.hi]
    return {k: v[index_b] for k, v in self.rows.items()}


class TokenData:
  """Documents split train/val/test, a tokenizer, train rows for grain, and fixed held-out eval batches."""

  def __init__(self, splits: dict[str, list[bytes]], tokenizer: tokenizers_lib.Tokenizer, seq_len: int,
               source: str = "<memory>", eval_max_bytes: int | None = None):
    if seq_len < 1:
      raise DataError(f"data: seq_len={seq_len} must be >= 1; set a positive seq_len")
    self.splits, self.tokenizer, self.seq_len = splits, tokenizer, int(seq_len)
    self.source, self.eval_max_bytes = source, eval_max_bytes
    self._eval_cache = {}

  @classmethod
  def build(cls, source: str = "python-prose", tokenizer_spec: "str | tokenizers_lib.Tokenizer" = "bytes",
            vocab_size: int = 4096, seq_len: int = 256, val_fraction: float = 0.02, test_fraction: float = 0.02,
            split_seed: int = 0, eval_max_bytes: int | None = None) -> "TokenData":
    """Loads `source`, splits it by document, builds the tokenizer on the train split (or uses a given one)."""
    docs = corpus.load_documents(source)
    splits = corpus.split_documents(docs, val_fraction, test_fraction, split_seed, source=source)
    if isinstance(tokenizer_spec, tokenizers_lib.Tokenizer):  # A trained run's own tokenizer, for eval.
      tokenizer = tokenizer_spec
    else:
      tokenizer = tokenizers_lib.build_tokenizer(tokenizer_spec, splits["train"], vocab_size)
    return cls(splits, tokenizer, seq_len, source=source, eval_max_bytes=eval_max_bytes)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def unit_bytes(self) -> np.ndarray:
    return self.tokenizer.unit_bytes()

  @functools.cached_property
  def train_rows(self) -> dict[str, np.ndarray]:
    """The whole train split packed into int32 [N, T] arrays (computed once)."""
    tok = self.tokenizer
    return pack_rows(tok.encode_batch(self.splits["train"]), self.seq_len, tok.bos_id, tok.eos_id, tok.pad_id)

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    """An infinite, checkpointable grain iterator of this process's [batch_size // process_count, T] rows.

    Rows are shuffled per epoch from `seed`. Each process takes a contiguous block of every global batch, so
    the global batch is the same for any process count (sharded == unsharded).
    """
    if batch_size < 1 or batch_size % process_count:
      raise DataError(
          f"data: batch_size={batch_size} must be a positive multiple of the process count {process_count}; "
          "change batch_size"
      )
    if not 0 <= process_index < process_count:
      raise DataError(f"data: process_index={process_index} is outside [0, {process_count}); check the launcher")
    rows = self.train_rows
    n_rows = len(rows["loss_mask"])
    if n_rows < batch_size:
      n_tokens = int(rows["loss_mask"].sum())
      raise DataError(
          f"data.source {self.source!r}: train split packs into {plural(n_rows, 'row')} of {self.seq_len} "
          f"({plural(n_tokens, 'token')}), fewer than one batch of {batch_size}; lower batch_size or seq_len, or "
          "add text"
      )
    local = batch_size // process_count
    ds = grain.MapDataset.range(n_rows).shuffle(seed=_shuffle_seed(seed)).repeat()
    # Batch indices, not rows: one fancy-index per batch instead of stacking B dicts.
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(_TakeRows(rows, process_index * local, (process_index + 1) * local))
    # Rows are in memory; one prefetch thread overlaps the gather with the train step without GIL fights.
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

  def _eval_rows(self, segments: list[bytes], split: str | None):  # pylint: disable=unused-argument
    """Eval rows and bytes per row for `segments` (of `split`, or of other text when None)."""
    tok = self.tokenizer
    rows, last_row_S = _pack_eval(tok.encode_batch(segments), self.seq_len, tok.bos_id, tok.eos_id, tok.pad_id)
    # Each segment scores its original bytes plus one end-of-segment event, in the row of its last pair.
    bytes_per_row = np.bincount(last_row_S, weights=[len(s) + 1 for s in segments], minlength=len(rows["inputs"]))
    return rows, bytes_per_row.astype(np.int64)

  def eval_segments(self, docs: list[bytes]) -> list[bytes]:
    """Held-out documents cut at sentence ends into segments of <= eval_max_bytes (default seq_len - 1)."""
    max_bytes = self.eval_max_bytes or max(1, self.seq_len - 1)
    return [s for d in docs for s in segment.cut_segments(d, max_bytes)]

  def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None,
                   docs: list[bytes] | None = None) -> list[tuple[dict[str, np.ndarray], int]]:
    """Fixed [batch_size, T] batches over a split (or `docs`), each with the number of bytes it scores.

    Every segment is scored in one row with its full context; the last batch is padded with masked rows.
    An empty split gives an empty list.
    """
    if docs is None:
      if split not in self.splits:
        raise DataError(f"data: unknown split {split!r}; use one of {', '.join(self.splits)}")
      if split not in self._eval_cache:
        self._eval_cache[split] = self._eval_rows(self.eval_segments(self.splits[split]), split)
      rows, bytes_per_row = self._eval_cache[split]
    else:
      rows, bytes_per_row = self._eval_rows(self.eval_segments(docs), None)
    n_rows, B = len(rows["loss_mask"]), batch_size
    n_batches = -(-n_rows // B)
    if max_batches is not None:
      n_batches = min(n_batches, max_batches)
    batches = []
    for i in range(n_batches):
      batch = {k: v[i * B : (i + 1) * B].copy() for k, v in rows.items()}  # Callers may not corrupt the cache.
      short = B - len(batch["loss_mask"])
      if short:
        pad = self.tokenizer.pad_id
        fill = dict(inputs=pad, targets=pad, units=pad)
        batch = {k: np.concatenate([v, np.full((short,) + v.shape[1:], fill.get(k, 0), v.dtype)])
                 for k, v in batch.items()}
      batches.append((batch, int(bytes_per_row[i * B : (i + 1) * B].sum())))
    return batches
