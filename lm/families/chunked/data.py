"""Chunked-family data (byte-hierarchical, concept): documents as [N, C, L] grids of chunks.

A chunker turns one document into its chunks, each `(text, unit ids)` with at most L ids; the texts of a
document's chunks concatenate to the document. Byte-hierarchical chunks are HAT words of bytes, concept
chunks are sentences of bytes or tokens.
"""

import functools

import numpy as np

from lm.data import segment
from lm.data import tokenizers as tokenizers_lib
from lm.data.packing import rows_of_units
from lm.data.pipeline import TokenData, load_splits, row_iterator
from lm.errors import DataError

CHUNK_KEYS = ("units", "unit_mask", "chunk_mask", "segment_ids", "positions", "doc_end")
BYTE_PAD = 256  # ByteTokenizer's pad id; units are raw byte values 0..255.


def _byte_ids(chunk: bytes) -> np.ndarray:
  return np.frombuffer(chunk, np.uint8).astype(np.int32)


def word_chunks(doc: bytes, chunk_len: int) -> list[tuple[bytes, np.ndarray]]:
  """HAT words (`segment.split_hat_words`) of <= chunk_len bytes; the units are the bytes."""
  return [(c, _byte_ids(c)) for c in segment.chunk_words(segment.split_hat_words(doc), chunk_len)]


def sentence_chunks(doc: bytes, chunk_len: int, tokenizer: tokenizers_lib.Tokenizer) -> list[tuple[bytes, np.ndarray]]:
  """Sentences (`segment.split_sentences`) as units of `tokenizer`, over-long ones cut every chunk_len units.

  Byte units are cut on UTF-8 character boundaries where possible; token units are cut every chunk_len tokens
  and each piece's text is what its tokens decode to (the sentence's bytes, for a lossless tokenizer).
  """
  sentences = segment.split_sentences(doc)
  if isinstance(tokenizer, tokenizers_lib.ByteTokenizer):
    return [(c, _byte_ids(c)) for c in segment.chunk_words(sentences, chunk_len)]
  out = []
  for sentence, ids in zip(sentences, tokenizer.encode_batch(sentences)):
    ids = np.asarray(ids, np.int32).ravel()
    if len(ids) <= chunk_len:
      out.append((sentence, ids))
      continue
    out.extend((tokenizer.decode_bytes(ids[i:i + chunk_len]), ids[i:i + chunk_len])
               for i in range(0, len(ids), chunk_len))
  return [(text, ids) for text, ids in out if len(ids)]


def _check_grid(num_chunks: int, chunk_len: int) -> tuple[int, int]:
  if num_chunks < 1 or chunk_len < 1:
    raise DataError(f"data: num_chunks={num_chunks} and chunk_len={chunk_len} must be >= 1; set positive values")
  return int(num_chunks), int(chunk_len)


