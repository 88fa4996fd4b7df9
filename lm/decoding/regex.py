"""Regular expressions compiled to a DFA over bytes and lifted to a tokenizer's units, for constrained generation.

`lm sample --method smc --regex PATTERN` keeps only continuations whose decoded UTF-8 text PATTERN matches in
full (`re.fullmatch`) within `max_new` units. Patterns are Python `re` syntax over str; matching is on the UTF-8
bytes of the text: a literal non-ASCII character is its byte sequence, and `.` (any code point but "\\n"),
negated classes and `\\D \\W \\S` (any code point outside the ASCII set, non-ASCII included) match valid UTF-8
encodings only (no surrogates, no overlongs), so invalid UTF-8 never matches. `\\d \\w \\s` have their ASCII
meaning (as with re.ASCII). `^` first and `$` last are accepted and ignored. Backreferences, lookaround, inline
flags, `\\b \\B \\A \\Z` and possessive quantifiers or atomic groups raise RegexError.

`compile_regex` gives the minimal DFA whose states all reach acceptance; `unit_transitions`, `units_to_accept`
and `allowed_units` give the per-state tables the sampler masks units with.
"""

import collections
import dataclasses
import re
import string
import unicodedata

import numpy as np

MAX_NFA_STATES = 100_000
MAX_DFA_STATES = 20_000  # before minimising; a [S, V] table of a 50k vocabulary is 4 GB at this size
UNREACHABLE = 2**30  # units_to_accept of a state that cannot reach acceptance

_MAX_CODE_POINT = 0x10FFFF
_DOT = [(0, 9), (11, _MAX_CODE_POINT)]
_CLASSES = {"d": [(48, 57)], "w": [(48, 57), (65, 90), (95, 95), (97, 122)], "s": [(9, 13), (32, 32)]}
_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "a": 7}
_BRACES = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_UNSUPPORTED_GROUPS = {"?P=": "backreference (?P=name)", "?=": "lookahead", "?!": "negative lookahead",
                       "?<=": "lookbehind", "?<!": "negative lookbehind", "?>": "atomic group",
                       "?(": "conditional group"}


class RegexError(ValueError):
  """A pattern is malformed, uses a construct a DFA cannot express, is too large, or matches no string."""


def _error(pattern: str, message: str) -> RegexError:
  return RegexError(f"regex {pattern!r}: {message}")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: numpy fields cannot be compared with ==
class ByteDFA:
  """A DFA over bytes whose states all reach acceptance; -1 is the dead state and `start` is 0."""
  transitions_Sx256: np.ndarray
  accepting_S: np.ndarray
  start: int = 0

  def matches(self, data: bytes) -> bool:
    """True iff `data` drives the DFA from `start` to an accepting state."""
    state = self.start
    for b in data:
      state = int(self.transitions_Sx256[state, b])
      if state < 0:
        return False
    return bool(self.accepting_S[state])


# ---------------------------------------------------------------------------------------------------------
# Code point sets: sorted lists of inclusive (lo, hi) ranges.

def _normalise(ranges):
  """The same code points as sorted, disjoint, non-adjacent ranges."""
  out = []
  for lo, hi in sorted(ranges):
    if out and lo <= out[-1][1] + 1:
      out[-1] = (out[-1][0], max(out[-1][1], hi))
    else:
      out.append((lo, hi))
  return out


def _complement(ranges):
  """The code points of [0, 0x10FFFF] outside `ranges`."""
  out, lo = [], 0
  for a, b in _normalise(ranges):
    if a > lo:
      out.append((lo, a - 1))
    lo = b + 1
  return out + [(lo, _MAX_CODE_POINT)] if lo <= _MAX_CODE_POINT else out


def _utf8_sequences(ranges):
  """Lists of byte ranges [(lo, hi), ...] whose products are exactly the UTF-8 encodings of `ranges`."""
  # Surrogates have no UTF-8 encoding: drop them.
  stack = [(lo, hi) for a, b in ranges for lo, hi in ((a, min(b, 0xD7FF)), (max(a, 0xE000), b)) if lo <= hi]
  out = []
  while stack:
    lo, hi = stack.pop()
    split = next((b for b in (0x7F, 0x7FF, 0xFFFF) if lo <= b < hi), None)  # one encoded length per range
    for i in (1, 2, 3) if split is None and hi > 0x7F else ():
      # Split until lo and hi agree above every 6-bit boundary they are not aligned to: then each byte's
      # range is independent of the others and the range is the product of per-byte ranges.
      m = (1 << 6 * i) - 1
      if lo & ~m != hi & ~m and (lo & m or hi & m != m):
        split = lo | m if lo & m else (hi & ~m) - 1
        break
    if split is None:
      out.append(list(zip(chr(lo).encode(), chr(hi).encode())))
    else:
      stack += [(lo, split), (split + 1, hi)]
  return out


