"""Regex to byte DFA to unit tables: the DFA accepts exactly what `re.fullmatch` accepts on valid UTF-8, the unit
tables agree with feeding bytes, budgets are exact, and unsupported or malformed patterns are one line."""

import collections
import itertools
import re

import numpy as np
import pytest

from lm.decoding.regex import (UNREACHABLE, RegexError, allowed_units, compile_regex, unit_transitions,
                               units_to_accept)

# Bytes worth enumerating: ASCII of every class, the halves of "é" (C3 A9) and "β" (CE B2), a stray FF.
ALPHABET = [b"a", b"b", b"c", b"1", b".", b" ", b"\n", b"-", b"]", b"\xc3", b"\xa9", b"\xce", b"\xb2", b"\xff"]
PATTERNS = [
    r"[0-9]+", r"a|bc*", r"(ab|a)*b?", r"b{2,3}c{,1}", r"\d+(\.\d+)?", r"[^a-c\n]*", r".?é.", r"[α-γb]+",
    r"(?:a|)+", r"^a.c$", r"\w+\s\W", r"[-a]|]", r"a|", r"(?P<n>b|c){2}a*?", r"[^\d\s]{1,2}", r"\D\S?",
    r"[\x61\u00e9\n]+b", r"a{2}|[.\]]{2,}", r"(a|b)*abb", r"(?#note)-\+?1", r"[\w.]+@?", r"é*[^é]",
    r"\N{GREEK SMALL LETTER BETA}{1,2}|\0", r"[β-ω]\.|.{3}", r"(a{0,2}b)*c", r"[\61-\63]+\056?",
]


def fullmatch(pattern: str, data: bytes) -> bool:
  try:
    text = data.decode()
  except UnicodeDecodeError:
    return False
  return re.fullmatch(pattern, text, re.ASCII) is not None


def random_walk(dfa, rng) -> bytes:
  """A string the DFA accepts, drawn by walking live edges and stopping at accepting states now and then."""
  state, out = 0, []
  while True:
    live_bytes = np.flatnonzero(dfa.transitions_Sx256[state] >= 0)
    if dfa.accepting_S[state] and (not len(live_bytes) or rng.random() < 0.2 or len(out) > 40):
      return bytes(out)
    out.append(int(rng.choice(live_bytes)))
    state = int(dfa.transitions_Sx256[state, out[-1]])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dfa_accepts_exactly_what_fullmatch_accepts(pattern):
  dfa = compile_regex(pattern)
  T = dfa.transitions_Sx256
  assert dfa.start == 0 and T.dtype == np.int32 and T.shape[1] == 256 and dfa.accepting_S.shape == (len(T),)
  for n in range(5):
    for parts in itertools.product(ALPHABET, repeat=n):
      s = b"".join(parts)
      assert dfa.matches(s) == fullmatch(pattern, s), s
  rng = np.random.default_rng(0)
  for _ in range(30):
    s = random_walk(dfa, rng)
    assert fullmatch(pattern, s), s
    s = bytes(rng.choice(np.frombuffer(b"".join(ALPHABET), np.uint8), rng.integers(5, 12)))
    assert dfa.matches(s) == fullmatch(pattern, s), s
  # Every kept state is live: some accepting state is reachable from it.
  assert (units_to_accept(dfa, T) < UNREACHABLE).all()


