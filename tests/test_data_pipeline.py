"""Tests for lm/data/pipeline.py: packing against a slow reference, eval batches, the grain iterator."""

import json

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from lm.data import packing, pipeline, segment, tokenizers
from lm.errors import DataError

BOS, EOS, PAD = 1001, 1002, 1000


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))


def _token_docs(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 1000, size=n).astype(np.int32) for n in lengths]


def _reference_pairs(token_docs):
  """Slow reference: every (input, target, document) pair of `[bos] + ids + [eos]`, in order."""
  pairs = []
  for d, ids in enumerate(token_docs):
    seq = [BOS, *ids.tolist(), EOS]
    pairs.extend((seq[k], seq[k + 1], d) for k in range(len(seq) - 1))
  return pairs


def _check_rows(rows, token_docs, seq_len):
  """Walks the rows with an explicit loop and checks every packing invariant."""
  assert set(rows) == set(packing.KEYS)
  for v in rows.values():
    assert v.dtype == np.int32 and v.shape == rows["inputs"].shape and v.shape[1] == seq_len
  got = []  # (input, target, row, segment) of every unmasked pair, in row-major order.
  for r in range(len(rows["inputs"])):
    prev_seg, pos = 0, 0
    for t in range(seq_len):
      seg, p = rows["segment_ids"][r, t], rows["positions"][r, t]
      if rows["loss_mask"][r, t] == 0:
        assert (seg, p, rows["inputs"][r, t], rows["targets"][r, t]) == (0, 0, PAD, PAD)
        continue
      if seg != prev_seg:
        assert seg == prev_seg + 1 and p == 0
        pos = 0
      assert p == pos
      pos, prev_seg = pos + 1, seg
      got.append((rows["inputs"][r, t], rows["targets"][r, t], r, seg))
  return got