# ---------------------------------------------------------------------------------------------------------
# Parsing: Python `re` syntax to ('set', ranges), ('cat', nodes), ('alt', nodes), ('rep', node, min, max|None).

class _Parser:
  """Recursive descent over a pattern; anchors and comments parse to None."""

  def __init__(self, pattern: str):
    self.p, self.i = pattern, 0

  def fail(self, what: str, pos: int, hint: str = "") -> RegexError:
    return _error(self.p, f"{what} at position {pos}" + (f" is not supported; {hint}" if hint else ""))

  def peek(self, k: int = 0) -> str:
    return self.p[self.i + k] if self.i + k < len(self.p) else ""

  def parse(self):
    node = self.alternation()
    if self.i < len(self.p):  # only a ')' ends an alternation early
      raise self.fail("unbalanced parenthesis", self.i)
    return node

  def alternation(self):
    branches = [self.sequence()]
    while self.peek() == "|":
      self.i += 1
      branches.append(self.sequence())
    return branches[0] if len(branches) == 1 else ("alt", branches)

  def sequence(self):
    items = []
    while self.peek() not in ("", "|", ")"):
      start = self.i
      node = self.atom()
      bounds = self.quantifier()
      if bounds:
        if node is None:
          raise self.fail("nothing to repeat", start)
        if self.peek() == "+":
          raise self.fail("possessive quantifier", self.i, "write the greedy quantifier")
        self.i += self.peek() == "?"  # lazy: fullmatch accepts the same strings
        if self.peek() == "+" or self.quantifier(advance=False):
          raise self.fail("multiple repeat", self.i)
        node = ("rep", node, *bounds)
      if node is not None:
        items.append(node)
    return ("cat", items)

  def quantifier(self, advance: bool = True):
    """(min, max or None) of a quantifier starting here (consumed if `advance`), else None."""
    c, end = self.peek(), self.i + 1
    bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c)
    if c == "{":
      m = _BRACES.match(self.p, self.i)
      if not m or m.group() == "{}":  # Python reads a brace that is not a quantifier as a literal
        return None
      lo, comma, hi = m.groups()
      bounds, end = (int(lo or 0), (int(hi) if hi else None) if comma else int(lo)), m.end()
      if bounds[1] is not None and bounds[0] > bounds[1]:
        raise self.fail("min repeat greater than max repeat", self.i)
    if bounds and advance:
      self.i = end
    return bounds

  def atom(self):
    c, start = self.peek(), self.i
    if c == "(":
      return self.group()
    if c == "[":
      return ("set", self.char_class())
    if c in ("^", "$"):
      if (c == "^" and start == 0) or (c == "$" and start == len(self.p) - 1):
        self.i += 1
        return None  # fullmatch anchors both ends already
      raise self.fail(f"anchor {c}", start, "^ is accepted only at the very start and $ only at the very end")
    if self.quantifier(advance=False):
      raise self.fail("nothing to repeat", start)
    if c == "\\":
      return ("set", self.escape(in_class=False))
    self.i += 1
    return ("set", _DOT if c == "." else [(ord(c), ord(c))])

  def group(self):
    start = self.i
    self.i += 1
    rest = self.p[self.i:]
    if rest.startswith("?:"):
      self.i += 2
    elif rest.startswith("?P<"):
      end = self.p.find(">", self.i)
      if end < 0:
        raise self.fail("missing >, unterminated name", self.i + 3)
      self.i = end + 1
    elif rest.startswith("?#"):
      end = self.p.find(")", self.i)
      if end < 0:
        raise self.fail("missing ), unterminated comment", start)
      self.i = end + 1
      return None
    elif rest.startswith("?"):
      for prefix, what in _UNSUPPORTED_GROUPS.items():
        if rest.startswith(prefix):
          raise self.fail(what, start, f"write the pattern without ({prefix}...)")
      if rest[1:2] and rest[1] in "aiLmsux-":
        raise self.fail("inline flags (?...)", start, "write the pattern without them, e.g. [aA] for (?i)a")
      raise self.fail(f"unknown extension {rest[:2]!r}", start)
    node = self.alternation()
    if self.peek() != ")":
      raise self.fail("missing ), unterminated subpattern", start)
    self.i += 1
    return node

  def char_class(self):
    """The code point ranges of the class at self.i (a '['), consumed."""
    start = self.i
    self.i += 1
    negate = self.peek() == "^"
    self.i += negate
    ranges = []
    while True:
      c, pos = self.peek(), self.i
      if not c:
        raise self.fail("unterminated character set", start)
      if c == "]" and pos > start + 1 + negate:  # a ']' first is a literal
        self.i += 1
        return _complement(ranges) if negate else _normalise(ranges)
      item = self.class_item()
      if self.peek() == "-" and self.peek(1) not in ("", "]"):
        self.i += 1
        hi = self.class_item()
        # Class escapes (\d...) never hold a single code point, so this rejects them as range ends.
        if len(item) != 1 or len(hi) != 1 or item[0][0] != item[0][1] or hi[0][0] != hi[0][1] \
            or item[0][0] > hi[0][0]:
          raise self.fail("bad character range", pos)
        item = [(item[0][0], hi[0][0])]
      ranges += item

  def class_item(self):
    if self.peek() == "\\":
      return self.escape(in_class=True)
    self.i += 1
    return [(ord(self.p[self.i - 1]),) * 2]

  def escape(self, in_class: bool):
    """The code point ranges of the escape at self.i (a backslash), consumed."""
    start, c = self.i, self.peek(1)
    self.i += 2
    if not c:
      raise self.fail("bad escape (end of pattern)", start)
    if c in "dDwWsS":
      return _complement(_CLASSES[c.lower()]) if c.isupper() else _CLASSES[c]
    if c in _SIMPLE_ESCAPES or (c == "b" and in_class):
      return [(_SIMPLE_ESCAPES.get(c, 8),) * 2]
    if c in "xuU":
      width = {"x": 2, "u": 4, "U": 8}[c]
      digits = self.p[self.i:self.i + width]
      if not re.fullmatch(f"[0-9a-fA-F]{{{width}}}", digits) or int(digits, 16) > _MAX_CODE_POINT:
        raise self.fail(f"bad escape \\{c}{digits}", start)
      self.i += width
      return [(int(digits, 16),) * 2]
    if c == "N":
      end = self.p.find("}", self.i)
      if self.peek() != "{" or end < 0:
        raise self.fail("missing {name} after \\N", start)
      name, self.i = self.p[self.i + 1:end], end + 1
      try:
        return [(ord(unicodedata.lookup(name)),) * 2]
      except (KeyError, TypeError):
        raise self.fail(f"undefined character name {name!r}", start) from None
    # Python: in a class any octal digit starts an octal escape; outside, \0 does and \1-\7 only with two more
    # octal digits (else it is a backreference).
    octal = re.compile(r"[0-7]{1,3}" if in_class else r"0[0-7]{0,2}|[1-7][0-7]{2}").match(self.p, start + 1)
    if octal:
      self.i = octal.end()
      if int(octal.group(), 8) > 0o377:
        raise self.fail("octal escape value outside of range 0-0o377", start)
      return [(int(octal.group(), 8),) * 2]
    if c in string.digits and not in_class:
      raise self.fail(f"backreference \\{c}", start, "backreferences are not regular; write the pattern out")
    if c in "bBAZ" and not in_class:
      raise self.fail(f"\\{c}", start, "write the pattern without it (the whole text must match anyway)")
    if c in string.ascii_letters + string.digits:
      raise self.fail(f"bad escape \\{c}", start)
    return [(ord(c), ord(c))]  # escaped punctuation (or any non-ASCII character) is itself


