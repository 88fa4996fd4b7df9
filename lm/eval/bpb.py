"""Bits per byte on fixed held-out segments, the metric every family is compared by (DESIGN.md).

Each held-out segment (a document cut at sentence boundaries) is scored from a fresh state by the family's
`eval_step` (the next-unit head only, on the canonical tokenization, the end-of-segment event counted as one
byte). Byte counts come from the source text on the host, so a lossy tokenizer cannot change the denominator.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import numpy as np

# Eval steps dispatched ahead of the one the host waits for. Dispatching all of them before reading any back
# hung multi-process CPU runs (issue 15): XLA's CPU client launches every execution on one pool of
# max(cores, local devices) threads, a launch beyond the device's 32 in-flight computations blocks one of
# those threads, and a cross-process (gloo) collective needs every local device's execution on a thread at
# once, so with 2 cores, 2 devices per process and 33+ steps queued both processes waited forever. Two in
# flight keep an accelerator busy as well (each step's result is a few scalars).
IN_FLIGHT = 2


def evaluate(eval_step: Callable, params, batches: Iterable, put: Callable = lambda b: b,
             summary: Callable[[dict, int], dict] = lambda sums, n_bytes: {}) -> dict:
  """`batches` yields (host batch, n_bytes); `put` places a host batch on the mesh; `summary(sums, n_bytes)`
  adds a family's extra entries (`Family.eval_summary`)."""
  n_bytes, pending = 0, []
  for batch, nb in batches:
    pending.append(eval_step(params, put(batch)))
    if len(pending) > IN_FLIGHT:
      jax.block_until_ready(pending[-1 - IN_FLIGHT])  # bounds the executions in flight; reads nothing
    n_bytes += int(nb)
  sums: dict[str, float] = {}
  for step_sums in jax.device_get(pending):
    for k, v in step_sums.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  nll_sum, units = sums.get("nll_sum", 0.0), sums.get("count", 0.0)
  out = dict(bpb=nll_sum / (math.log(2) * max(n_bytes, 1)), nll_sum=nll_sum, n_bytes=n_bytes,
             n_units=int(units), nll_per_unit=nll_sum / max(units, 1.0))
  if pending:
    out.update(summary(sums, n_bytes))
  return out


def unigram_bpb(data) -> float:
  """Bits per byte of the train-split unigram distribution on the val split: the floor to beat."""
  tok = data.tokenizer
  counts = np.ones(tok.vocab_size)
  for doc in data.splits["train"]:
    ids = np.append(tok.encode(doc), tok.eos_id)
    counts += np.bincount(ids, minlength=tok.vocab_size)
  logp = np.log(counts / counts.sum())
  nll, n_bytes = 0.0, 0
  for doc in data.splits["val"]:
    ids = np.append(tok.encode(doc), tok.eos_id)
    nll -= logp[ids].sum()
    n_bytes += len(doc) + 1
  return nll / (math.log(2) * n_bytes)
