"""Every continuation of a tiny model, with its probability: the oracle sequence-level samplers are tested
against.

The space is Ω(N): every unit sequence that ends with eos within N units, or has N units and no eos (cut at
the budget). p(x) is the product of its units' conditionals (eos included when it ends one), so Σ_Ω p = 1.
A sampler with `max_new=N` draws from Ω(N); power sampling targets p(x)^α / Z_α over it, constrained sampling
p(x | x ∈ C).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

NextLogProbs = Callable[[list[tuple[int, ...]]], np.ndarray]


def enumerate_sequences(next_log_probs: NextLogProbs, eos_id: int, max_new: int,
                        allowed: Callable[[tuple[int, ...], int], bool] | None = None
                        ) -> list[tuple[tuple[int, ...], float]]:
  """Every x in Ω(max_new) with log p(x), breadth first (one `next_log_probs` call per length). With
  `allowed(prefix, unit)`, branches it refuses are not followed (their mass is simply left out)."""
  out, frontier = [], [((), 0.0)]
  for depth in range(max_new):
    if not frontier:
      break
    lp_NxV = next_log_probs([x for x, _ in frontier])
    nxt = []
    for (x, lp), row in zip(frontier, lp_NxV):
      for v, lv in enumerate(row):
        if allowed is not None and not allowed(x, v):
          continue
        if v == eos_id:
          out.append((x + (v,), lp + float(lv)))
        elif depth + 1 == max_new:
          out.append((x + (v,), lp + float(lv)))
        else:
          nxt.append((x + (v,), lp + float(lv)))
    frontier = nxt
  return out


def logsumexp(values) -> float:
  values = np.asarray(values, np.float64)
  top = np.max(values)
  return float(top + np.log(np.sum(np.exp(values - top)))) if np.isfinite(top) else float(top)


def power_distribution(seqs, alpha: float) -> dict[tuple[int, ...], float]:
  """π_α(x) = p(x)^α / Σ p^α over the enumerated space."""
  log_z = log_partition(seqs, alpha)
  return {x: float(np.exp(alpha * lp - log_z)) for x, lp in seqs}


def log_partition(seqs, alpha: float = 1.0) -> float:
  """log Σ_x p(x)^α."""
  return logsumexp([alpha * lp for _, lp in seqs])


def token_temperature_distribution(next_log_probs: NextLogProbs, eos_id: int, max_new: int,
                                   alpha: float) -> dict[tuple[int, ...], float]:
  """What sampling each unit at temperature 1/α gives: Π_t p(x_t|x<t)^α / Σ_v p(v|x<t)^α (not π_α)."""
  def tempered(prefixes):
    lp_NxV = alpha * next_log_probs(prefixes)
    top_N = lp_NxV.max(-1, keepdims=True)
    return lp_NxV - top_N - np.log(np.sum(np.exp(lp_NxV - top_N), -1, keepdims=True))
  return {x: float(np.exp(lp)) for x, lp in enumerate_sequences(tempered, eos_id, max_new)}


def conditional(seqs, accept: Callable[[tuple[int, ...]], bool]) -> tuple[dict[tuple[int, ...], float], float]:
  """p(x | accept(x)) over the enumerated space, and P(accept)."""
  kept = [(x, lp) for x, lp in seqs if accept(x)]
  if not kept:
    return {}, 0.0
  log_z = logsumexp([lp for _, lp in kept])
  return {x: float(np.exp(lp - log_z)) for x, lp in kept}, float(np.exp(log_z))