# ---------------------------------------------------------------------------------------------------------
# Automata.

class _NFA:
  """Thompson NFA with epsilon edges and byte-range edges (lo, hi, target)."""

  def __init__(self, pattern: str):
    self.pattern, self.eps, self.edges = pattern, [], []

  def state(self) -> int:
    if len(self.eps) >= MAX_NFA_STATES:
      raise _error(self.pattern, f"too large: over {MAX_NFA_STATES} NFA states; use smaller repetition counts")
    self.eps.append([])
    self.edges.append([])
    return len(self.eps) - 1

  def build(self, node):
    """(start, end) states of a fragment for `node`; fresh states for every call, as counted repetition needs."""
    kind, s = node[0], self.state()
    e = s
    if kind == "set":
      e = self.state()
      for sequence in _utf8_sequences(node[1]):
        here = s
        for k, (lo, hi) in enumerate(sequence):
          there = e if k == len(sequence) - 1 else self.state()
          self.edges[here].append((lo, hi, there))
          here = there
    elif kind == "cat":
      for child in node[1]:
        cs, ce = self.build(child)
        self.eps[e].append(cs)
        e = ce
    elif kind == "alt":
      e = self.state()
      for child in node[1]:
        cs, ce = self.build(child)
        self.eps[s].append(cs)
        self.eps[ce].append(e)
    else:
      _, child, lo, hi = node
      for _ in range(lo):
        cs, ce = self.build(child)
        self.eps[e].append(cs)
        e = ce
      end = self.state()
      if hi is None:  # Thompson's star, entered from `e`
        cs, ce = self.build(child)
        self.eps[e] += [cs, end]
        self.eps[ce] += [cs, end]
      else:  # optional copies, each able to jump straight to `end` (keeps closures small)
        for _ in range(hi - lo):
          cs, ce = self.build(child)
          self.eps[e] += [end, cs]
          e = ce
        self.eps[e].append(end)
      e = end
    return s, e


