"""Token-family data: split, tokenize, pack documents into [N, T] rows (`lm.data.packing`), batch with grain.

Shapes: N rows, T = seq_len pairs per row, B rows per batch; the row layout and completion-only loss are
described in `lm.data.packing`.
"""

import dataclasses
import functools
import hashlib
import re

import grain
import numpy as np

from lm.data import corpus, prepared, segment, stream
from lm.data.packing import context_units, pack_eval_segments, pack_rows, rows_of_units
from lm.data import tokenizers as tokenizers_lib
from lm.errors import DataError, plural

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


def check_processes(batch_size: int, process_index: int, process_count: int) -> None:
  if batch_size < 1 or batch_size % process_count:
    raise DataError(
        f"data: batch_size={batch_size} must be a positive multiple of the process count {process_count}; "
        "change batch_size"
    )
  if not 0 <= process_index < process_count:
    raise DataError(f"data: process_index={process_index} is outside [0, {process_count}); check the launcher")


def row_iterator(rows: dict[str, np.ndarray], batch_size: int, seed: int, process_index: int, process_count: int,
                 source: str, what: str):
  """Packed in-memory rows shuffled per epoch: this process's block of every global batch (chunked families)."""
  check_processes(batch_size, process_index, process_count)
  n_rows = len(rows["loss_mask"])
  if n_rows < batch_size:
    raise DataError(f"data.source {source!r}: train split packs into {plural(n_rows, 'row')} of {what}, fewer than "
                    f"one batch of {batch_size}; lower batch_size or the row length, or add text")
  local = batch_size // process_count
  ds = grain.MapDataset.range(n_rows).shuffle(seed=_shuffle_seed(seed)).repeat()
  ds = ds.batch(batch_size, drop_remainder=True)  # batch indices, not rows: one fancy-index per batch
  ds = ds.map(_TakeRows(rows, process_index * local, (process_index + 1) * local))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


class MemoryStore:
  """Train documents held in memory: texts, tokenized on first use into `lengths` and `get(doc indices)`;
  with a completion `marker`, `context` gives each document's count of unscored leading targets."""

  def __init__(self, texts: list[bytes], tokenizer: tokenizers_lib.Tokenizer, marker: bytes = b""):
    self.texts, self.tokenizer, self.marker = texts, tokenizer, marker

  @functools.cached_property
  def ids(self) -> list[np.ndarray]:
    return [np.asarray(x, np.int32).ravel() for x in self.tokenizer.encode_batch(self.texts)]

  @functools.cached_property
  def lengths(self) -> np.ndarray:
    return np.array([len(x) for x in self.ids], dtype=np.int64)

  def get(self, docs) -> list[np.ndarray]:
    return [self.ids[int(d)] for d in docs]

  @functools.cached_property
  def context(self) -> np.ndarray | None:
    return context_units(self.tokenizer, self.texts, self.ids, self.marker) if self.marker else None


@dataclasses.dataclass
class Part:
  """One source of a (possibly mixed) corpus: its name, mixture weight, train store and held-out texts."""
  name: str
  weight: float
  store: object  # MemoryStore or prepared.RecordStore: `lengths` and `get(doc indices)`
  held_out: dict  # {"val": texts, "test": texts}, each a sequence of bytes


