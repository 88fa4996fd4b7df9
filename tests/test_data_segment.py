"""Tests for lm/data/segment.py: lossless sentence, segment and word splitting."""

import hypothesis
from hypothesis import strategies as st

from lm.data import segment

# Bytes biased towards the ones the splitters care about, plus anything else (non-UTF-8 included).
_text = st.lists(
    st.one_of(
        st.sampled_from([b".", b"!", b"?", b" ", b"\n", b"\t", b'"', b"a", b"bc", "é".encode()]),
        st.binary(max_size=3),
    ),
    max_size=60,
).map(b"".join)


def test_split_sentences_at_sentence_ends_and_newlines():
  text = b'Hello there. How are you?  Fine!\nNext line\n\nNew para "quoted." ok'
  assert segment.split_sentences(text) == [
      b"Hello there. ",
      b"How are you?  ",
      b"Fine!\n",
      b"Next line\n\n",
      b'New para "quoted." ',
      b"ok",
  ]


def test_split_sentences_keeps_decimal_points_and_empty_input():
  assert segment.split_sentences(b"pi is 3.14 today") == [b"pi is 3.14 today"]
  assert segment.split_sentences(b"") == []


@hypothesis.given(_text)
@hypothesis.settings(max_examples=200, deadline=None, database=None)
def test_split_sentences_is_lossless(text):
  pieces = segment.split_sentences(text)
  assert b"".join(pieces) == text
  assert all(pieces)


def test_cut_segments_prefers_sentence_ends():
  doc = b"One two. Three four five. Six.\nSeven eight nine ten eleven twelve."
  segs = segment.cut_segments(doc, max_bytes=30)
  assert b"".join(segs) == doc
  assert segs[:2] == [b"One two. Three four five. ", b"Six.\n"]
  assert all(len(s) <= 30 for s in segs)


def test_cut_segments_hard_cuts_long_sentences_without_splitting_characters():
  doc = "ééééé".encode() * 4  # 40 bytes of two-byte characters, no spaces.
  segs = segment.cut_segments(doc, max_bytes=7)
  assert b"".join(segs) == doc
  assert all(len(s) <= 7 for s in segs)
  for s in segs:
    s.decode("utf-8")  # Every piece is whole characters.


@hypothesis.given(_text, st.integers(1, 20))
@hypothesis.settings(max_examples=200, deadline=None, database=None)
def test_cut_segments_is_lossless_and_bounded(doc, max_bytes):
  segs = segment.cut_segments(doc, max_bytes)
  assert b"".join(segs) == doc
  assert all(0 < len(s) <= max_bytes for s in segs)