@hypothesis.given(st.lists(st.integers(0, 40), min_size=0, max_size=12), st.integers(1, 17))
@hypothesis.settings(max_examples=150, deadline=None, database=None)
def test_pack_rows_matches_reference(lengths, seq_len):
  token_docs = _token_docs(lengths)
  rows = packing.pack_rows(token_docs, seq_len, BOS, EOS, PAD)
  got = _check_rows(rows, token_docs, seq_len)
  want = _reference_pairs(token_docs)
  # Concat-then-split: the unmasked pairs are exactly the documents' pairs, in order, with no padding
  # except at the end of the last row.
  assert [(i, t) for i, t, _, _ in got] == [(i, t) for i, t, _ in want]
  assert rows["loss_mask"].sum() == sum(n + 1 for n in lengths)
  assert len(rows["inputs"]) == -(-len(want) // seq_len)
  # Within a row, a segment is exactly one document (a document cut by a row end restarts as a new segment).
  for (_, _, r, seg), (_, _, d), (_, _, r2, seg2), (_, _, d2) in zip(got, want, got[1:], want[1:]):
    assert (r == r2 and seg == seg2) == (d == d2 and r == r2)


def test_pack_rows_small_example():
  rows = packing.pack_rows([np.array([5, 6]), np.array([7])], 4, BOS, EOS, PAD)
  np.testing.assert_array_equal(rows["inputs"], [[BOS, 5, 6, BOS], [7, PAD, PAD, PAD]])
  np.testing.assert_array_equal(rows["targets"], [[5, 6, EOS, 7], [EOS, PAD, PAD, PAD]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 2], [1, 0, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[1, 1, 1, 1], [1, 0, 0, 0]])


@hypothesis.given(st.lists(st.integers(0, 40), min_size=0, max_size=12), st.integers(1, 17))
@hypothesis.settings(max_examples=150, deadline=None, database=None)
def test_pack_eval_rows_never_splits_a_segment_that_fits(lengths, seq_len):
  token_segments = _token_docs(lengths, seed=1)
  rows = packing.pack_eval_rows(token_segments, seq_len, BOS, EOS, PAD)
  got = _check_rows(rows, token_segments, seq_len)
  want = _reference_pairs(token_segments)
  assert [(i, t) for i, t, _, _ in got] == [(i, t) for i, t, _ in want]
  assert rows["loss_mask"].sum() == sum(n + 1 for n in lengths)
  # Each segment lives in one (row, segment id) when it fits; longer ones are pieces of exactly T pairs.
  homes = {}
  for (_, _, r, seg), (_, _, d) in zip(got, want):
    homes.setdefault(d, []).append((r, seg))
  for d, places in homes.items():
    pieces = [places.count(p) for p in dict.fromkeys(places)]
    assert all(n == seq_len for n in pieces[:-1]) and 0 < pieces[-1] <= seq_len
    assert len(pieces) == -(-(lengths[d] + 1) // seq_len)


def _text_docs(n=60):
  rng = np.random.default_rng(0)
  words = "alpha beta gamma delta épsilon zeta eta theta".split()
  return [(" ".join(rng.choice(words, size=rng.integers(3, 40))) + ". Done!\n").encode() for _ in range(n)]


def _token_data(seq_len=32, n=60, **kwargs):
  docs = _text_docs(n)
  splits = dict(train=docs[:40], val=docs[40:50], test=docs[50:])
  return pipeline.TokenData(splits, tokenizers.ByteTokenizer(), seq_len, **kwargs)


def test_eval_batches_count_original_bytes():
  data = _token_data(seq_len=32)
  batches = data.eval_batches("val", batch_size=4)
  segments = [s for d in data.splits["val"] for s in segment.cut_segments(d, 31)]
  assert sum(n for _, n in batches) == sum(len(s) + 1 for s in segments)
  mask = np.concatenate([b["loss_mask"] for b, _ in batches])
  assert mask.sum() == sum(len(s) + 1 for s in segments)  # Byte tokenizer: one pair per byte, plus eos.
  for b, _ in batches:
    assert all(v.shape == (4, 32) and v.dtype == np.int32 for v in b.values())
  last = batches[-1][0]
  empty = last["loss_mask"].sum(axis=1) == 0
  assert (last["segment_ids"][empty] == 0).all()
  # Deterministic and identical across calls (and the cache does not leak mutations into results).
  again = data.eval_batches("val", batch_size=4)
  for (b1, n1), (b2, n2) in zip(batches, again, strict=True):
    assert n1 == n2 and all((b1[k] == b2[k]).all() for k in b1)
  assert len(data.eval_batches("val", 4, max_batches=1)) == 1


def test_eval_batches_bpe_and_explicit_docs():
  docs = _text_docs()
  tok = tokenizers.build_tokenizer("bpe", docs[:40], 320)
  data = pipeline.TokenData(dict(train=docs[:40], val=docs[40:], test=[]), tok, seq_len=16, eval_max_bytes=40)
  outside = [b"alpha beta \xff gamma. Delta!\n" * 3]
  batches = data.eval_batches("test", batch_size=2, docs=outside)
  segments = [s for d in outside for s in segment.cut_segments(d, 40)]
  assert sum(n for _, n in batches) == sum(len(s) + 1 for s in segments)
  assert data.eval_batches("test", batch_size=2) == []


def test_train_iterator_is_deterministic_and_resumes():
  data = _token_data()
  n_rows = len(data.train_rows["inputs"])
  it = data.train_iterator(batch_size=4, seed=7)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  json.dumps(state)  # Checkpointable as JSON, next to the model state.
  rest = [next(it) for _ in range(2 * n_rows)]  # Crosses epoch boundaries: the iterator is infinite.
  same = data.train_iterator(batch_size=4, seed=7)
  for b1, b2 in zip(first, [next(same) for _ in range(3)]):
    assert all((b1[k] == b2[k]).all() for k in packing.KEYS)
  resumed = data.train_iterator(batch_size=4, seed=7)
  resumed.set_state(state)
  for b1, b2 in zip(rest[:5], [next(resumed) for _ in range(5)]):
    assert all((b1[k] == b2[k]).all() for k in packing.KEYS)
  other = next(data.train_iterator(batch_size=4, seed=8))
  assert not (other["inputs"] == first[0]["inputs"]).all()
  # Rows of the epoch-shuffled stream (tests/test_data_prepared.py checks its packing), never padded.
  assert all((b["loss_mask"] == 1).all() for b in first + rest)
  assert first[0]["inputs"].shape == (4, 32)


def test_train_iterator_process_shards_make_the_global_batch():
  data = _token_data()
  whole = data.train_iterator(batch_size=6, seed=3)
  shards = [data.train_iterator(batch_size=6, seed=3, process_index=p, process_count=3) for p in range(3)]
  for _ in range(4):
    want = next(whole)
    parts = [next(s) for s in shards]
    assert all(p["inputs"].shape == (2, 32) for p in parts)
    for k in packing.KEYS:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), want[k])