class TokenBatches:
  """Batch index -> this process's rows [lo, hi) of that global batch: documents shuffled per epoch, packed
  concat-then-split (`stream.RowPlan`); with several parts, rows come from each by its weight
  (`stream.mixture_rows`). A grain map over batch indices: random access, so grain's state is the position."""

  def __init__(self, parts: list[Part], batch_size: int, lo: int, hi: int, seed: int, seq_len: int,
               bos_id: int, eos_id: int):
    self.stores = [p.store for p in parts]
    self.weights = [p.weight for p in parts]
    self.batch_size, self.lo, self.hi, self.seed, self.T = batch_size, lo, hi, int(seed), int(seq_len)
    self.bos, self.eos = bos_id, eos_id
    self._plans = None

  def __getstate__(self):
    return dict(self.__dict__, _plans=None)

  @property
  def plans(self) -> list[stream.RowPlan]:
    if self._plans is None:
      self._plans = [stream.RowPlan(s, self.T, stream.part_seed(self.seed, i), extra=1)
                     for i, s in enumerate(self.stores)]
    return self._plans

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    n = self.hi - self.lo
    if len(self.stores) == 1:
      part_R = np.zeros(n, np.int64)
      draw_R = batch * self.batch_size + np.arange(self.lo, self.hi)
    else:
      part_R, draw_R = stream.mixture_rows(self.weights, self.batch_size, batch, self.seed)
      part_R, draw_R = part_R[self.lo:self.hi], draw_R[self.lo:self.hi]
    row_R = np.empty_like(draw_R)
    for p in np.unique(part_R).tolist():
      row_R[part_R == p] = self.plans[p].shuffled_rows(draw_R[part_R == p])
    pieces = [self.plans[p].pieces(r, 1) for p, r in zip(part_R.tolist(), row_R.tolist())]
    docs = {}  # (part, doc) -> ids: each document of this process's rows read once per batch
    for p in np.unique(part_R).tolist():
      unique = np.unique(np.concatenate([pc[1] for pc, q in zip(pieces, part_R.tolist()) if q == p]))
      docs.update(((p, d), ids) for d, ids in zip(unique.tolist(), self.stores[p].get(unique)))
    ins, tgs, units, scored = [], [], [], []
    for p, (occ, doc, los, his) in zip(part_R.tolist(), pieces):
      context = getattr(self.stores[p], "context", None)
      for d, lo, hi in zip(doc.tolist(), los.tolist(), his.tolist()):
        ids = docs[p, d]
        ins.append(np.concatenate([[self.bos], ids[:hi - 1]]) if lo == 0 else ids[lo - 1:hi - 1])
        tgs.append(ids[lo:hi] if hi <= len(ids) else np.concatenate([ids[lo:], [self.eos]]))
        # Under completion-only loss a piece that does not start its document sees none of its prompt.
        scored.append(np.arange(lo, hi) >= (0 if context is None else context[d] if lo == 0 else hi))
      units.append(np.repeat(occ, his - los))
    shape = (n, self.T)
    return rows_of_units(np.concatenate(ins).reshape(shape), np.concatenate(tgs).reshape(shape),
                 np.concatenate(units).reshape(shape), np.concatenate(scored).reshape(shape))


def parse_source(source: str) -> list[tuple[str, float | None]]:
  """`A,B` -> [(A, None), (B, None)]; `0.7*A,0.3*B` -> [(A, 0.7), (B, 0.3)] (a mixture)."""
  out = []
  for part in [p.strip() for p in source.split(",") if p.strip()]:
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*\*\s*(.+)", part)
    if m:
      try:
        weight = float(m.group(1))
      except ValueError:
        raise DataError(f"data.source {source!r}: weight {m.group(1)!r} of {m.group(2)!r} is not a number; write "
                        "'0.7*DIR_A,0.3*DIR_B'") from None
      if not weight > 0 or not np.isfinite(weight):
        raise DataError(f"data.source {source!r}: weight {m.group(1)} of {m.group(2)!r} must be positive; give every "
                        "source a weight > 0")
      out.append((m.group(2).strip(), weight))
    else:
      out.append((part, None))
  if not out:
    raise DataError(f"data.source {source!r} is empty; {corpus.sources.SOURCE_HELP}")
  weighted = [w is not None for _, w in out]
  if any(weighted) and not all(weighted):
    raise DataError(f"data.source {source!r}: a mixture needs a weight on every source, e.g. '0.7*DIR_A,0.3*DIR_B'")
  return out


def _names(specs: list[str]) -> list[str]:
  names = []
  for spec in specs:
    base = spec.rstrip("/").rsplit("/", 1)[-1].split(":")[0] or spec
    name, k = base, 2
    while name in names:
      name, k = f"{base}_{k}", k + 1
    names.append(name)
  return names