def test_any_char_is_valid_utf8_of_every_code_point():
  dot, negated, high = compile_regex("."), compile_regex("[^a]"), compile_regex(r"[\u00e9-\U00010400]")
  rng = np.random.default_rng(0)
  edges = [0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x103FF, 0x10400, 0x10401, 0x10FFFF]
  for cp in edges + list(range(0x100)) + rng.integers(0, 0x110000, 3000).tolist():
    if 0xD800 <= cp <= 0xDFFF:
      continue
    data = chr(cp).encode()
    assert dot.matches(data) == (cp != 10) and negated.matches(data) == (cp != 0x61), hex(cp)
    assert high.matches(data) == (0xE9 <= cp <= 0x10400), hex(cp)
  surrogate, overlongs = b"\xed\xa0\x80", [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xf0\x80\x80\x80"]
  for data in [surrogate, *overlongs, b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xa9"]:
    assert not compile_regex(".*").matches(data) and not compile_regex(r"\W*").matches(data), data


# A toy vocabulary with multi-byte units, a special unit (b"") and "é" split across two units.
UNITS = [b"a", b"ab", b"ba", b"1", b"12", b"", "é".encode(), b"\xc3", b"\xa9"]
UNIT_PATTERNS = [r"(ab|é)+12?", r"a*(é|1)b?a?", r"[^b]{2,}"]


def feed(dfa, state: int, data: bytes) -> int:
  for b in data:
    state = -1 if state < 0 else int(dfa.transitions_Sx256[state, b])
  return state


@pytest.mark.parametrize("pattern", UNIT_PATTERNS)
def test_unit_transitions_feed_each_units_bytes(pattern):
  dfa = compile_regex(pattern)
  table = unit_transitions(dfa, UNITS)
  assert table.dtype == np.int32 and table.shape == (len(dfa.accepting_S), len(UNITS))
  for s in range(len(table)):
    for v, unit in enumerate(UNITS):
      assert table[s, v] == (feed(dfa, s, unit) if unit else -1)
  split = table[table[0, UNITS.index(b"\xc3")], UNITS.index(b"\xa9")]
  assert split >= 0 and split == table[0, UNITS.index("é".encode())]


@pytest.mark.parametrize("pattern", UNIT_PATTERNS)
def test_units_to_accept_and_allowed_units_are_exact(pattern):
  dfa = compile_regex(pattern)
  table = unit_transitions(dfa, UNITS)
  to_accept = units_to_accept(dfa, table)
  for s in range(len(table)):  # forward breadth-first search from each state
    depth, frontier, seen = 0, {s}, {s}
    while frontier and not any(dfa.accepting_S[t] for t in frontier):
      frontier = {int(t) for t in table[list(frontier)].ravel() if t >= 0} - seen
      seen |= frontier
      depth += 1
    assert to_accept[s] == (depth if frontier else UNREACHABLE)
  # Budget: with N units in all, unit v is allowed after prefix P iff some sequence of at most N units that
  # starts with P + v matches in full (special units never appear).
  ids = [v for v, unit in enumerate(UNITS) if unit]
  for budget in range(1, 4):
    sequences = [seq for n in range(budget + 1) for seq in itertools.product(ids, repeat=n)]
    good_prefixes = {seq[:k] for seq in sequences if fullmatch(pattern, b"".join(UNITS[v] for v in seq))
                     for k in range(len(seq) + 1)}
    for prefix in (seq for seq in sequences if len(seq) < budget):
      state = 0
      for v in prefix:
        state = -1 if state < 0 else int(table[state, v])
      if state < 0:
        assert prefix not in good_prefixes
        continue
      allowed = allowed_units(dfa, table, to_accept, state, budget - len(prefix))
      assert allowed.dtype == bool and allowed.shape == (len(UNITS),)
      assert [bool(allowed[v]) for v in range(len(UNITS))] == [prefix + (v,) in good_prefixes for v in
                                                               range(len(UNITS))], prefix
      assert dfa.accepting_S[state] == (prefix in good_prefixes and fullmatch(
          pattern, b"".join(UNITS[v] for v in prefix)))


@pytest.mark.parametrize("pattern, message", [
    (r"(a)\1", r"backreference \\1 at position 3 is not supported"),
    (r"(?P<x>a)(?P=x)", r"backreference \(\?P=name\) at position 8"),
    (r"a(?=b)", r"lookahead at position 1 is not supported; write the pattern without \(\?=\.\.\.\)"),
    (r"a(?!b)", "negative lookahead at position 1"),
    (r"(?<=a)b", "lookbehind at position 0"),
    (r"(?<!a)b", "negative lookbehind at position 0"),
    (r"(?i)a", r"inline flags \(\?\.\.\.\) at position 0"),
    (r"(?>a)", "atomic group at position 0"),
    (r"\bfoo", r"\\b at position 0 is not supported"),
    (r"a\B", r"\\B at position 1"),
    (r"\Aa", r"\\A at position 0"),
    (r"a\Z", r"\\Z at position 1"),
    (r"a*+", "possessive quantifier at position 2"),
    (r"a^b", r"anchor \^ at position 1 is not supported"),
    (r"a$b", r"anchor \$ at position 1 is not supported"),
])
def test_unsupported_constructs_name_themselves(pattern, message):
  with pytest.raises(RegexError, match=message) as raised:
    compile_regex(pattern)
  assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
  assert str(raised.value).startswith(f"regex {pattern!r}: ")


@pytest.mark.parametrize("pattern, message", [
    (r"(a", "missing \\), unterminated subpattern at position 0"),
    (r"ab)c", "unbalanced parenthesis at position 2"),
    (r"[ab", "unterminated character set at position 0"),
    (r"[]", "unterminated character set at position 0"),
    (r"*a", "nothing to repeat at position 0"),
    (r"a|{2}", "nothing to repeat at position 2"),
    (r"a**", "multiple repeat at position 2"),
    (r"a*?+", "multiple repeat at position 3"),
    (r"[z-a]", "bad character range at position 1"),
    (r"[\d-z]", "bad character range at position 1"),
    (r"\q", r"bad escape \\q at position 0"),
    (r"\x4", r"bad escape \\x4 at position 0"),
    (r"a{3,2}", "min repeat greater than max repeat at position 1"),
])
def test_malformed_patterns_are_one_line_like_re(pattern, message):
  with pytest.raises(re.error):
    re.compile(pattern)
  with pytest.raises(RegexError, match=message):
    compile_regex(pattern)


@pytest.mark.parametrize("pattern", [r"[^\x00-\U0010FFFF]", r"a{0}b{0}[^\s\S]", r"\ud800", r"(a[^\w\W])*b[^\d\D]"])
def test_pattern_matching_nothing_is_an_error(pattern):
  with pytest.raises(RegexError, match="matches no string"):
    compile_regex(pattern)


def test_huge_repetition_is_too_large():
  with pytest.raises(RegexError, match="too large"):
    compile_regex(r"(abc){100000}")
  with pytest.raises(RegexError, match="too large"):
    compile_regex(r"[ab]*a[ab]{16}")  # 2**17 subsets


def test_braces_that_are_not_quantifiers_are_literals():
  for pattern, text in [(r"a{}", "a{}"), (r"a{x}", "a{x}"), (r"a{,}", "aaa"), (r"}{", "}{")]:
    assert re.fullmatch(pattern, text) and compile_regex(pattern).matches(text.encode())


def test_dfa_is_minimal():
  sizes = {r"(a|b)*abb": 4, r"a*": 1, r"a*?": 1, r"(a|aa)*": 1, r"[0-9]+": 2, r"x{300}": 301, r"x{0,300}": 301,
           r"é": 3, r"[αβ]|γ": 3, r".": 9}
  assert {p: len(compile_regex(p).accepting_S) for p in sizes} == sizes
  # Breadth-first numbering from 0 makes the tables deterministic.
  dfa = compile_regex(r"(a|b)*abb")
  np.testing.assert_array_equal(dfa.accepting_S, [False, False, False, True])
  assert collections.Counter(dfa.transitions_Sx256[:, ord("c")].tolist()) == {-1: 4}
