"""The chunked families' data (`lm/families/chunked/data.py`): HAT words and sentences packed into [N, C, L] grids."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from lm.data import segment, tokenizers
from lm.families.chunked import data as chunks
from lm.data.tokenizers import ByteTokenizer
from lm.errors import DataError

# Bytes biased towards what the splitter cares about: spaces, newlines, punctuation, digits, multi-byte
# characters (accents, CJK, emoji with ZWJ), invalid UTF-8, plus arbitrary bytes.
_text = st.lists(
    st.one_of(
        st.sampled_from([b" ", b"  ", b"\n", b"\t", b".", b",", b"'", b"!", b'"', b"(", b"a", b"Bc", b"1", b"23",
                         "é".encode(), "e\u0301".encode(), "日本".encode(), "\U0001F468\u200d\U0001F469".encode(),
                         b"\xff", b"\xc3", b"\xe6\x97"]),
        st.binary(max_size=4),
    ),
    max_size=40,
).map(b"".join)


def _words(text: str) -> list[str]:
  return [w.decode() for w in segment.split_hat_words(text.encode())]


def test_split_hat_words_leading_space_trailing_punctuation():
  assert segment.split_hat_words(b"Hello, world! 12 ab") == [b"Hello,", b" world!", b" 12", b" ab"]
  assert _words('He said: "Hi!" (ok).') == ["He", " said:", ' "Hi!"', " (ok).", ]
  assert _words("a,b") == ["a,", "b"]


def test_split_hat_words_whitespace_runs_and_newlines_lead_the_next_word():
  assert _words("a  b\n\n  c\td") == ["a", "  b", "\n\n  c", "\td"]
  assert _words("  x  ") == ["  x", "  "]  # Trailing whitespace at the end is a word of its own.
  assert _words(" \n ") == [" \n "]
  assert segment.split_hat_words(b"") == []


def test_split_hat_words_digits_and_inner_joiners():
  assert _words("pi 3.14, 1,000 x2 don't e.g. foo_bar") == [
      "pi", " 3.14,", " 1,000", " x2", " don't", " e.g.", " foo_bar"]
  assert _words("12ab34") == ["12ab34"]


def test_split_hat_words_unicode():
  assert _words("café naïve e\u0301t\u00e9") == ["café", " naïve", " e\u0301t\u00e9"]  # Combining marks join.
  assert _words("日本語。 カタカナ") == ["日", "本", "語。", " カタカナ"]  # One word per ideograph.
  assert _words("Привет, мир") == ["Привет,", " мир"]
  family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
  assert _words(f"hi{family} ok \U0001F44D\U0001F3FD") == [f"hi{family}", " ok", " \U0001F44D\U0001F3FD"]


def test_split_hat_words_keeps_invalid_utf8():
  assert segment.split_hat_words(b"caf\xe9 \xff\xfe! x\xc3") == [b"caf\xe9", b" \xff\xfe!", b" x\xc3"]
  assert segment.split_hat_words(b"\xed\xa0\x80a") == [b"\xed\xa0\x80a"]  # An encoded surrogate is 3 bad bytes.


@hypothesis.given(st.one_of(_text, st.binary(max_size=64)), st.integers(1, 6))
@hypothesis.settings(max_examples=300, deadline=None, database=None)
def test_split_and_chunk_are_lossless_and_bounded(data, max_bytes):
  words = segment.split_hat_words(data)
  assert b"".join(words) == data
  assert all(words)
  chunks = segment.chunk_words(words, max_bytes)
  assert b"".join(chunks) == data
  assert all(0 < len(c) <= max_bytes for c in chunks)


def test_chunk_words_splits_long_words_on_character_boundaries():
  assert segment.chunk_words([b"ab", b" abcdefg", b"c"], 3) == [b"ab", b" ab", b"cde", b"fg", b"c"]
  chunks = segment.chunk_words(["ééé".encode()], 3)  # Two-byte characters: cut after 2 bytes, not 3.
  assert chunks == ["é".encode()] * 3
  assert segment.chunk_words([b"\x80\x80\x80\x80"], 2) == [b"\x80\x80", b"\x80\x80"]  # No boundary: hard cut.
  with pytest.raises(ValueError):
    segment.chunk_words([b"a"], 0)


def _doc_bytes(rows, n_docs_expected):
  """Rebuilds every document from the grid by following segment ids and doc_end flags in row order."""
  docs, current = [], b""
  N, C, _ = rows["units"].shape
  for n in range(N):
    for c in range(C):
      if not rows["chunk_mask"][n, c]:
        assert rows["segment_ids"][n, c] == 0 and not rows["unit_mask"][n, c].any() and not rows["doc_end"][n, c]
        assert (rows["units"][n, c] == chunks.BYTE_PAD).all()
        continue
      mask = rows["unit_mask"][n, c].astype(bool)
      assert mask.any() and mask[: mask.sum()].all()  # Units are left-aligned, at least one per chunk.
      assert (rows["units"][n, c][~mask] == chunks.BYTE_PAD).all()
      current += rows["units"][n, c][mask].astype(np.uint8).tobytes()
      if rows["doc_end"][n, c]:
        docs.append(current)
        current = b""
  assert current == b"" and len(docs) == n_docs_expected
  return docs


def test_pack_chunk_rows_shapes_masks_and_ids():
  docs = [b"Hello, world! 12 ab", b"", b"x\xff\xfe yyyyyyy"]
  rows = chunks.pack_chunk_rows(docs, num_chunks=4, chunk_len=3)
  assert set(rows) == set(chunks.CHUNK_KEYS)
  assert rows["units"].shape == rows["unit_mask"].shape == (3, 4, 3)
  for k in ("chunk_mask", "segment_ids", "positions", "doc_end"):
    assert rows[k].shape == (3, 4) and rows[k].dtype == np.int32
  # Chunks: Hel lo, ␣wo rld ! ␣12 ␣ab | x\xff\xfe ␣yy yyy yy (the empty document is dropped).
  np.testing.assert_array_equal(rows["chunk_mask"], [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 0]])
  np.testing.assert_array_equal(rows["doc_end"], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(rows["units"][1, 0], [ord("!"), 256, 256])
  np.testing.assert_array_equal(rows["unit_mask"][1, 0], [1, 0, 0])
  assert _doc_bytes(rows, 2) == [docs[0], docs[2]]


@hypothesis.given(st.lists(_text, max_size=6), st.integers(1, 5), st.integers(1, 6))
@hypothesis.settings(max_examples=100, deadline=None, database=None)
def test_pack_chunk_rows_round_trips(docs, num_chunks, chunk_len):
  rows = chunks.pack_chunk_rows(docs, num_chunks, chunk_len)
  kept = [d for d in docs if d]
  assert _doc_bytes(rows, len(kept)) == kept
  n_chunks = sum(len(segment.chunk_words(segment.split_hat_words(d), chunk_len)) for d in docs)
  assert rows["chunk_mask"].sum() == n_chunks and len(rows["units"]) == -(-n_chunks // num_chunks)
  assert rows["unit_mask"].sum() == sum(len(d) for d in docs)


def test_pack_chunk_rows_long_document_continues_in_next_row():
  doc = b" ".join([b"w%d" % i for i in range(10)]) + b" " + b"z" * 9 + "é".encode()
  rows = chunks.pack_chunk_rows([doc], num_chunks=4, chunk_len=4)
  assert len(rows["units"]) > 2
  assert (rows["positions"][:, 0] == 0).all()  # Positions restart in each row of a continued document.
  assert rows["doc_end"].sum() == 1
  assert _doc_bytes(rows, 1) == [doc]


def test_pack_chunk_rows_rejects_bad_sizes_and_handles_no_documents():
  with pytest.raises(DataError):
    chunks.pack_chunk_rows([b"a"], 0, 4)
  with pytest.raises(DataError):
    chunks.pack_chunk_rows([b"a"], 4, 0)
  rows = chunks.pack_chunk_rows([], 4, 3)
  assert rows["units"].shape == (0, 4, 3) and rows["chunk_mask"].shape == (0, 4)


# --- Sentence chunks (the concept family's) ---------------------------------------------------------------

TEXT = [b"The cat sat. It was warm!\nThen it left? Yes. " * 3, b"A dog barked.  Loudly and for a long while.",
        "Caf\u00e9 s\u00e4tze. \u4f60\u597d\u3002\u518d\u89c1\uff01 ok".encode()]


@pytest.fixture(scope="module")
def bpe():
  docs = [b"the cat sat on the mat. the dog sat on the log! " * 4, b"a bird flew over the tree. " * 5]
  return tokenizers.train_bpe(docs, 300)


@pytest.mark.parametrize("units", ["bytes", "bpe"])
def test_sentence_chunks_are_lossless_and_fit(units, bpe):
  tok = ByteTokenizer() if units == "bytes" else bpe
  for doc in TEXT:
    pieces = chunks.sentence_chunks(doc, 7, tok)
    assert b"".join(text for text, _ in pieces) == doc
    assert all(1 <= len(ids) <= 7 for _, ids in pieces)
    assert b"".join(tok.decode_bytes(ids) for _, ids in pieces) == doc
    # Chunks never straddle sentences: every sentence is the concatenation of consecutive chunks.
    ends = np.cumsum([len(t) for t, _ in pieces])
    assert set(np.cumsum([len(s) for s in segment.split_sentences(doc)])) <= set(ends)


def test_sentence_split_is_deterministic_on_cjk_and_newlines():
  assert segment.split_sentences("\u4f60\u597d\u3002\u518d\u89c1\uff01 ok".encode()) == [
      "\u4f60\u597d\u3002".encode(), "\u518d\u89c1\uff01 ".encode(), b"ok"]
  assert segment.split_sentences(b"a\n\nb. c") == [b"a\n\n", b"b. ", b"c"]


@pytest.mark.parametrize("units", ["bytes", "bpe"])
def test_eval_rows_score_every_unit_sentence_end_and_segment_end(units, bpe):
  tok = ByteTokenizer() if units == "bytes" else bpe
  data = chunks.ConceptData({"train": TEXT, "val": TEXT}, tok, num_chunks=4, chunk_len=8, eval_max_bytes=60)
  segments = data.eval_segments(TEXT)
  rows, bytes_per_row = data._eval_rows(segments, "val")
  eos, eow = tok.eos_id, tok.vocab_size
  n_pieces = sum(-(-len(chunks.sentence_chunks(s, 8, tok)) // 4) for s in segments)
  assert int(bytes_per_row.sum()) == sum(map(len, segments)) + n_pieces
  t, m = rows["targets"], rows["loss_mask"] > 0
  assert int((t[m] == eos).sum()) == n_pieces and int((t[m] == eow).sum()) == int(rows["chunk_mask"].sum()) - n_pieces
  text_units = t[m & (t != eos) & (t != eow)]
  assert tok.decode_bytes(text_units) == b"".join(segments)  # row-major order = text order
  assert data.sentences("val") == [c for s in segments for c, _ in chunks.sentence_chunks(s, 8, tok)]
