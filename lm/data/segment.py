"""Lossless byte-level segmentation: sentences (concept family, eval segments) and words (byte-hierarchical).

Every function returns pieces whose concatenation is exactly the input, so no byte is ever lost or scored twice.
Whitespace means ASCII whitespace (` \\t\\n\\r\\f\\v`); other bytes, valid UTF-8 or not, are text.
`split_hat_words` (the HAT rule) alone is Unicode-aware: Unicode whitespace, letters, marks and ideographs.
"""

import functools
import re
import unicodedata

# A sentence ends after `.`, `!` or `?` (plus closing quotes/brackets) and the whitespace that follows, after
# a full-width `。` `！` `？` (whitespace optional: CJK text has none), or after a newline and the whitespace
# that follows it; the whitespace stays with the sentence it ends.
_SENTENCE_END = re.compile(rb"[.!?]+[\"')\]]*\s+|(?:\xe3\x80\x82|\xef\xbc\x81|\xef\xbc\x9f)+\s*|\n\s*")
_SPACE = re.compile(rb"\s")


def split_sentences(text: bytes) -> list[bytes]:
  """Splits `text` after sentence ends and newlines; `b"".join(result) == text`.

  The rule is self-delimiting for a sentence-level model: a sentence's own bytes say where it ends, so a
  decoder that emits an end-of-sentence event after each one describes the text exactly once."""
  pieces, start = [], 0
  for m in _SENTENCE_END.finditer(text):
    pieces.append(text[start : m.end()])
    start = m.end()
  if start < len(text):
    pieces.append(text[start:])
  return pieces


def _hard_cut(text: bytes, max_bytes: int) -> int:
  """Where to cut a too-long `text` (> max_bytes): after the last whitespace, else on a UTF-8 boundary."""
  window = text[: max_bytes + 1]
  spaces = [m.end() for m in _SPACE.finditer(window, 0, max_bytes)]
  if spaces:
    return spaces[-1]
  cut = max_bytes
  # Back off from UTF-8 continuation bytes (0b10xxxxxx) so a character is not split, if that leaves text.
  while cut > max(1, max_bytes - 3) and (text[cut] & 0xC0) == 0x80:
    cut -= 1
  return cut if (text[cut] & 0xC0) != 0x80 else max_bytes


def cut_segments(doc: bytes, max_bytes: int) -> list[bytes]:
  """Cuts `doc` into consecutive segments of <= max_bytes at sentence ends where possible (greedy)."""
  if max_bytes < 1:
    raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
  segments, current = [], b""
  for sentence in split_sentences(doc):
    if len(current) + len(sentence) <= max_bytes:
      current += sentence
      continue
    if current:
      segments.append(current)
    current = sentence
    while len(current) > max_bytes:
      cut = _hard_cut(current, max_bytes)
      segments.append(current[:cut])
      current = current[cut:]
  if current:
    segments.append(current)
  return segments


# --- HAT word splitting (Neitemeier et al. 2025, "Hierarchical Autoregressive Transformers") ---------------
# `split_hat_words`: Unicode-aware words that carry their LEADING whitespace and TRAILING punctuation.
# Bytes are decoded with `surrogateescape`, so each invalid UTF-8 byte becomes one lone surrogate
# (U+DC80..U+DCFF) and encoding the pieces back gives exactly the input bytes (PEP 383).

# Scripts written without spaces, where every character is its own word (UAX #29 breaks around ideographs):
# CJK unified ideographs (all extensions), compatibility ideographs and Hiragana. Katakana stays joined (WB13).
_ISOLATED_RANGES = ((0x3040, 0x309F), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))


def _char_class(ranges) -> str:
  return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def _ranges(codepoints) -> list[tuple[int, int]]:
  out = []
  for c in codepoints:
    if out and out[-1][1] == c - 1:
      out[-1] = (out[-1][0], c)
    else:
      out.append((c, c))
  return out


@functools.cache
def _hat_word_pattern() -> "re.Pattern[str]":
  """The word regex; its character classes are built once from `unicodedata` (under a second)."""
  isolated, extend, alnum = [], [], []
  for c in range(0x110000):
    if 0xD800 <= c <= 0xDFFF:
      if 0xDC80 <= c <= 0xDCFF:  # Escaped invalid bytes join words (mostly Latin-1 letters in the wild).
        alnum.append(c)
      continue
    cat = unicodedata.category(chr(c))
    if cat[0] == "L" and any(a <= c <= b for a, b in _ISOLATED_RANGES):
      isolated.append(c)
    elif cat[0] == "M" or cat == "Cf" or 0x1F3FB <= c <= 0x1F3FF:  # Marks, ZWJ/format, emoji skin tones.
      extend.append(c)
    elif cat[0] in "LN" or cat == "Pc":
      alnum.append(c)
  alnum = _char_class(_ranges(sorted(alnum + extend)))
  isolated, extend = _char_class(_ranges(isolated)), _char_class(_ranges(extend))
  a, i, e = f"[{alnum}]", f"[{isolated}]", f"[{extend}]"
  p = f"[^\\s{alnum}{isolated}]"  # Punctuation, symbols (emoji), controls, unassigned: everything else.
  # Letters/digits joined by one `.`/`'`/`’` ("don't", "e.g", "3.14") or by `,` between digits ("1,000").
  core = f"(?:{a}+(?:(?:[.'\u2019]|(?<=\\d),(?=\\d)){a}+)*|{i}{e}*)"
  punct = f"(?:{p}(?:{p}|{e})*)"
  return re.compile(f"\\s*(?:{punct}?{core}{punct}?|{punct})|\\s+")


def split_hat_words(data: bytes) -> list[bytes]:
  """HAT words: leading whitespace + word + trailing punctuation; `b"".join(result) == data` for any bytes.

  A word is `whitespace* (punct* core punct* | punct+)`, or trailing whitespace alone at the end. A core is a run
  of letters, digits, marks, `_` and invalid bytes (inner `.` `'` `’`, and `,` between digits, join), or one
  CJK ideograph / Hiragana character. A whole whitespace run (spaces, tabs, newlines) leads the next word.
  Punctuation after a word trails it; punctuation after whitespace leads the next core (` "Hi,` is one word).
  """
  text = data.decode("utf-8", errors="surrogateescape")
  words, pos = [], 0
  for m in _hat_word_pattern().finditer(text):
    if m.start() > pos:  # Unreachable (every character starts a match); kept so no byte can ever be dropped.
      words.append(text[pos : m.start()])
    words.append(m.group())
    pos = m.end()
  if pos < len(text):
    words.append(text[pos:])
  return [w.encode("utf-8", errors="surrogateescape") for w in words]


def chunk_words(words: list[bytes], max_bytes: int) -> list[bytes]:
  """Splits words longer than max_bytes into pieces of <= max_bytes, not inside a UTF-8 character if avoidable."""
  if max_bytes < 1:
    raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
  chunks = []
  for w in words:
    while len(w) > max_bytes:
      cut = max_bytes
      # Back off from continuation bytes (0b10xxxxxx) by at most 3, keeping a non-empty piece.
      while cut > max(1, max_bytes - 3) and (w[cut] & 0xC0) == 0x80:
        cut -= 1
      if (w[cut] & 0xC0) == 0x80:
        cut = max_bytes
      chunks.append(w[:cut])
      w = w[cut:]
    if w:
      chunks.append(w)
  return chunks