def test_train_iterator_too_small_for_a_batch():
  data = _token_data(seq_len=32, source="tiny.txt")
  n_rows = len(data.train_rows["inputs"])
  with pytest.raises(DataError, match=f"'tiny.txt'.*{n_rows} rows.*batch of {n_rows + 1}") as e:
    data.train_iterator(batch_size=n_rows + 1, seed=0)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError):
    data.train_iterator(batch_size=4, seed=0, process_count=3)


def test_build_from_files(tmp_path):
  for i, doc in enumerate(_text_docs(30)):
    (tmp_path / f"{i:02d}.txt").write_bytes(doc)
  data = pipeline.TokenData.build(str(tmp_path), "bytes", 0, seq_len=16, val_fraction=0.1, test_fraction=0.1)
  assert sum(len(v) for v in data.splits.values()) == 30 and data.splits["val"] and data.splits["test"]
  batch = next(data.train_iterator(batch_size=2, seed=0))
  assert batch["inputs"].shape == (2, 16)
  with pytest.raises(DataError, match="'wordpiece'"):
    pipeline.TokenData.build(str(tmp_path), "wordpiece", 0, seq_len=16)


def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(DataError) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_build_errors_name_the_source_and_its_size(tmp_path):
  build = pipeline.TokenData.build
  missing = str(tmp_path / "missing")
  assert repr(missing) in _one_line_error(build, missing, "bytes", seq_len=8)
  (tmp_path / "empties").mkdir()
  for i in range(2):
    (tmp_path / "empties" / f"{i}.txt").write_bytes(b"")
  message = _one_line_error(build, str(tmp_path / "empties"), "bpe", vocab_size=300, seq_len=8)
  assert repr(str(tmp_path / "empties")) in message and "2 documents, 0 bytes" in message
  # One document that hashes into a held-out split leaves nothing to train on.
  (tmp_path / "one.txt").write_bytes(b"a single document")
  message = _one_line_error(build, str(tmp_path / "one.txt"), "bytes", seq_len=8, val_fraction=0.5,
                            test_fraction=0.49)
  assert "train split is empty" in message and repr(str(tmp_path / "one.txt")) in message
  assert "1 document, 17 bytes" in message


def test_build_too_small_for_one_batch_names_the_source_and_sizes(tmp_path):
  path = str(tmp_path / "small.txt")
  (tmp_path / "small.txt").write_bytes(b"hello world\n")  # 12 bytes -> 13 pairs -> 2 rows of 8.
  data = pipeline.TokenData.build(path, "bytes", seq_len=8, val_fraction=0.0, test_fraction=0.0)
  message = _one_line_error(data.train_iterator, batch_size=3, seed=0)
  assert repr(path) in message and "2 rows of 8 (13 tokens)" in message and "batch of 3" in message
  batch = next(data.train_iterator(batch_size=2, seed=0))  # the stream wraps into the next epoch: no padding
  assert batch["inputs"].shape == (2, 8) and batch["loss_mask"].sum() == 16
  assert all(data.tokenizer.decode_bytes(row) in b"hello world\n" * 3 for row in batch["targets"])


# Invalid UTF-8 of every kind: bytes that never occur in UTF-8, lone continuation bytes, truncated sequences,
# an overlong encoding, a surrogate; mixed with valid multibyte text, NULs and whitespace.
_INVALID_UTF8_DOCS = [
    b"\xff\xfe plain start. More text!\n",
    b"lone \x80 continuation \xbf\xbf bytes.\n",
    b"truncated \xe2\x82 euro and \xf0\x9f\x99 smile",
    "valid café 東京 🙂 text. ".encode() + b"\xc3",
    b"overlong \xc0\xaf slash, surrogate \xed\xa0\x80 here.\n",
    b"\x00\x00 nul bytes \x00 and \r\n windows lines\r\n",
    b"\xfe" * 40,
    b"ordinary ascii words that tell the tokenizer something. " * 3,
    b"more ordinary words, with an \xff in the middle of them.\n" * 2,
    b"the end \xe0\xa4",
]


