"""Property tests for the data pipeline end to end: arbitrary bytes on disk -> TokenData -> batches.

Every example writes its corpus to a fresh temporary directory (the tmp_path fixture is per test, not per
example), so no example can see another's files.
"""

import os
import re
import tempfile

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from lm.data import corpus, packing, pipeline, sources, tokenizers
from lm.errors import DataError, plural


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))


# Pieces biased towards what the splitters and decoders care about: empty, NULs, newlines, sentence ends,
# invalid UTF-8 (lone continuation bytes, truncated multibyte sequences, bytes that never occur in UTF-8),
# valid multibyte characters, plus arbitrary bytes.
_PIECES = [
    b"", b"\x00", b"\n", b"\r\n", b" ", b"\t", b". ", b"!\n", b"abc", b"\xff", b"\xfe", b"\xff\xfe", b"\x80",
    b"\xbf\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x99", "é".encode(), "東".encode(), "🙂".encode(), b"<eos>",
]
# Any bytes are text to the pipeline, except the leading bytes of known binary formats (a PNG, a gzip, ...),
# which are refused by name (tests/test_data_prepared.py).
_doc = st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=12)), max_size=12).map(b"".join).filter(
    lambda d: sources.binary_format(d) is None)
_docs = st.lists(_doc, max_size=8)

BYTES = tokenizers.ByteTokenizer()


def _write_corpus(directory: str, docs: list[bytes]) -> None:
  for i, doc in enumerate(docs):  # Zero-padded names: the loader's sorted order is the list order.
    with open(os.path.join(directory, f"{i:03d}.txt"), "wb") as f:
      f.write(doc)


def _flat(rows, key):
  """Row-major values of `key` at unmasked pairs."""
  return rows[key][rows["loss_mask"] == 1].tolist()


def _byte_pairs(docs, bos, eos):
  """The (input, target) streams of `[bos] + bytes + [eos]` per document, back to back."""
  inputs = [t for d in docs for t in [bos, *d]]
  targets = [t for d in docs for t in [*d, eos]]
  return inputs, targets


def _check_segments(rows, bos):
  """Byte ids never equal bos, so within a row a segment opens exactly at column 0 or at a bos input."""
  mask = rows["loss_mask"] == 1
  T = mask.shape[1]
  col = np.arange(T)
  new = mask & ((col == 0) | (rows["inputs"] == bos))
  np.testing.assert_array_equal(rows["segment_ids"], np.cumsum(new, axis=1) * mask)
  start = np.maximum.accumulate(np.where(new, col, 0), axis=1)
  np.testing.assert_array_equal(rows["positions"], (col - start) * mask)


def _build(source, tokenizer_spec, **kwargs):
  """TokenData.build, or the DataError's message (which must be one line naming the source)."""
  try:
    return pipeline.TokenData.build(source, tokenizer_spec, **kwargs), None
  except DataError as e:
    message = str(e)
    assert "\n" not in message and repr(source) in message, message
    return None, message