def pack_chunk_rows(docs: list[bytes], num_chunks: int, chunk_len: int, chunker=None,
                    pad_id: int = BYTE_PAD) -> dict[str, np.ndarray]:
  """Packs documents, split into chunks of <= L units by `chunker(doc, L)` (default: HAT words of bytes), into
  [N, C, L] rows.

  Concat-then-split like `pack_rows`: chunks of all documents back to back, C per row, only the last row
  padded, so a long document continues in the next row (its `positions` restart at 0 there). Arrays (int32):
  `units` [N, C, L] unit ids (`pad_id` where `unit_mask` is 0), `unit_mask` [N, C, L], `chunk_mask` [N, C],
  `segment_ids` [N, C] (1, 2, ... per row, 0 = padding), `positions` [N, C], and `doc_end` [N, C]: 1 on the
  last chunk of each document, i.e. the backbone state there predicts one end-of-document event instead of a
  next chunk. Empty documents have no chunk to end and are dropped.
  """
  C, L = _check_grid(num_chunks, chunk_len)
  chunker = chunker or word_chunks
  doc_chunks = [[ids for _, ids in chunker(d, L)] for d in docs]
  chunks = [c for cs in doc_chunks for c in cs]
  chunks_D = np.array([len(cs) for cs in doc_chunks], dtype=np.int64)
  n = len(chunks)
  n_rows = -(-n // C)
  # Scatter every unit into its (chunk, column) cell of a flat [n_rows * C, L] grid.
  len_M = np.array([len(c) for c in chunks], dtype=np.int64)
  chunk_of_unit = np.repeat(np.arange(n), len_M)
  col_of_unit = np.arange(len(chunk_of_unit)) - np.repeat(np.cumsum(len_M) - len_M, len_M)
  units = np.full((n_rows * C, L), pad_id, dtype=np.int32)
  units[chunk_of_unit, col_of_unit] = np.concatenate([np.zeros(0, np.int32)] + chunks)
  unit_mask = np.zeros((n_rows * C, L), dtype=np.int32)
  unit_mask[chunk_of_unit, col_of_unit] = 1
  doc_end = np.zeros(n_rows * C, dtype=np.int32)
  doc_end[np.cumsum(chunks_D)[chunks_D > 0] - 1] = 1
  doc = np.full(n_rows * C, -1, dtype=np.int64)
  doc[:n] = np.repeat(np.arange(len(docs)), chunks_D)
  doc_NxC = doc.reshape(n_rows, C)
  # `_rows` derives segment ids and positions from a unit index; here the units are chunks.
  rows = rows_of_units(doc_NxC, doc_NxC, doc_NxC)
  return dict(
      units=units.reshape(n_rows, C, L),
      unit_mask=unit_mask.reshape(n_rows, C, L),
      chunk_mask=rows["loss_mask"],
      segment_ids=rows["segment_ids"],
      positions=rows["positions"],
      doc_end=doc_end.reshape(n_rows, C),
  )


def chunk_targets(rows: dict[str, np.ndarray], eod_id: int, eow_id: int, pad_id: int = BYTE_PAD) -> dict:
  """The decoder's `targets` and `loss_mask` [N, C, L + 1] for packed chunk rows: the chunk's units, then
  end-of-document on a document's last chunk (`doc_end`) or end-of-chunk (`eow_id`) elsewhere."""
  units, unit_mask, chunk_mask, doc_end = rows["units"], rows["unit_mask"], rows["chunk_mask"], rows["doc_end"]
  N, C, L = units.shape
  k_NxC = unit_mask.sum(-1)
  targets = np.concatenate([np.where(unit_mask > 0, units, pad_id), np.full((N, C, 1), pad_id, np.int32)], -1)
  end_NxC = np.where(doc_end > 0, eod_id, eow_id).astype(np.int32)
  np.put_along_axis(targets, k_NxC[..., None], end_NxC[..., None], axis=-1)
  loss_mask = (np.arange(L + 1)[None, None, :] <= k_NxC[..., None]) & (chunk_mask[..., None] > 0)
  targets = np.where(loss_mask, targets, pad_id)
  return dict(rows, targets=targets.astype(np.int32), loss_mask=loss_mask.astype(np.int32))


def pack_chunk_eval(segments: list[bytes], num_chunks: int, chunk_len: int, chunker=None, pad_id: int = BYTE_PAD,
                    with_index: bool = False):
  """Held-out segments as chunk rows, each scored from a fresh state: a segment never continues across rows
  (one of more than C chunks is cut at chunk boundaries into pieces of C, each its own segment). Returns
  (rows, bytes scored per row = text bytes + one end-of-segment event per piece). With `with_index`, rows also
  hold `chunk_index` [N, C]: each chunk's position in the split's chunk order (-1 on padding)."""
  C, L = _check_grid(num_chunks, chunk_len)
  chunker = chunker or word_chunks
  pieces, first = [], 0
  for s in segments:
    chunks = chunker(s, L)
    pieces.extend((first + i, chunks[i:i + C]) for i in range(0, len(chunks), C))
    first += len(chunks)
  rows_of_chunks, current, used = [], [], 0
  for piece in pieces:
    if used + len(piece[1]) > C:
      rows_of_chunks.append(current)
      current, used = [], 0
    current.append(piece)
    used += len(piece[1])
  if current:
    rows_of_chunks.append(current)
  N = len(rows_of_chunks)
  out = dict(units=np.full((N, C, L), pad_id, np.int32), unit_mask=np.zeros((N, C, L), np.int32),
             chunk_mask=np.zeros((N, C), np.int32), segment_ids=np.zeros((N, C), np.int32),
             positions=np.zeros((N, C), np.int32), doc_end=np.zeros((N, C), np.int32))
  index = np.full((N, C), -1, np.int64)
  bytes_per_row = np.zeros(N, np.int64)
  for r, row in enumerate(rows_of_chunks):
    c = 0
    for s_id, (first, piece) in enumerate(row, start=1):
      for p, (text, ids) in enumerate(piece):
        out["units"][r, c, :len(ids)] = ids
        out["unit_mask"][r, c, :len(ids)] = 1
        out["chunk_mask"][r, c], out["segment_ids"][r, c], out["positions"][r, c] = 1, s_id, p
        index[r, c] = first + p
        c += 1
      out["doc_end"][r, c - 1] = 1
      bytes_per_row[r] += sum(len(text) for text, _ in piece) + 1
  if with_index:
    out["chunk_index"] = index
  return out, bytes_per_row


class ChunkData(TokenData):
  """Byte-hierarchical data: the same splits and grain iterator as `TokenData`, rows as [N, C, L] word grids
  with decoder targets [N, C, L + 1]. Units are bytes (the byte tokenizer) plus one end-of-word id."""

  def __init__(self, splits, tokenizer, num_chunks: int, chunk_len: int, source: str = "<memory>",
               eval_max_bytes: int | None = None):
    super().__init__(splits, tokenizer, num_chunks, source=source,
                     eval_max_bytes=eval_max_bytes or max(1, num_chunks * chunk_len // 2))
    self.num_chunks, self.chunk_len = int(num_chunks), int(chunk_len)
    self.eow_id = tokenizer.vocab_size

  @classmethod
  def build(cls, source: str = "python-prose", num_chunks: int = 64, chunk_len: int = 16,
            val_fraction: float = 0.02, test_fraction: float = 0.02, split_seed: int = 0,
            eval_max_bytes: int | None = None) -> "ChunkData":
    splits = load_splits(source, val_fraction, test_fraction, split_seed)
    return cls(splits, tokenizers_lib.ByteTokenizer(), num_chunks, chunk_len, source=source,
               eval_max_bytes=eval_max_bytes)

  def chunker(self, doc: bytes, chunk_len: int) -> list[tuple[bytes, np.ndarray]]:
    return word_chunks(doc, chunk_len)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size + 1

  def unit_bytes(self) -> np.ndarray:
    return np.append(self.tokenizer.unit_bytes(), 0).astype(np.int32)  # end-of-chunk adds no byte

  def train_iterator(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                     workers: int = 0, prefetch: int = 4):  # pylint: disable=unused-argument
    """The packed train rows, shuffled per epoch: this process's block of every global batch."""
    return row_iterator(self.train_rows, batch_size, seed, process_index, process_count, self.source,
                        f"{self.num_chunks} chunks")

  def sample_rows(self, batch_size: int, max_batches: int = 0) -> dict[str, np.ndarray]:  # pylint: disable=unused-argument
    """Every packed training row (an epoch): bytes per row are then known exactly."""
    return self.train_rows

  @functools.cached_property
  def train_rows(self) -> dict[str, np.ndarray]:
    rows = pack_chunk_rows(self.splits["train"], self.num_chunks, self.chunk_len, self.chunker, self.tokenizer.pad_id)
    return chunk_targets(rows, self.tokenizer.eos_id, self.eow_id, self.tokenizer.pad_id)

  def eval_segments(self, docs: list[bytes]) -> list[bytes]:
    return [s for d in docs for s in segment.cut_segments(d, self.eval_max_bytes)]

  def _pack_eval(self, segments: list[bytes], with_index: bool = False):
    return pack_chunk_eval(segments, self.num_chunks, self.chunk_len, self.chunker, self.tokenizer.pad_id,
                           with_index=with_index)

  def _eval_rows(self, segments: list[bytes], split: str | None):
    rows, bytes_per_row = self._pack_eval(segments)
    return chunk_targets(rows, self.tokenizer.eos_id, self.eow_id, self.tokenizer.pad_id), bytes_per_row


class ConceptData(ChunkData):
  """Concept-family data: rows as [N, C, L] grids of sentences in units of any tokenizer (bytes or BPE), with
  decoder targets [N, C, L + 1] ending each sentence with end-of-sentence (one id past the tokenizer's) or
  end-of-document.

  `embeddings` (optional): precomputed concept targets per split, `{split: float array [chunks, K]}` with one row
  per chunk in the order `sentences(split)` lists them; rows then also hold `concepts` [N, C, K].
  """

  def __init__(self, splits, tokenizer, num_chunks: int, chunk_len: int, source: str = "<memory>",
               eval_max_bytes: int | None = None, embeddings: dict[str, np.ndarray] | None = None):
    super().__init__(splits, tokenizer, num_chunks, chunk_len, source=source, eval_max_bytes=eval_max_bytes)
    self.embeddings = embeddings
    if embeddings is not None:
      for split, table in embeddings.items():
        n = len(self.sentences(split))
        if table.ndim != 2 or len(table) != n:
          raise DataError(f"data.concept_embeddings: the {split} table has shape {table.shape} but the {split} "
                          f"split has {n} sentences; embed the lines `lm sentences` writes for it, one row each")

  @classmethod
  def build(cls, source: str = "python-prose", tokenizer_spec="bytes", vocab_size: int = 4096,
            num_chunks: int = 32, chunk_len: int = 64, val_fraction: float = 0.02, test_fraction: float = 0.02,
            split_seed: int = 0, eval_max_bytes: int | None = None, embeddings: str = "") -> "ConceptData":
    splits = load_splits(source, val_fraction, test_fraction, split_seed)
    if isinstance(tokenizer_spec, tokenizers_lib.Tokenizer):
      tokenizer = tokenizer_spec
    else:
      tokenizer = tokenizers_lib.build_tokenizer(tokenizer_spec, splits["train"], vocab_size)
    tables = load_embeddings(embeddings, splits) if embeddings else None
    return cls(splits, tokenizer, num_chunks, chunk_len, source=source, eval_max_bytes=eval_max_bytes,
               embeddings=tables)

  def chunker(self, doc: bytes, chunk_len: int) -> list[tuple[bytes, np.ndarray]]:
    return sentence_chunks(doc, chunk_len, self.tokenizer)

  def sentences(self, split: str) -> list[bytes]:
    """The chunk texts of a split in the order their rows take: train documents' chunks as training packs them,
    val/test as the held-out segments `lm eval` scores. An embedding table has one row per entry."""
    if split not in self.splits:
      raise DataError(f"data: unknown split {split!r}; use one of {', '.join(self.splits)}")
    docs = self.splits[split] if split == "train" else self.eval_segments(self.splits[split])
    return [text for d in docs for text, _ in self.chunker(d, self.chunk_len)]

  def _with_concepts(self, rows: dict, split: str, index_NxC: np.ndarray) -> dict:
    table = self.embeddings[split].astype(np.float32)
    concepts = np.where((index_NxC >= 0)[..., None], table[np.maximum(index_NxC, 0)], 0.0)
    return dict(rows, concepts=concepts.astype(np.float32))

  @functools.cached_property
  def train_rows(self) -> dict[str, np.ndarray]:
    rows = super().train_rows
    if self.embeddings is None:
      return rows
    n = int(rows["chunk_mask"].sum())
    index = np.full(rows["chunk_mask"].size, -1, np.int64)
    index[:n] = np.arange(n)  # concat-then-split keeps the split's chunk order, padding only at the end
    return self._with_concepts(rows, "train", index.reshape(rows["chunk_mask"].shape))

  def _eval_rows(self, segments: list[bytes], split: str | None):
    if split is None and self.embeddings is not None:
      raise DataError("data.concept_embeddings: precomputed concepts exist only for the configured splits; "
                      "score other text (--data, --noise) with a run whose encoder is trained")
    rows, bytes_per_row = self._pack_eval(segments, with_index=True)
    index = rows.pop("chunk_index")
    rows = chunk_targets(rows, self.tokenizer.eos_id, self.eow_id, self.tokenizer.pad_id)
    if self.embeddings is not None:
      rows = self._with_concepts(rows, split, index)
    return rows, bytes_per_row


def load_embeddings(pattern: str, splits: dict[str, list[bytes]]) -> dict[str, np.ndarray]:
  """`{split: table}` from `.npy` files named by `pattern` with `{split}` in it (e.g. `emb/{split}.npy`)."""
  if "{split}" not in pattern:
    raise DataError(f"data.concept_embeddings={pattern!r} must contain '{{split}}' (e.g. 'emb/{{split}}.npy'), "
                    "one .npy file per split")
  tables = {}
  for split in splits:
    path = pattern.format(split=split)
    try:
      tables[split] = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DataError(f"data.concept_embeddings: cannot read {path} ({type(e).__name__}); write one float "
                      f"array [sentences, dim] per split") from None
  dims = {t.shape[-1] if t.ndim == 2 else None for t in tables.values()}
  if len(dims) != 1:
    raise DataError(f"data.concept_embeddings: the splits' tables differ in shape "
                    f"({ {k: v.shape for k, v in tables.items()} }); every split needs the same dimension")
  return tables