def _write_docs(directory, docs):
  directory.mkdir()
  for i, doc in enumerate(docs):
    (directory / f"{i:02d}.txt").write_bytes(doc)
  return str(directory)


def test_build_bytes_keeps_every_invalid_utf8_byte(tmp_path):
  source = _write_docs(tmp_path / "corpus", _INVALID_UTF8_DOCS)
  data = pipeline.TokenData.build(source, "bytes", seq_len=32, val_fraction=0.2, test_fraction=0.2)
  tok = data.tokenizer
  assert sorted(sum(data.splits.values(), [])) == sorted(_INVALID_UTF8_DOCS)
  for doc in _INVALID_UTF8_DOCS:
    assert tok.decode_bytes(tok.encode(doc)) == doc
  train = data.splits["train"]
  rows = data.train_rows
  mask = rows["loss_mask"] == 1
  # The unmasked targets are exactly the train documents' bytes, each followed by eos.
  assert rows["targets"][mask].tolist() == [t for d in train for t in [*d, tok.eos_id]]
  assert tok.decode_bytes(rows["targets"]) == b"".join(train)
  assert tok.decode_bytes(rows["inputs"]) == b"".join(train)
  for split, docs in data.splits.items():
    batches = data.eval_batches(split, batch_size=4)
    segments = data.eval_segments(docs)
    assert b"".join(segments) == b"".join(docs)
    assert sum(n for _, n in batches) == sum(len(s) + 1 for s in segments)
    assert b"".join(tok.decode_bytes(b["targets"]) for b, _ in batches) == b"".join(docs)


def test_build_bpe_decodes_invalid_utf8_with_replacement_and_counts_original_bytes(tmp_path):
  source = _write_docs(tmp_path / "corpus", _INVALID_UTF8_DOCS)
  data = pipeline.TokenData.build(source, "bpe", vocab_size=300, seq_len=32, val_fraction=0.2, test_fraction=0.2)
  tok = data.tokenizer
  assert tok.kind == "bpe" and tok.vocab_size <= 300
  for doc in _INVALID_UTF8_DOCS:
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc.decode("utf-8", errors="replace")  # U+FFFD, never an exception.
    assert tok.decode_bytes(ids) == doc.decode("utf-8", errors="replace").encode()
  rows = data.train_rows
  assert ((rows["targets"] >= 0) & (rows["targets"] < tok.vocab_size)).all()
  assert "\ufffd" in tok.decode(rows["targets"])
  batch = next(data.train_iterator(batch_size=2, seed=0))
  assert batch["targets"].shape == (2, 32) and (batch["targets"] < tok.vocab_size).all()
  # Bits per byte divides by the source's bytes: each segment's own length plus one end-of-segment event.
  total, n_segments = 0, 0
  for split, docs in data.splits.items():
    segments = data.eval_segments(docs)
    assert b"".join(segments) == b"".join(docs)
    n_bytes = sum(n for _, n in data.eval_batches(split, batch_size=4))
    assert n_bytes == sum(len(s) + 1 for s in segments)
    total, n_segments = total + n_bytes, n_segments + len(segments)
  assert total == sum(map(len, _INVALID_UTF8_DOCS)) + n_segments
  replaced = sum(len(d.decode("utf-8", errors="replace").encode()) for d in _INVALID_UTF8_DOCS)
  assert replaced != sum(map(len, _INVALID_UTF8_DOCS))  # Counting decoded bytes would give another total.
  # Explicit documents (e.g. a user's eval file) count their original bytes too.
  outside = [b"\xff\xfe\xfd", b"ok \x80\x80 fine.\n" * 5]
  segments = data.eval_segments(outside)
  assert sum(n for _, n in data.eval_batches("test", 2, docs=outside)) == sum(len(s) + 1 for s in segments)


# ---------------------------------------------------------------------------------------------------------
# Completion-only loss (data.completion_after).

def _qa_docs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  return [f"{' '.join(rng.choice(['ab', 'cd', 'e'], size=rng.integers(1, 6)))}={rng.integers(0, 10 ** rng.integers(1, 5))}"
          f"{'=x' if i % 3 == 0 else ''}".encode() for i, _ in enumerate(range(n))]


