"""Reward functions by name: `(prompts, completions, **columns) -> list[float]`, one float per completion.

Columns are the prompt source's own (e.g. `answer`) plus what the sampler knows: `truncated` (the completion
hit the length limit before a stop unit), `lengths` (completion units) and `max_new`. Built in:
  exact_answer      1 if the completion (stripped) equals the `answer` column (stripped), else 0
  numeric_answer    1 if the first number in the completion equals the `answer` column's number, else 0
  format            1 if the completion ended on its own (not truncated) and is one non-empty line, else 0
  regex:PATTERN     1 if the stripped completion matches PATTERN in full (`re.fullmatch`), else 0
  overlong:CACHE    DAPO's soft overlong penalty (Yu et al. 2025, eq. 13): 0 up to max_new - CACHE units, then
                    falling linearly to -1 at max_new, -1 past it
  pkg.module:fn     any function with the signature above
  mypkg.name        a reward a user's module registers (`@register("mypkg.name")`), found by its dotted name
`combine([(spec, weight), ...])` sums several, weighted, and reports each one's values too.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Callable, Sequence

import numpy as np

from lm.errors import ConfigError
from lm.paths import import_registering

Reward = Callable[..., list]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_answer(prompts, completions, answer, **_):
  return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer)]


def _first_number(text: str):
  m = _NUMBER.search(text)
  return float(m.group()) if m else None


def numeric_answer(prompts, completions, answer, **_):
  out = []
  for c, a in zip(completions, answer):
    got, want = _first_number(c), _first_number(str(a))
    out.append(float(got is not None and want is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))))
  return out


def format_reward(prompts, completions, truncated=None, **_):
  truncated = truncated if truncated is not None else [False] * len(completions)
  return [float(not t and bool(c.strip()) and "\n" not in c.strip()) for c, t in zip(completions, truncated)]


def regex_reward(pattern: str) -> Reward:
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"reward regex:{pattern}: not a regular expression ({e})") from None

  def reward(prompts, completions, **_):
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]
  return reward


def overlong_reward(cache: int) -> Reward:
  def reward(prompts, completions, lengths, max_new, **_):
    limit = max_new - cache
    out = []
    for n in lengths:
      out.append(0.0 if n <= limit else (-1.0 if n > max_new else (limit - n) / cache))
    return out
  return reward


BUILTIN = {"exact_answer": exact_answer, "numeric_answer": numeric_answer, "format": format_reward}
_REGISTRY: dict[str, Reward] = dict(BUILTIN)


def register(name: str):
  """Register a reward function `(prompts, completions, **columns) -> list[float]` under `name`; a dotted
  name (`mypkg.myreward`) is found by importing its module (or the module's parent) when a config names it."""
  def wrap(fn):
    if not _accepts(fn):
      raise ConfigError(f"reward {name!r}: {fn.__name__} must take (prompts, completions, **columns)")
    _REGISTRY[name] = fn
    return fn
  return wrap
COLUMNS = ("answer", "truncated", "lengths", "max_new")  # what the sampler passes (lm/rl/rollouts.py)


def _accepts(fn) -> bool:
  """Whether `fn` binds a reward call's arguments (by its signature; it is not called)."""
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return True  # no signature to read (some builtins)
  try:
    signature.bind([], [], **{c: [] for c in COLUMNS})
  except TypeError:
    return False
  return True


def get(spec: str) -> Reward:
  """The reward function a spec names (registered, `regex:PATTERN`, `overlong:CACHE` or `pkg.module:fn`)."""
  if spec not in _REGISTRY and ":" not in spec and "." in spec:
    import_registering(spec, _REGISTRY)
  if spec in _REGISTRY:
    return _REGISTRY[spec]
  kind, _, arg = spec.partition(":")
  if kind == "regex" and arg:
    return regex_reward(arg)
  if kind == "overlong":
    if not arg.isdigit() or int(arg) < 1:
      raise ConfigError(f"reward {spec!r}: write overlong:CACHE with CACHE a positive number of units")
    return overlong_reward(int(arg))
  if arg and arg.isidentifier() and all(p.isidentifier() for p in kind.split(".")):
    try:
      fn = getattr(importlib.import_module(kind), arg)
    except (ImportError, AttributeError) as e:
      raise ConfigError(f"reward {spec!r}: cannot import {arg} from {kind} ({e})") from None
    if not callable(fn) or not _accepts(fn):
      raise ConfigError(f"reward {spec!r}: {kind}.{arg} must be a function of (prompts, completions, **columns) "
                        f"returning a list of floats; columns given: {', '.join(COLUMNS)}")
    return fn
  raise ConfigError(f"unknown reward {spec!r}; use {', '.join(_REGISTRY)}, regex:PATTERN, overlong:CACHE, "
                    "pkg.module:function or a name a module registers (lm.rl.rewards.register)")


def combine(specs: Sequence[tuple[str, float]]) -> Callable[..., tuple[np.ndarray, dict[str, np.ndarray]]]:
  """One function returning (weighted sum [N], {spec: values [N]}) of several rewards (checked now)."""
  if not specs:
    raise ConfigError("no reward functions; name at least one, e.g. [('exact_answer', 1.0)]")
  functions = [(spec, float(weight), get(spec)) for spec, weight in specs]

  def rewards(prompts, completions, **columns):
    parts = {}
    for spec, _, fn in functions:
      values = np.asarray(fn(prompts, completions, **columns), np.float32)
      if values.shape != (len(completions),):
        raise ValueError(f"reward {spec!r} returned {values.shape[0] if values.ndim else 'a scalar'} values for "
                         f"{len(completions)} completions")
      parts[spec] = values
    total = sum(w * parts[spec] for spec, w, _ in functions)
    return np.asarray(total, np.float32), parts
  return rewards
