"""Lossless byte-level segmentation: sentences (concept family, eval segments) and words (byte-hierarchical).

Every function returns pieces whose concatenation is exactly the input, so no byte is ever lost or scored twice.
Whitespace means ASCII whitespace (` \\t\\n\\r\\f\\v`); other bytes, valid UTF-8 or not, are text.
"""

import re

# A sentence ends after `.`, `!` or `?` (plus closing quotes/brackets) and the whitespace that follows, or
# after a newline and the whitespace that follows it; the whitespace stays with the sentence it ends.
_SENTENCE_END = re.compile(rb"[.!?]+[\"')\]]*\s+|\n\s*")
_WORD = re.compile(rb"\S+\s*|\s+")
_SPACE = re.compile(rb"\s")


def split_sentences(text: bytes) -> list[bytes]:
  """Splits `text` after sentence ends and newlines; `b"".join(result) == text`."""
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


def split_words(text: bytes, max_len: int) -> list[bytes]:
  """Words = a run of non-space bytes plus the whitespace after it; longer than max_len -> max_len pieces."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  words = []
  for m in _WORD.finditer(text):
    w = m.group()
    if len(w) <= max_len:
      words.append(w)
    else:
      words.extend(w[i : i + max_len] for i in range(0, len(w), max_len))
  return words