def _scored_text(rows, tok):
  """Per segment of the rows: the bytes of its scored targets (eos as b'$'), read from loss_mask alone."""
  out = []
  for r in range(len(rows["inputs"])):
    for s in range(1, int(rows["segment_ids"][r].max()) + 1):
      sel = (rows["segment_ids"][r] == s) & (rows["loss_mask"][r] > 0)
      out.append(b"".join(b"$" if t == tok.eos_id else tok.decode_bytes([t]) for t in rows["targets"][r][sel]))
  return out


def _check_completion_rows(rows, tok, docs, answers):
  """Every segment that starts its document scores exactly its answer's units (as far as the row holds them);
  a piece continuing a document from an earlier row sees none of its prompt and scores nothing."""
  starts = 0
  for r in range(len(rows["inputs"])):
    for sid in range(1, int(rows["segment_ids"][r].max()) + 1):
      seg = rows["segment_ids"][r] == sid
      mask = rows["loss_mask"][r][seg]
      if rows["inputs"][r][seg][0] != tok.bos_id:
        assert not mask.any()
        continue
      units = [b"$" if t == tok.eos_id else tok.decode_bytes([t]) for t in rows["targets"][r][seg]]
      i = next(i for i, d in enumerate(docs) if (d + b"$").startswith(b"".join(units)))
      scored = b"".join(u for u, m in zip(units, mask) if m)
      assert scored == b"".join(units)[len(docs[i]) + 1 - len(answers[i]):]
      starts += 1
  return starts


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_completion_only_scores_answers_in_training_and_eval(kind):
  docs = _qa_docs(200)
  tok = tokenizers.ByteTokenizer() if kind == "bytes" else tokenizers.build_tokenizer("bpe", docs, 300)
  splits = dict(train=docs[:160], val=docs[160:], test=[])
  data = pipeline.TokenData(splits, tok, seq_len=64, completion_after="=")
  # The answer: everything after the first '=', then eos; a BPE unit straddling the '=' is scored whole.
  ends = [np.cumsum(np.asarray(tok.unit_bytes())[np.asarray(tok.encode(d))]) for d in docs]
  expected = [d[int(e[e <= d.index(b"=") + 1].max(initial=0)):] + b"$" for d, e in zip(docs, ends)]
  assert _check_completion_rows(data.train_rows, tok, docs[:160], expected) == 160  # corpus order
  batch = next(data.train_iterator(8, seed=0))  # shuffled and packed as drawn
  assert _check_completion_rows(batch, tok, docs[:160], expected) >= 8
  batches = data.eval_batches("val", batch_size=4)
  assert sorted(t for b, _ in batches for t in _scored_text(b, tok)) == sorted(expected[160:])
  assert sum(n for _, n in batches) == sum(len(t) for t in expected[160:])  # scored bytes, the eos as one
  if kind == "bytes":
    assert all(t == d.partition(b"=")[2] + b"$" for d, t in zip(docs, expected))


def test_completion_only_marker_errors():
  docs = _qa_docs()
  with pytest.raises(DataError, match=r"completion_after='#' occurs in no train document") as e:
    pipeline.TokenData(dict(train=docs, val=[], test=[]), tokenizers.ByteTokenizer(), 16, completion_after="#")
  assert "\n" not in str(e.value)
  # A document without the marker is context only, eos included.
  data = pipeline.TokenData(dict(train=[b"no marker", b"q=a"], val=[], test=[]), tokenizers.ByteTokenizer(), 16,
                            completion_after="=")
  assert _scored_text(data.train_rows, data.tokenizer) == [b"", b"a$"]
  # Held-out text without the marker, or longer than a row: one line, not a silent 0 or a prompt-less score.
  with pytest.raises(DataError, match="occurs in none of the 1 held-out documents"):
    data.eval_batches("val", 2, docs=[b"no marker here"])
  with pytest.raises(DataError, match="a held-out document is 21 units, longer than data.seq_len=16"):
    data.eval_batches("val", 2, docs=[b"a long question=" + b"yes!"])
  with pytest.raises(DataError, match="a val document of '<memory>' is 21 units, longer than data.seq_len=16"):
    pipeline.TokenData(dict(train=[b"q=a"], val=[b"a long question=yes!"], test=[]), tokenizers.ByteTokenizer(), 16,
                       completion_after="=")
