"""Tests for lm/data/pipeline.py: packing against a slow reference, eval batches, the grain iterator."""

import json

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from lm.data import pipeline, segment, tokenizers
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
  assert set(rows) == set(pipeline.KEYS)
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
  rows = pipeline.pack_rows(token_docs, seq_len, BOS, EOS, PAD)
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
  rows = pipeline.pack_rows([np.array([5, 6]), np.array([7])], 4, BOS, EOS, PAD)
  np.testing.assert_array_equal(rows["inputs"], [[BOS, 5, 6, BOS], [7, PAD, PAD, PAD]])
  np.testing.assert_array_equal(rows["targets"], [[5, 6, EOS, 7], [EOS, PAD, PAD, PAD]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 2], [1, 0, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[1, 1, 1, 1], [1, 0, 0, 0]])


@hypothesis.given(st.lists(st.integers(0, 40), min_size=0, max_size=12), st.integers(1, 17))
@hypothesis.settings(max_examples=150, deadline=None, database=None)
def test_pack_eval_rows_never_splits_a_segment_that_fits(lengths, seq_len):
  token_segments = _token_docs(lengths, seed=1)
  rows = pipeline.pack_eval_rows(token_segments, seq_len, BOS, EOS, PAD)
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
    assert all((b1[k] == b2[k]).all() for k in pipeline.KEYS)
  resumed = data.train_iterator(batch_size=4, seed=7)
  resumed.set_state(state)
  for b1, b2 in zip(rest[:5], [next(resumed) for _ in range(5)]):
    assert all((b1[k] == b2[k]).all() for k in pipeline.KEYS)
  other = next(data.train_iterator(batch_size=4, seed=8))
  assert not (other["inputs"] == first[0]["inputs"]).all()
  # One epoch visits every row once.
  seen = np.concatenate([b["inputs"] for b in first + rest])[: (n_rows // 4) * 4]
  keys = {r.tobytes() for r in data.train_rows["inputs"]}
  assert len({r.tobytes() for r in seen}) == len(seen) and {r.tobytes() for r in seen} <= keys
  assert first[0]["inputs"].shape == (4, 32)


def test_train_iterator_process_shards_make_the_global_batch():
  data = _token_data()
  whole = data.train_iterator(batch_size=6, seed=3)
  shards = [data.train_iterator(batch_size=6, seed=3, process_index=p, process_count=3) for p in range(3)]
  for _ in range(4):
    want = next(whole)
    parts = [next(s) for s in shards]
    assert all(p["inputs"].shape == (2, 32) for p in parts)
    for k in pipeline.KEYS:
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
