"""Noised held-out text for robustness checks (`lm eval --noise KIND:RATE`), as in HAT's robustness tables.

Kinds, each applied independently to every byte with probability RATE, from a fixed seed:
  delete  drop the byte
  swap    swap it with the next byte
  upper   upper-case it (ASCII letters; other bytes unchanged)
Bits per byte of a noised run counts the noised text's own bytes.
"""

from __future__ import annotations

import numpy as np

from lm.errors import DataError

KINDS = ("delete", "swap", "upper")


def parse(spec: str) -> tuple[str, float]:
  kind, _, rate = spec.partition(":")
  try:
    value = float(rate)
  except ValueError:
    value = -1.0
  if kind not in KINDS or not 0.0 <= value <= 1.0:
    raise DataError(f"--noise {spec!r}: expected KIND:RATE with KIND one of {', '.join(KINDS)} and RATE in [0, 1], "
                    "e.g. --noise swap:0.05")
  return kind, value


def apply(doc: bytes, kind: str, rate: float, rng: np.random.Generator) -> bytes:
  x = np.frombuffer(doc, np.uint8).copy()
  hit = rng.random(len(x)) < rate
  if kind == "delete":
    return x[~hit].tobytes()
  if kind == "upper":
    lower = (x >= ord("a")) & (x <= ord("z"))
    x[hit & lower] -= 32
    return x.tobytes()
  for i in np.flatnonzero(hit[:-1]):  # swap: left to right, so a byte can travel with repeated hits
    x[i], x[i + 1] = x[i + 1], x[i]
  return x.tobytes()


def noised(docs: list[bytes], spec: str, seed: int = 0) -> list[bytes]:
  kind, rate = parse(spec)
  rng = np.random.default_rng(seed)
  return [apply(d, kind, rate, rng) for d in docs]