class TokenData:
  """A corpus (one source, or a weighted mixture of parts) split train/val/test, a tokenizer, a streaming
  grain iterator of train rows and fixed held-out eval batches. `splits` are the first part's texts."""

  def __init__(self, splits: dict, tokenizer: tokenizers_lib.Tokenizer, seq_len: int,
               source: str = "<memory>", eval_max_bytes: int | None = None, parts: list[Part] | None = None,
               completion_after: str = ""):
    if seq_len < 1:
      raise DataError(f"data: seq_len={seq_len} must be >= 1; set a positive seq_len")
    self.splits, self.tokenizer, self.seq_len = splits, tokenizer, int(seq_len)
    self.source, self.eval_max_bytes = source, eval_max_bytes
    self.marker = completion_after.encode("utf-8")
    self.parts = parts or [Part(source, 1.0, MemoryStore(splits["train"], tokenizer, self.marker),
                                {k: v for k, v in splits.items() if k != "train"})]
    if self.marker:
      self._check_marker(completion_after)
    self._eval_cache = {}

  def _check_marker(self, completion_after: str) -> None:
    """Completion-only loss reads documents in memory, and the marker must occur in the train split."""
    for part in self.parts:
      if not isinstance(part.store, MemoryStore):
        raise DataError(f"data.completion_after={completion_after!r} needs raw text in memory, but {part.name!r} is "
                        "a prepared directory; train on the raw source or set data.completion_after=''")
      if part.store.marker != self.marker:
        raise DataError(f"data.completion_after={completion_after!r}: the train store of {part.name!r} was built with "
                        f"marker {part.store.marker!r}; build it with MemoryStore(texts, tokenizer, marker)")
      if not any(self.marker in t for t in part.store.texts):
        raise DataError(f"data.completion_after={completion_after!r} occurs in no train document of {part.name!r}, so "
                        "nothing would be scored; fix the marker or set data.completion_after=''")
      _ = part.store.context  # once, here: grain workers get it with the store
      for split, texts in part.held_out.items():  # now, not when the first evaluation comes after training
        longest = max((len(x) + 1 for x in self.tokenizer.encode_batch(list(texts))), default=0)
        if longest > self.seq_len:
          raise DataError(f"data.completion_after={completion_after!r}: a {split} document of {part.name!r} is "
                          f"{longest} units, longer than data.seq_len={self.seq_len}, and would be scored without "
                          "its prompt; raise seq_len")

  @classmethod
  def build(cls, source: str = "python-prose", tokenizer_spec: "str | tokenizers_lib.Tokenizer" = "bytes",
            vocab_size: int = 4096, seq_len: int = 256, val_fraction: float = 0.02, test_fraction: float = 0.02,
            split_seed: int = 0, eval_max_bytes: int | None = None, completion_after: str = "") -> "TokenData":
    """Loads `source` (raw text split and tokenized in memory, a prepared directory read lazily, or a weighted
    mixture of them) and the tokenizer: a given one, the prepared one, or one built on the train split."""
    parsed = parse_source(source)
    specs = [s for s, _ in parsed] if parsed[0][1] is not None or any(
        prepared.is_prepared(s) for s, _ in parsed) else [source]
    weights = [w or 1.0 for _, w in parsed] if len(specs) > 1 else [1.0]
    loaded = []  # (spec, texts splits or None, prepared tuple or None)
    for spec in specs:
      if prepared.is_prepared(spec):
        loaded.append((spec, None, prepared.open_prepared(spec)))
      else:
        docs = corpus.load_documents(spec)
        splits = corpus.split_documents(docs, val_fraction, test_fraction, split_seed, source=spec)
        corpus.check_held_out(splits, spec, val_fraction, test_fraction)
        loaded.append((spec, splits, None))
    tokenizer = tokenizer_spec if isinstance(tokenizer_spec, tokenizers_lib.Tokenizer) else None
    if tokenizer is None:  # prepared parts bring their own tokenizer, and must agree on it
      own = [(spec, p[1]) for spec, _, p in loaded if p is not None]
      for spec, tok in own[1:]:
        if tok.files() != own[0][1].files():
          raise DataError(f"data.source {source!r}: {spec} was prepared with another tokenizer than {own[0][0]}; "
                          "prepare them with the same --tokenizer PATH")
      tokenizer = own[0][1] if own else None
    if tokenizer is None:
      train = [d for _, splits, _ in loaded for d in splits["train"]]
      tokenizer = tokenizers_lib.build_tokenizer(tokenizer_spec, train, vocab_size)
    parts = []
    for name, weight, (spec, splits, p) in zip(_names(specs), weights, loaded):
      if p is None:
        parts.append(Part(name, weight, MemoryStore(splits["train"], tokenizer, completion_after.encode("utf-8")),
                          {"val": splits["val"], "test": splits["test"]}))
      else:
        parts.append(Part(name, weight, p[2], p[3]))
    first = loaded[0]
    splits = first[1] if first[1] is not None else dict(parts[0].held_out, train=_DecodedTrain(parts[0].store,
                                                                                              tokenizer))
    return cls(splits, tokenizer, seq_len, source=source, eval_max_bytes=eval_max_bytes, parts=parts,
               completion_after=completion_after)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def unit_bytes(self) -> np.ndarray:
    return self.tokenizer.unit_bytes()

  @property
  def part_names(self) -> list[str]:
    return [p.name for p in self.parts]

  def _batches(self, batch_size: int, seed: int, process_index: int, process_count: int) -> TokenBatches:
    check_processes(batch_size, process_index, process_count)
    local = batch_size // process_count
    tok = self.tokenizer
    return TokenBatches(self.parts, batch_size, process_index * local, (process_index + 1) * local, seed,
                        self.seq_len, tok.bos_id, tok.eos_id)

  @functools.cached_property
  def train_rows(self) -> dict[str, np.ndarray]:
    """One epoch of a single in-memory source's train split in corpus order, packed into int32 [N, T] rows
    (only the last row padded): what every epoch of the training stream holds, in another order."""
    if len(self.parts) > 1 or not isinstance(self.parts[0].store, MemoryStore):
      raise DataError("data: train_rows packs an in-memory source; a prepared or mixed corpus streams its rows")
    tok, store = self.tokenizer, self.parts[0].store
    return pack_rows(store.ids, self.seq_len, tok.bos_id, tok.eos_id, tok.pad_id, store.context)

  def check_size(self, batch_size: int) -> None:
    """A train split (of any part) that cannot fill one batch in one epoch: one line naming it."""
    for part in self.parts:
      lengths = part.store.lengths
      n_units = int(np.sum(lengths, dtype=np.int64)) + len(lengths)  # a pair per token, plus the eos
      n_rows = -(-n_units // self.seq_len)
      if n_rows < batch_size:
        name = self.source if len(self.parts) == 1 else part.name
        raise DataError(
            f"data.source {name!r}: train split packs into {plural(n_rows, 'row')} of {self.seq_len} "
            f"({plural(n_units, 'token')}), fewer than one batch of {batch_size}; lower batch_size or seq_len, "
            "or add text")

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                     workers: int = 0, prefetch: int = 4):
    """An infinite, checkpointable grain iterator of this process's [batch_size // process_count, T] rows.

    Documents are shuffled per epoch from `seed` and packed as the batches are drawn. Each process takes a
    contiguous block of every global batch and reads only the documents in it, so the global batch is the
    same for any process count (sharded == unsharded). `workers` > 0 builds batches in that many grain worker
    processes; `prefetch` batches are built ahead.
    """
    builder = self._batches(batch_size, seed, process_index, process_count)
    self.check_size(batch_size)
    ds = grain.MapDataset.range(1 << 62).map(builder).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if workers else 2, prefetch_buffer_size=prefetch))
    if workers:
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; lm has none of its own
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(ds)

  def sample_rows(self, batch_size: int, max_batches: int = 16) -> dict[str, np.ndarray]:
    """The first global batches of the training stream (up to about one epoch), for FLOPs per byte."""
    builder = self._batches(batch_size, 0, 0, 1)
    epoch_rows = sum(int(np.sum(p.store.lengths)) + len(p.store.lengths) for p in self.parts) // self.seq_len
    n = max(1, min(max_batches, epoch_rows // max(batch_size, 1)))
    batches = [builder(i) for i in range(n)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def _eval_rows(self, segments: list[bytes], split: str | None):  # pylint: disable=unused-argument
    """Eval rows and bytes per row for `segments` (of `split`, or of other text when None)."""
    tok = self.tokenizer
    ids = tok.encode_batch(segments)
    context = None
    if self.marker:
      context = context_units(tok, segments, ids, self.marker)
      longest = max((len(x) + 1 for x in ids), default=0)
      if longest > self.seq_len:
        raise DataError(f"data.completion_after: a held-out document is {longest} units, longer than data.seq_len="
                        f"{self.seq_len}, and would be scored without its prompt; raise seq_len")
    rows, last_row_S = pack_eval_segments(ids, self.seq_len, tok.bos_id, tok.eos_id, tok.pad_id, context)
    # Each segment scores its original bytes plus one end-of-segment event, in the row of its last pair; under
    # completion-only loss, the bytes of its scored units plus the eos.
    if context is None:
      scored = [len(s) + 1 for s in segments]
    else:
      unit_bytes = np.asarray(tok.unit_bytes(), np.int64)
      scored = [int(np.sum(unit_bytes[np.asarray(x, np.int64)][min(c, len(x)):])) + (c <= len(x))
                for x, c in zip(ids, context)]
      if segments and not sum(scored):
        raise DataError(f"data.completion_after={self.marker.decode('utf-8', 'replace')!r} occurs in none of the "
                        f"{len(segments)} held-out documents, so there is nothing to score; check the marker")
    bytes_per_row = np.bincount(last_row_S, weights=scored, minlength=len(rows["inputs"]))
    return rows, bytes_per_row.astype(np.int64)

  def eval_segments(self, docs: list[bytes]) -> list[bytes]:
    """Held-out documents cut at sentence ends into segments of <= eval_max_bytes (default seq_len - 1); under
    completion-only loss, whole (a cut would part an answer from its prompt)."""
    if self.marker:
      return list(docs)
    max_bytes = self.eval_max_bytes or max(1, self.seq_len - 1)
    return [s for d in docs for s in segment.cut_segments(d, max_bytes)]

  def _texts(self, part: Part, split: str):
    if split == "train":
      store = part.store
      return store.texts if isinstance(store, MemoryStore) else _DecodedTrain(store, self.tokenizer)
    if split not in part.held_out:
      raise DataError(f"data: unknown split {split!r}; use one of train, {', '.join(part.held_out)}")
    return part.held_out[split]

  def _split_rows(self, p: int, split: str, needed: int | None):
    """Eval rows of part p's split, only as many documents read as fill `needed` rows (None: all)."""
    key = (p, split)
    cached = self._eval_cache.get(key)
    if cached is not None and (cached[2] or (needed is not None and cached[3] >= needed)):
      return cached[0], cached[1]
    texts = self._texts(self.parts[p], split)
    k = len(texts) if needed is None else min(len(texts), 64)
    while True:
      rows, bytes_per_row = self._eval_rows(self.eval_segments(texts[:k]), split)
      complete = k >= len(texts)
      # Sequential filling never changes a row once a later one exists: all but the last row are final.
      final = len(rows["loss_mask"]) if complete else len(rows["loss_mask"]) - 1
      if complete or final >= needed:
        break
      k = min(len(texts), k * 4)
    if not complete:
      rows, bytes_per_row = {k_: v[:final] for k_, v in rows.items()}, bytes_per_row[:final]
    self._eval_cache[key] = (rows, bytes_per_row, complete, final)
    return rows, bytes_per_row

  def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None,
                   docs: list[bytes] | None = None, part: int | None = None
                   ) -> list[tuple[dict[str, np.ndarray], int]]:
    """Fixed [batch_size, T] batches over a split (or `docs`), each with the number of bytes it scores.

    Every segment is scored in one row with its full context; the last batch is padded with masked rows.
    An empty split gives an empty list. With several parts, `part` picks one (default: all, in turn);
    only as many held-out documents are read as `max_batches` needs.
    """
    B = batch_size
    if docs is not None:
      rows, bytes_per_row = self._eval_rows(self.eval_segments(docs), None)
    elif part is None and len(self.parts) > 1:
      return [b for p in range(len(self.parts)) for b in self.eval_batches(split, B, max_batches, part=p)]
    else:
      rows, bytes_per_row = self._split_rows(part or 0, split, None if max_batches is None else max_batches * B)
    n_rows = len(rows["loss_mask"])
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


def load_splits(source: str, val_fraction: float, test_fraction: float, split_seed: int) -> dict[str, list[bytes]]:
  """Train/val/test texts in memory: of a raw source (split by content hash), or decoded from a prepared directory
  (as the chunked families read one: their packing needs every document's chunk count)."""
  if prepared.is_prepared(source):
    _, tok, store, held_out = prepared.open_prepared(source)
    return dict(train=list(_DecodedTrain(store, tok)), val=list(held_out["val"]), test=list(held_out["test"]))
  if parse_source(source)[0][1] is not None:
    raise DataError(f"data.source {source!r}: mixtures are read by the token family only; train this family on one "
                    "source")
  docs = corpus.load_documents(source)
  splits = corpus.split_documents(docs, val_fraction, test_fraction, split_seed, source=source)
  corpus.check_held_out(splits, source, val_fraction, test_fraction)
  return splits


class _DecodedTrain:
  """A prepared train split's documents as bytes (decoded from their ids on demand)."""

  def __init__(self, store, tokenizer):
    self.store, self.tokenizer = store, tokenizer

  def __len__(self) -> int:
    return len(self.store.lengths)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self.tokenizer.decode_bytes(x) for x in self.store.get(range(*i.indices(len(self))))]
    return self.tokenizer.decode_bytes(self.store.get([i])[0])

  def __iter__(self):
    for start in range(0, len(self), 1024):
      yield from self[start:start + 1024]