def _determinise(nfa: _NFA, start: int, accept: int):
  """Subset construction: transitions [S, 256] (-1 where no NFA state survives) and accepting [S]."""
  index, subsets, rows = {}, [], []

  def state_of(core) -> int:
    closure, stack = set(core), list(core)
    while stack:
      for t in nfa.eps[stack.pop()]:
        if t not in closure:
          closure.add(t)
          stack.append(t)
    key = frozenset(closure)
    if key not in index:
      if len(index) >= MAX_DFA_STATES:
        raise _error(nfa.pattern, f"too large: over {MAX_DFA_STATES} DFA states")
      index[key] = len(subsets)
      subsets.append(key)
    return index[key]

  state_of([start])
  for subset in subsets:  # grows as new subsets are found
    targets = collections.defaultdict(set)
    for s in subset:
      for lo, hi, t in nfa.edges[s]:
        for b in range(lo, hi + 1):
          targets[b].add(t)
    row, known = np.full(256, -1, np.int32), {}
    for b, ts in targets.items():
      key = frozenset(ts)
      if key not in known:
        known[key] = state_of(key)
      row[b] = known[key]
    rows.append(row)
  return np.stack(rows), np.array([accept in s for s in subsets])


def _steps_to_accept(table_SxK: np.ndarray, accepting_S: np.ndarray) -> np.ndarray:
  """int32 [S]: the fewest edges (through any column) from s to an accepting state, UNREACHABLE if none."""
  S = len(table_SxK)
  src, col = np.nonzero(table_SxK >= 0)
  preds = [[] for _ in range(S)]
  for code in np.unique(table_SxK[src, col].astype(np.int64) * S + src).tolist():  # distinct edges t <- s
    preds[code // S].append(code % S)
  steps_S = np.where(accepting_S, 0, UNREACHABLE).astype(np.int32)
  queue = collections.deque(np.flatnonzero(accepting_S).tolist())
  while queue:  # breadth-first backwards from every accepting state at once
    t = queue.popleft()
    for s in preds[t]:
      if steps_S[s] == UNREACHABLE:
        steps_S[s] = steps_S[t] + 1
        queue.append(s)
  return steps_S


def _trim(T_Sx256: np.ndarray, accepting_S: np.ndarray, pattern: str):
  """Drops the states that cannot reach acceptance, renumbering the rest in order (start stays 0)."""
  live_S = _steps_to_accept(T_Sx256, accepting_S) < UNREACHABLE
  if not live_S[0]:
    raise _error(pattern, "matches no string")
  remap = np.full(len(T_Sx256) + 1, -1, np.int32)  # remap[-1] = -1 keeps dead edges dead
  remap[np.flatnonzero(live_S)] = np.arange(live_S.sum())
  return remap[T_Sx256[live_S]], accepting_S[live_S]


def _minimise(T_Sx256: np.ndarray, accepting_S: np.ndarray):
  """Hopcroft partition refinement: the equivalent DFA with fewest states, numbered breadth-first from 0."""
  S = len(T_Sx256)
  full = np.vstack([np.where(T_Sx256 < 0, S, T_Sx256), np.full((1, 256), S)])  # state S: the dead state
  # Bytes whose columns are equal split states alike: refine over one column per class of such bytes.
  inverse = []
  for column in np.unique(full.T, axis=0):
    pre = collections.defaultdict(list)
    for s, t in enumerate(column.tolist()):
      pre[t].append(s)
    inverse.append(pre)
  block_of = [0 if s < S and accepting_S[s] else 1 for s in range(S + 1)]
  blocks = [{s for s in range(S + 1) if block_of[s] == b} for b in (0, 1)]
  work = [0, 1]
  while work:
    splitter = list(blocks[work.pop()])
    for pre in inverse:
      touched = collections.defaultdict(set)
      for q in splitter:
        for p in pre.get(q, ()):
          touched[block_of[p]].add(p)
      for b, inside in touched.items():
        if len(inside) < len(blocks[b]):
          rest = blocks[b] - inside
          small, blocks[b] = (inside, rest) if len(inside) <= len(rest) else (rest, inside)
          # The smaller half joins the work list; if `b` was already there it stays there too.
          blocks.append(small)
          work.append(len(blocks) - 1)
          for p in small:
            block_of[p] = len(blocks) - 1
  block_of = np.array(block_of)
  dead, order, new_id = block_of[S], [block_of[0]], {block_of[0]: 0}
  for b in order:  # breadth-first over blocks; grows as it goes
    for t in block_of[full[min(blocks[b])]].tolist():
      if t != dead and t not in new_id:
        new_id[t] = len(order)
        order.append(t)
  ids = np.full(len(blocks), -1, np.int32)
  ids[list(new_id)] = list(new_id.values())
  reps = np.array([min(blocks[b]) for b in order])
  return ids[block_of[full[reps]]], accepting_S[reps]


def compile_regex(pattern: str) -> ByteDFA:
  """The minimal DFA over UTF-8 bytes accepting exactly the texts that `pattern` matches in full."""
  try:
    tree = _Parser(pattern).parse()
    nfa = _NFA(pattern)
    start, accept = nfa.build(tree)
  except RecursionError:
    raise _error(pattern, "too deeply nested") from None
  T_Sx256, accepting_S = _minimise(*_trim(*_determinise(nfa, start, accept), pattern))
  return ByteDFA(T_Sx256.astype(np.int32), accepting_S.astype(bool), 0)


# ---------------------------------------------------------------------------------------------------------
# Lifting to units (tokens): the tables the sampler masks with.

def unit_transitions(dfa: ByteDFA, unit_bytes: list[bytes]) -> np.ndarray:
  """int32 [S, V]: the state after feeding unit v's bytes from state s; -1 if it dies or the unit is b""."""
  S, V = len(dfa.transitions_Sx256), len(unit_bytes)
  table_Sp1x256 = np.vstack([dfa.transitions_Sx256, np.full((1, 256), -1, np.int32)])  # row -1: dead stays
  lengths_V = np.array([len(u) for u in unit_bytes], np.int64)
  bytes_VxL = np.zeros((V, int(lengths_V.max(initial=0))), np.uint8)
  for v, u in enumerate(unit_bytes):
    bytes_VxL[v, :len(u)] = np.frombuffer(u, np.uint8)
  state_SxV = np.repeat(np.arange(S, dtype=np.int32)[:, None], V, axis=1)
  for k in range(bytes_VxL.shape[1]):  # only the units still being fed: work is S times the total length
    units = np.flatnonzero(lengths_V > k)
    state_SxV[:, units] = table_Sp1x256[state_SxV[:, units], bytes_VxL[units, k][None, :]]
  state_SxV[:, lengths_V == 0] = -1
  return state_SxV


def units_to_accept(dfa: ByteDFA, table_SxV: np.ndarray) -> np.ndarray:
  """int32 [S]: the fewest units from s to an accepting state (0 if s accepts), UNREACHABLE if none."""
  return _steps_to_accept(table_SxV, dfa.accepting_S)


def allowed_units(dfa: ByteDFA, table_SxV: np.ndarray, to_accept_S: np.ndarray, state: int,
                  units_left: int) -> np.ndarray:
  """bool [V]: the units after which, from `state`, acceptance stays reachable within `units_left` (v included)."""
  next_V = table_SxV[state]
  return (next_V >= 0) & (to_accept_S[np.maximum(next_V, 0)] <= units_left - 1)