@hypothesis.given(
    docs=_docs,
    seq_len=st.integers(1, 16),
    batch_size=st.integers(1, 4),
    val_fraction=st.sampled_from([0.0, 0.1, 0.3]),
    eval_max_bytes=st.one_of(st.none(), st.integers(1, 24)),
)
@hypothesis.settings(max_examples=120, deadline=None, database=None)
def test_byte_pipeline_on_random_bytes(docs, seq_len, batch_size, val_fraction, eval_max_bytes):
  with tempfile.TemporaryDirectory() as tmp:
    _write_corpus(tmp, docs)
    data, error = _build(tmp, "bytes", seq_len=seq_len, val_fraction=val_fraction, test_fraction=0.1,
                         eval_max_bytes=eval_max_bytes)
    nonempty = [d for d in docs if d]
    hypothesis.event("build failed" if data is None else "built")
    if data is None:
      if not docs:
        assert "no regular files" in error
      elif not nonempty:
        assert f"{plural(len(docs), 'document')}, 0 bytes" in error
      elif "train split is empty" in error:
        assert f"{plural(len(nonempty), 'document')}," in error
      else:  # too few documents for a held-out split that was asked for
        assert re.search(r"the (val|test) split is empty \(" + plural(len(nonempty), "document") + ";", error), error
      return
    assert nonempty
    # Every non-empty file is one document, byte for byte, in exactly one split; empty files are dropped.
    assert sorted(sum(data.splits.values(), [])) == sorted(nonempty)
    tok = data.tokenizer
    train = data.splits["train"]

    # Train rows: concat-then-split packing of exactly the train documents' bytes, bos/eos around each.
    rows = data.train_rows
    n_pairs = sum(len(d) + 1 for d in train)
    assert rows["inputs"].shape == (-(-n_pairs // seq_len), seq_len)
    assert all(v.dtype == np.int32 and v.shape == rows["inputs"].shape for v in rows.values())
    flat_mask = rows["loss_mask"].ravel()
    assert flat_mask.tolist() == [1] * n_pairs + [0] * (flat_mask.size - n_pairs)  # Padding only at the end.
    want_inputs, want_targets = _byte_pairs(train, tok.bos_id, tok.eos_id)
    assert _flat(rows, "targets") == want_targets
    assert _flat(rows, "inputs") == want_inputs
    assert (rows["inputs"][rows["loss_mask"] == 0] == tok.pad_id).all()
    assert tok.decode_bytes(rows["targets"]) == b"".join(train)
    _check_segments(rows, tok.bos_id)

    # The train iterator: [B, T] int32 batches of the epoch-shuffled stream, no padding; every segment of a
    # row is a contiguous run of one train document's pairs, and positions count from that run's start.
    doc_pairs = [list(zip(*_byte_pairs([d], tok.bos_id, tok.eos_id))) for d in train]
    try:
      it = data.train_iterator(batch_size=batch_size, seed=0)
    except DataError as e:
      hypothesis.event("too small for a batch")
      message = str(e)
      n_rows = len(rows["inputs"])
      assert n_rows < batch_size and "\n" not in message and repr(tmp) in message
      assert f"{plural(n_rows, 'row')} of {seq_len} ({plural(n_pairs, 'token')})" in message and f"batch of {batch_size}" in message
    else:
      for _ in range(3):
        batch = next(it)
        assert set(batch) == set(packing.KEYS)
        for k in packing.KEYS:
          assert batch[k].shape == (batch_size, seq_len) and batch[k].dtype == np.int32
        assert (batch["loss_mask"] == 1).all()
        for r in range(batch_size):
          seg = batch["segment_ids"][r]
          for s_id in np.unique(seg).tolist():
            at = seg == s_id
            run = list(zip(batch["inputs"][r][at].tolist(), batch["targets"][r][at].tolist()))
            assert batch["positions"][r][at].tolist() == list(range(len(run)))
            assert any(run == pairs[i:i + len(run)] for pairs in doc_pairs for i in range(len(pairs) - len(run) + 1))

    # Eval batches over every split: the bytes they score are the original bytes plus one eos per segment.
    max_bytes = eval_max_bytes or max(1, seq_len - 1)
    for split, split_docs in data.splits.items():
      segments = data.eval_segments(split_docs)
      assert b"".join(segments) == b"".join(split_docs)
      assert all(0 < len(s) <= max_bytes for s in segments)
      batches = data.eval_batches(split, batch_size)
      assert sum(n for _, n in batches) == sum(len(s) + 1 for s in segments)
      assert sum(n for _, n in batches) == sum(map(len, split_docs)) + len(segments)
      if not segments:
        assert batches == []
        continue
      stacked = {k: np.concatenate([b[k] for b, _ in batches]) for k in packing.KEYS}
      assert all(b[k].shape == (batch_size, seq_len) and b[k].dtype == np.int32 for b, _ in batches for k in b)
      # Byte tokenizer: the eval rows hold exactly the segments' bytes (one pair per byte, plus eos).
      seg_inputs, seg_targets = _byte_pairs(segments, tok.bos_id, tok.eos_id)
      assert _flat(stacked, "targets") == seg_targets
      assert _flat(stacked, "inputs") == seg_inputs
      assert (stacked["targets"] < tok.vocab_size).all()
      if max_bytes + 1 <= seq_len:  # Every segment fits one row, so each batch scores the bytes it holds.
        _check_segments(stacked, tok.bos_id)
        for b, n in batches:
          assert n == b["loss_mask"].sum()


@hypothesis.given(docs=st.lists(_doc, min_size=1, max_size=6), seq_len=st.integers(2, 12))
@hypothesis.settings(max_examples=40, deadline=None, database=None)
def test_bpe_pipeline_counts_original_bytes(docs, seq_len):
  """BPE sees invalid UTF-8 as U+FFFD, but eval still scores the bytes of the source, not of the decode."""
  docs = [d + b"\xff" for d in docs]  # Every document carries invalid UTF-8 (and is non-empty).
  with tempfile.TemporaryDirectory() as tmp:
    _write_corpus(tmp, docs)
    data, error = _build(tmp, "bpe", vocab_size=300, seq_len=seq_len, val_fraction=0.2, test_fraction=0.1)
    hypothesis.event("build failed" if data is None else "built")
    if data is None:
      assert "train split is empty" in error or re.search(r"the (val|test) split is empty", error), error
      return
    tok = data.tokenizer
    assert tok.kind == "bpe" and tok.vocab_size <= 300
    rows = data.train_rows
    assert ((rows["targets"] >= 0) & (rows["targets"] < tok.vocab_size)).all()
    decoded = tok.decode(rows["targets"])  # Replacement, never an exception.
    assert "\ufffd" in decoded
    for split, split_docs in data.splits.items():
      segments = data.eval_segments(split_docs)
      batches = data.eval_batches(split, 2)
      assert sum(n for _, n in batches) == sum(len(s) + 1 for s in segments)
      for b, _ in batches:
        assert ((b["targets"] >= 0) & (b["targets"] < tok.vocab_size)).all()
      if segments:  # One eos per segment, and every token is scored: at least one pair per segment.
        mask_total = sum(int(b["loss_mask"].sum()) for b, _ in batches)
        assert mask_total == sum(len(t) + 1 for t in tok.encode_batch(segments))


def test_load_documents_reads_fresh_files_each_time():
  """Path sources are not cached: rewriting a file with new content is seen by the next load."""
  with tempfile.TemporaryDirectory() as tmp:
    _write_corpus(tmp, [b"first \xff"])
    assert corpus.load_documents(tmp) == [b"first \xff"]
    _write_corpus(tmp, [b"second \xfe", b"\x00"])
    assert corpus.load_documents(tmp) == [b"second \xfe", b"\x00"]
