"""Synthetic corpora for probing what an objective teaches: star-graph path-finding, name induction, and
arithmetic with answers (`A+B=C`: prompts and answers for sequence-level training, `prompt_answer`).

A data source `synthetic:NAME[:KEY=VALUE]...` generates documents in memory, deterministically from its seed.
Options are joined by colons (commas already join sources, and a colon needs no shell quoting):
  synthetic:star:degree=2:path_len=5:num_nodes=50:n=20000:seed=0
  synthetic:induction:n=5000:seed=0:characters=2:min_len=4:max_len=7
  synthetic:arith:n=20000:seed=0:digits=2:ops=2:split=pretrain
Every key is optional (the defaults are those above, split `all`) and every value but split's is an integer.

Splits by content (star and arith): a keyed hash of each problem's content (`problem_key`: an arithmetic
problem with the operands of + and * in order, a star graph as its edge set, start and goal) puts every
distinct problem in one of `SPLITS`: pretrain, rl (RL training prompts), dev (choices such as a learning
rate) or test (what is reported). `split=NAME` keeps only the draws whose problem is in NAME, so sources of
different splits never share a problem, whatever their seeds and sizes; dev and test never repeat one.
`split=all` (the default) keeps every draw.

Star graphs (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction"): a center with `degree`
arms, each a path of `path_len` further nodes; labels are distinct random integers below `num_nodes`, written
zero-padded to one width so every prompt of a configuration has the same length, or with `letters=1` as one
character each (0-9, A-Z, a-z: up to 62 nodes), so a node is one byte as it is one token in the paper. A
document is
  EDGES|START>GOAL=PATH     e.g. (degree 2, path_len 2)  07>31,42>18,07>42,31>25|07>25=07,31,25
EDGES are the directed edges `u>v` (pointing away from the center) in random order, START is the center,
GOAL the leaf of one arm, and PATH the path_len + 1 nodes from START to GOAL. The prompt is everything up to
and including `=`; guessing an arm is right with chance 1 / degree.

Name induction (Gloeckle et al. 2024, "Better & faster LLMs via multi-token prediction", section 4.1):
short template stories whose characters have invented names of random letters (`Zorvik`), each appearing at
least twice, with distinct first letters within a story. After a name's first letter, its later occurrences
can only be completed by copying from earlier in the story (induction).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import string
from typing import Callable

from lm.data.sources import register_format
from lm.errors import DataError

PREFIX = "synthetic:"


# ---------------------------------------------------------------------------------------------------------
# Star graphs.

LETTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase  # one-character node labels


def _label(v: int, num_nodes: int, letters: int) -> str:
  return LETTERS[v] if letters else f"{v:0{len(str(num_nodes - 1))}d}"


def star_node(text: str) -> int:
  """A label back to its node: decimal (any width), or one character of LETTERS (the digits agree)."""
  return int(text) if text.isdigit() else LETTERS.index(text) if len(text) == 1 and text in LETTERS else int(text)


def _check_star(degree: int, path_len: int, num_nodes: int, letters: int = 0) -> None:
  if degree < 1 or path_len < 1:
    raise DataError(f"synthetic:star: degree={degree} and path_len={path_len} must be >= 1")
  if letters not in (0, 1) or (letters and num_nodes > len(LETTERS)):
    raise DataError(f"synthetic:star: letters={letters} with num_nodes={num_nodes}: letters is 0 or 1, and 1 (one "
                    f"character per node) allows at most {len(LETTERS)} nodes; lower num_nodes or set letters=0")
  need = degree * path_len + 1
  if num_nodes < need:
    raise DataError(f"synthetic:star: num_nodes={num_nodes} is fewer than the {need} nodes of a star with "
                    f"degree={degree} and path_len={path_len}; raise num_nodes")


def star_graph(rng: random.Random, degree: int, path_len: int, num_nodes: int) -> tuple[list, int, int, list]:
  """(edges in document order, start, goal, answer path) of one random star graph."""
  nodes = rng.sample(range(num_nodes), degree * path_len + 1)
  center, arms = nodes[0], [nodes[1 + a * path_len : 1 + (a + 1) * path_len] for a in range(degree)]
  edges = [(u, v) for arm in arms for u, v in zip([center] + arm[:-1], arm)]
  rng.shuffle(edges)
  arm = arms[rng.randrange(degree)]
  return edges, center, arm[-1], [center] + arm


def format_star(edges, start: int, goal: int, path, num_nodes: int, letters: int = 0, reverse: int = 0) -> bytes:
  """`EDGES|START>GOAL=PATH`; `reverse`: the path written from the goal back to the start, each node the parent
  of the one before (one edge lookup a step, which next-token training learns: Bachmann & Nagarajan's control)."""
  def label(v):
    return _label(v, num_nodes, letters)
  text = ",".join(f"{label(u)}>{label(v)}" for u, v in edges)
  text += f"|{label(start)}>{label(goal)}=" + ",".join(label(v) for v in (path[::-1] if reverse else path))
  return text.encode("ascii")


def star_graph_documents(n: int, degree: int = 2, path_len: int = 5, num_nodes: int = 50,
                         seed: int = 0, letters: int = 0, split: str = "all", reverse: int = 0) -> list[bytes]:
  """`n` star-graph documents of `split`; the first k are the same for any n >= k (and the same graphs with
  `reverse`, their paths written goal first)."""
  _check_star(degree, path_len, num_nodes, letters)
  if reverse not in (0, 1):
    raise DataError(f"synthetic:star: reverse={reverse}: 0 (start to goal) or 1 (goal back to start)")
  rng = random.Random(f"star-{seed}")
  return _draw(lambda: format_star(*star_graph(rng, degree, path_len, num_nodes), num_nodes, letters, reverse), n,
               split, "synthetic:star")


def split_star(doc: bytes) -> tuple[bytes, bytes]:
  """A star document -> (prompt up to and including '=', answer path)."""
  prompt, sep, answer = doc.partition(b"=")
  if not sep:
    raise DataError(f"not a star-graph document (no '='): {doc[:60]!r}")
  return prompt + sep, answer


def parse_star(doc: bytes) -> tuple[list[tuple[int, int]], int, int, list[int]]:
  """A star document (or a prompt, with an empty path) -> (edges, start, goal, path)."""
  prompt, answer = split_star(doc)
  edge_text, _, query = prompt[:-1].decode("ascii").partition("|")
  edges = [tuple(star_node(x) for x in e.split(">")) for e in edge_text.split(",")]
  start, goal = (star_node(x) for x in query.split(">"))
  return edges, start, goal, [star_node(x) for x in answer.decode("ascii").split(",")] if answer else []


def is_path_to_leaf(path: list[int], edges, start: int, length: int) -> bool:
  """True when `path` starts at `start`, follows edges, has `length` nodes and ends at a leaf."""
  children = {}
  for u, v in edges:
    children.setdefault(u, []).append(v)
  return (len(path) == length and path[0] == start and not children.get(path[-1])
          and all(v in children.get(u, ()) for u, v in zip(path, path[1:])))


# ---------------------------------------------------------------------------------------------------------
# Name-substituted stories.

_KINDS = ("girl", "boy", "dog", "cat", "bird", "rabbit", "bear", "fox", "frog", "mouse")
_PLACES = ("park", "forest", "garden", "beach", "river", "farm", "school", "hill", "lake", "town")
_THINGS = ("ball", "kite", "box", "hat", "book", "cake", "flower", "boat", "drum", "shell")
_COLORS = ("red", "blue", "green", "yellow", "big", "small", "shiny", "soft", "old", "new")
_FEELINGS = ("happy", "sad", "tired", "excited", "scared", "proud", "hungry", "curious")
_OPENINGS = (
    "Once upon a time, there was a {kind} named {A}.",
    "One day, a little {kind} called {A} went to the {place}.",
    "There once was a {color} {kind} whose name was {A}.",
)
_MEETINGS = (
    "{X} met a {kind} named {N}.",
    "At the {place}, {X} saw a {kind} called {N}.",
    "Soon a {kind} named {N} came to play with {X}.",
)
_MIDDLES = (
    "{X} liked to play with a {color} {thing}.",
    "{X} and {Y} went to the {place} together.",
    "{X} gave {Y} a {color} {thing}.",
    "\"Look at my {thing}!\" said {X}.",
    "{X} was very {feeling} that day.",
    "{Y} asked {X} to share the {thing}.",
    "{X} found a {color} {thing} near the {place}.",
    "\"I love the {place},\" {X} told {Y}.",
)
_ENDINGS = (
    "At the end of the day, {X} and {Y} were {feeling}.",
    "{X} said goodbye to {Y} and went home.",
    "From then on, {X} and {Y} were best friends.",
)
_TEMPLATE_WORDS = frozenset(w.lower() for t in (_KINDS, _PLACES, _THINGS, _COLORS, _FEELINGS, _OPENINGS,
                                                _MEETINGS, _MIDDLES, _ENDINGS)
                            for s in t for w in re.findall(r"[A-Za-z]+", s))


def _check_induction(characters: int, min_len: int, max_len: int) -> None:
  if not 1 <= characters <= 26:
    raise DataError(f"synthetic:induction: characters={characters} must be between 1 and 26")
  if not 2 <= min_len <= max_len:
    raise DataError(f"synthetic:induction: need 2 <= min_len <= max_len, got min_len={min_len}, "
                    f"max_len={max_len}")


def _names(rng: random.Random, k: int, min_len: int, max_len: int) -> list[str]:
  """k random-letter names with distinct first letters, none a word of the templates."""
  firsts = rng.sample(string.ascii_uppercase, k)
  names = []
  for first in firsts:
    while True:
      name = first + "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len) - 1))
      if name.lower() not in _TEMPLATE_WORDS:
        break
    names.append(name)
  return names


def induction_story(rng: random.Random, characters: int = 2, min_len: int = 4,
                    max_len: int = 7) -> tuple[bytes, list[str]]:
  """One story and its character names (each used at least twice)."""
  names = _names(rng, characters, min_len, max_len)

  def fill(template: str, **slots) -> str:
    words = dict(kind=rng.choice(_KINDS), place=rng.choice(_PLACES), thing=rng.choice(_THINGS),
                 color=rng.choice(_COLORS), feeling=rng.choice(_FEELINGS))
    if len(names) > 1:
      x, y = rng.sample(names, 2)
    else:
      x = y = names[0]
    words.update(X=x, Y=y)
    words.update(slots)
    return template.format(**words)

  sentences = [fill(rng.choice(_OPENINGS), A=names[0])]
  for i, name in enumerate(names[1:], 1):
    sentences.append(fill(rng.choice(_MEETINGS), X=rng.choice(names[:i]), N=name))
  two = tuple(t for t in _MIDDLES if "{Y}" not in t) if len(names) == 1 else _MIDDLES
  sentences += [fill(rng.choice(two)) for _ in range(rng.randint(2, 4))]
  if len(names) > 1:
    sentences.append(fill(rng.choice(_ENDINGS)))
  text = " ".join(sentences)
  for name in names:  # every name must recur: a later occurrence is what the probe scores
    if len(re.findall(rf"\b{name}\b", text)) < 2:
      text += f" {name} smiled."
  return text.encode("ascii"), names


def induction_examples(n: int, seed: int = 0, characters: int = 2, min_len: int = 4,
                       max_len: int = 7) -> list[tuple[bytes, list[str]]]:
  """`n` (story, names) pairs; the first k are the same for any n >= k."""
  _check_induction(characters, min_len, max_len)
  rng = random.Random(f"induction-{seed}")
  return [induction_story(rng, characters, min_len, max_len) for _ in range(n)]


def induction_documents(n: int, seed: int = 0, characters: int = 2, min_len: int = 4,
                        max_len: int = 7) -> list[bytes]:
  return [doc for doc, _ in induction_examples(n, seed, characters, min_len, max_len)]


def name_spans(doc: bytes, names: list[str]) -> list[tuple[int, int, int]]:
  """(start, end, occurrence) byte spans of every whole-word occurrence of each name, in document order;
  occurrence counts from 0 per name."""
  spans = []
  for name in names:
    for i, m in enumerate(re.finditer(rb"\b" + re.escape(name.encode()) + rb"\b", doc)):
      spans.append((m.start(), m.end(), i))
  return sorted(spans)


# ---------------------------------------------------------------------------------------------------------
# Arithmetic with an answer: a verifiable task for sequence-level training.

ARITH_OPS = "+-*"


def arith_problem(rng: random.Random, digits: int, ops: str) -> tuple[str, str]:
  """(prompt `A+B=`, answer) with operands of up to `digits` digits; subtraction never goes below zero."""
  a, b = (rng.randrange(10 ** digits) for _ in range(2))
  op = rng.choice(ops)
  if op == "-" and b > a:
    a, b = b, a
  return f"{a}{op}{b}=", str(a + b if op == "+" else a - b if op == "-" else a * b)


def arith_documents(n: int, seed: int = 0, digits: int = 2, ops: int = 2, split: str = "all") -> list[bytes]:
  """`A+B=C` documents of `split`; `ops` = how many of + - * are used (1: +, 2: + -, 3: + - *)."""
  if digits < 1 or not 1 <= ops <= 3:
    raise DataError(f"synthetic:arith: digits={digits} must be >= 1 and ops={ops} 1, 2 or 3 (+, +-, +-*)")
  rng = random.Random(seed)
  return _draw(lambda: "".join(arith_problem(rng, digits, ARITH_OPS[:ops])).encode(), n, split, "synthetic:arith")


def prompt_answer(doc: bytes) -> tuple[str, str]:
  """A star-graph or arithmetic document split at its `=` into (prompt including `=`, answer)."""
  text = doc.decode("utf-8")
  head, sep, answer = text.rpartition("=")
  if not sep:
    raise DataError(f"document {text[:40]!r} has no '=': not a prompt/answer document")
  return head + sep, answer


# ---------------------------------------------------------------------------------------------------------
# Splits by content.

SPLITS = {"pretrain": 0.8, "rl": 0.1, "dev": 0.05, "test": 0.05}  # shares of the distinct problems
_SPLIT_KEY = b"lm.synthetic.split"
_ARITH = re.compile(r"(\d+)([-+*])(\d+)=")


def problem_key(prompt: str) -> str:
  """A problem's content, however its document writes it: `12+34`, `34+12` -> `12+34`; a star prompt -> its
  sorted edges, start and goal as node numbers (edge order and label width left out)."""
  if "|" in prompt:
    edges, start, goal, _ = parse_star(prompt.encode("ascii"))
    return ",".join(f"{u}>{v}" for u, v in sorted(edges)) + f"|{start}>{goal}"
  m = _ARITH.fullmatch(prompt)
  if not m:
    raise DataError(f"{prompt!r} is neither an arithmetic nor a star-graph prompt")
  a, op, b = int(m[1]), m[2], int(m[3])
  if op in "+*":  # commutative: the swapped problem is the same one
    a, b = min(a, b), max(a, b)
  return f"{a}{op}{b}"


def _split_of_key(key: str) -> str:
  digest = hashlib.blake2b(key.encode("ascii"), key=_SPLIT_KEY, digest_size=8).digest()
  u = int.from_bytes(digest, "big") / 2 ** 64
  for name, share in SPLITS.items():
    if u < share:
      return name
    u -= share
  return name  # rounding at the top end


def split_of(prompt: str) -> str:
  """The split (a key of SPLITS) that the problem of `prompt` belongs to."""
  return _split_of_key(problem_key(prompt))


def _draw(make: Callable[[], bytes], n: int, split: str, what: str) -> list[bytes]:
  """`n` documents from `make` (one random document a call): every draw for split `all`, else the draws whose
  problem is in `split`; dev and test without repeating a problem (a held-out set counts each once)."""
  if split == "all":
    return [make() for _ in range(n)]
  out, seen, misses = [], set(), 0
  while len(out) < n:
    doc = make()
    key = problem_key(prompt_answer(doc)[0])
    if _split_of_key(key) == split and not (split in ("dev", "test") and key in seen):
      out.append(doc)
      seen.add(key)
      misses = 0
    else:
      misses += 1
      if misses > 200_000:
        raise DataError(f"{what}: split={split} holds fewer than n={n} distinct problems ({len(out)} found); "
                        "lower n")
  return out


# ---------------------------------------------------------------------------------------------------------
# Source specs.

@dataclasses.dataclass(frozen=True)
class Generator:
  documents: Callable[..., list[bytes]]
  defaults: dict


GENERATORS = {
    "star": Generator(star_graph_documents, dict(degree=2, path_len=5, num_nodes=50, n=20000, seed=0, letters=0,
                                                 split="all", reverse=0)),
    "induction": Generator(induction_documents, dict(n=5000, seed=0, characters=2, min_len=4, max_len=7)),
    "arith": Generator(arith_documents, dict(n=20000, seed=0, digits=2, ops=2, split="all")),
}


def parse_source(spec: str) -> tuple[str, dict[str, int | str]]:
  """`synthetic:NAME[:KEY=VALUE]...` -> (NAME, every option with defaults filled in)."""
  if not spec.startswith(PREFIX):
    raise DataError(f"data.source {spec!r} is not a synthetic source; write synthetic:NAME[:KEY=VALUE]...")
  name, *items = spec[len(PREFIX):].split(":")
  valid = ", ".join(GENERATORS)
  if name not in GENERATORS:
    raise DataError(f"data.source {spec!r}: unknown synthetic generator {name!r}; choose one of {valid}")
  defaults = GENERATORS[name].defaults
  options = dict(defaults)
  for item in filter(None, (i.strip() for i in items)):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in defaults:
      what = f"unknown option {key!r}" if sep else f"option {item!r} is not KEY=VALUE"
      raise DataError(f"data.source {spec!r}: {what}; synthetic:{name} takes {', '.join(defaults)} "
                      f"(colon-separated, e.g. synthetic:{name}:{next(iter(defaults))}=3)")
    if key == "split":
      value = value.strip()
      if value not in ("all", *SPLITS):
        raise DataError(f"data.source {spec!r}: split={value!r}; choose all, {', '.join(SPLITS)}")
      options[key] = value
      continue
    try:
      options[key] = int(value)
    except ValueError:
      raise DataError(f"data.source {spec!r}: {key}={value!r} is not an integer") from None
  if options["n"] < 1:
    raise DataError(f"data.source {spec!r}: n={options['n']} must be >= 1")
  return name, options


@register_format("synthetic")
def documents(spec: str) -> list[bytes]:
  """The documents of one synthetic source."""
  name, options = parse_source(spec)
  return GENERATORS[name].documents(**options)


def source_options(source: str, name: str) -> list[dict[str, int | str]]:
  """Options of every `synthetic:NAME` part of a comma-joined data.source (empty when it has none)."""
  parts = [p.strip() for p in source.split(",")]
  return [parse_source(p)[1] for p in parts if p == f"{PREFIX}{name}" or p.startswith(f"{PREFIX}{name}:")]
