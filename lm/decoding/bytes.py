"""Exact byte-level probabilities of a token model, by cover sets (Phan et al. 2024; Vieira et al. 2025).

A token model over ids that decode to byte strings (`unit_bytes`, multi-byte for merges) induces a
distribution over byte strings: the bytes of the tokens it generates before `eos`. Many token sequences decode
to the same bytes, so a byte-level probability is a sum over tokenizations, canonical or not.

Byte-Token Representation Lemma (Phan et al. 2024): P(bytes start with b) = Σ_{t in cover(b)} P(t as a token
prefix), where cover(b) holds the token sequences whose bytes start with b while the bytes of all but their last
token are a strict prefix of b (disjoint events that exhaust "starts with b"). Next-byte and end-of-text
distributions are ratios of these sums.

Special ids other than eos (those with `unit_bytes[v] == b""`: bos, pad, ...) carry no bytes: their
probability is masked out and every next-token distribution renormalised over the byte-carrying ids plus eos,
i.e. this is the byte process of the model conditioned on never emitting a non-eos special. Eos is the end
event whatever its `unit_bytes`.

`beam=k` keeps only the k most probable partial tokenizations per search depth: the prefix probability is then
a lower bound on the exact one (next-byte distributions are renormalised over what was kept).
"""

from __future__ import annotations

import bisect
import heapq
from typing import Callable, Sequence

import numpy as np

NextLogProbs = Callable[[list[tuple[int, ...]]], np.ndarray]  # prefixes -> float [n, V] next-token log-probs
END = 256  # index of the end event in a [257] next-byte distribution


def _logsumexp(x, axis=None, keepdims=False):
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return np.float64(-np.inf)
  mx = np.max(x, axis=axis, keepdims=True)
  mx = np.where(np.isfinite(mx), mx, 0.0)
  with np.errstate(divide="ignore"):
    out = np.log(np.sum(np.exp(x - mx), axis=axis, keepdims=True)) + mx
  return out if keepdims else np.squeeze(out, axis=axis)


def _scatter_logsumexp(bins_K: np.ndarray, log_K: np.ndarray, n: int = END + 1) -> np.ndarray:
  """log Σ exp(log_K) per bin, shifted by each bin's own maximum so that no bin underflows."""
  mx_n = np.full(n, -np.inf)
  np.maximum.at(mx_n, bins_K, log_K)
  shift_n = np.where(np.isfinite(mx_n), mx_n, 0.0)
  acc_n = np.zeros(n)
  np.add.at(acc_n, bins_K, np.exp(log_K - shift_n[bins_K]))
  with np.errstate(divide="ignore"):
    return np.where(np.isfinite(mx_n), np.log(acc_n) + shift_n, -np.inf)


def renormalize_log_probs(log_probs_NxV: np.ndarray, keep_V: np.ndarray) -> np.ndarray:
  """Masks the ids outside `keep_V` (non-eos specials; columns past `len(keep_V)` too) and renormalises each
  row: float64 [n, V] log-probs of the model conditioned on emitting only kept ids."""
  lp_NxV = np.asarray(log_probs_NxV, np.float64).reshape(len(log_probs_NxV), -1)
  keep = np.zeros(lp_NxV.shape[-1], bool)
  keep[: len(keep_V)] = keep_V[: lp_NxV.shape[-1]]
  lp_NxV = np.where(keep, lp_NxV, -np.inf)
  return lp_NxV - _logsumexp(lp_NxV, axis=-1, keepdims=True)


class ByteModel:
  """Byte-level view of a token model: prefix, string and next-byte probabilities summed over tokenizations."""

  def __init__(self, next_log_probs: NextLogProbs, unit_bytes: Sequence[bytes], eos_id: int, *, beam: int = 0):
    self.next_log_probs, self.unit_bytes, self.eos_id, self.beam = next_log_probs, list(unit_bytes), eos_id, beam
    self._passes = 0
    vocab = [(u, v) for v, u in enumerate(self.unit_bytes) if u and v != eos_id]
    vocab.sort()
    self._keys = [u for u, _ in vocab]  # sorted: the ids extending r are one contiguous run starting at r
    self._sorted_ids = np.array([v for _, v in vocab], np.int64)
    self._by_bytes: dict[bytes, list[int]] = {}
    for u, v in vocab:
      self._by_bytes.setdefault(u, []).append(v)
    self._max_len = max((len(u) for u in self._keys), default=0)
    self.keep_V = np.array([bool(u) or v == eos_id for v, u in enumerate(self.unit_bytes)])
    self.first_byte_V = np.array([END if v == eos_id else (u[0] if u else -1)
                                  for v, u in enumerate(self.unit_bytes)], np.int64)

  def forward_passes(self) -> int:
    """Prefixes evaluated so far (the sum of n over `next_log_probs` calls): the cost figure."""
    return self._passes

  def _call(self, prefixes: list[tuple[int, ...]]) -> np.ndarray:
    self._passes += len(prefixes)
    return renormalize_log_probs(self.next_log_probs(prefixes), self.keep_V)

  def _extending(self, r: bytes) -> tuple[int, int, int]:
    """(lo, mid, hi) into the sorted vocabulary: [lo, mid) have bytes == r, [mid, hi) strictly extend r."""
    lo = bisect.bisect_left(self._keys, r)
    s = r.rstrip(b"\xff")
    hi = bisect.bisect_left(self._keys, s[:-1] + bytes([s[-1] + 1])) if s else len(self._keys)
    return lo, lo + len(self._by_bytes.get(r, ())), hi

  def _expand(self, frontier, prefix: bytes, exact: list, over: list) -> list:
    """One search depth, one model call: appends the cover elements found from `frontier` (nodes (t, m, log P(t))
    with bytes(t) == prefix[:m]) to `exact` (bytes == prefix) and `over` (bytes extend past prefix, grouped per
    node as (t, ids_K, log_K, next_byte_K)); returns the next depth's nodes (tokens strictly inside prefix)."""
    nodes = []
    rows_NxV = self._call([t for t, _, _ in frontier])
    for (t, m, lp), row_V in zip(frontier, rows_NxV):
      rest = prefix[m:]
      lo, mid, hi = self._extending(rest)
      exact += [(t + (int(v),), lp + row_V[v]) for v in self._sorted_ids[lo:mid]]
      if hi > mid:
        ids_K = self._sorted_ids[mid:hi]
        over.append((t, ids_K, lp + row_V[ids_K], np.array([self._keys[i][len(rest)] for i in range(mid, hi)])))
      for n in range(1, min(len(rest), self._max_len + 1)):  # tokens that are strict prefixes of rest
        nodes += [(t + (v,), m + n, lp + row_V[v]) for v in self._by_bytes.get(rest[:n], ()) if row_V[v] > -np.inf]
    return nodes

  def _search(self, prefix: bytes):
    """The cover of `prefix` (lemma above) by breadth-first search over token depth: (exact, over) as in
    `_expand`. The empty prefix is covered by the empty token sequence."""
    if not prefix:
      return [((), 0.0)], []
    exact, over, frontier = [], [], [((), 0, 0.0)]
    while frontier:
      frontier = self._expand(frontier, prefix, exact, over)
      if self.beam > 0 and len(frontier) > self.beam:
        frontier = heapq.nlargest(self.beam, frontier, key=lambda node: node[2])
    return exact, over

  def covers(self, prefix: bytes) -> list[tuple[tuple[int, ...], float]]:
    """The cover of `prefix`: (token sequence, log P(sequence as a token prefix)) pairs."""
    exact, over = self._search(prefix)
    out = [(t, float(lp)) for t, lp in exact]
    for t, ids_K, log_K, _ in over:
      out += [(t + (int(v),), float(lp)) for v, lp in zip(ids_K, log_K)]
    return out

  def prefix_log_prob(self, prefix: bytes) -> float:
    """log P(generated bytes start with `prefix`): the log-sum over its cover (lemma); 0 for b""."""
    exact, over = self._search(prefix)
    return float(_logsumexp(np.concatenate([[lp for _, lp in exact]] + [g[2] for g in over])))

  def log_prob(self, text: bytes) -> float:
    """log P(bytes == text, then end): the cover elements whose bytes equal `text` (every tokenization of it),
    each followed by eos."""
    exact, _ = self._search(text)
    if not exact:
      return -np.inf
    rows_ExV = self._call([t for t, _ in exact])
    return float(_logsumexp(np.array([lp for _, lp in exact]) + rows_ExV[:, self.eos_id]))

  def text_log_prob(self, text: bytes, beam: int = 0, keep: Sequence[int] = (), raw: bool = True) -> float:
    """log P(bytes == text, then end) summed over its tokenizations, position by position (Vieira et al.
    2025): the nodes at byte position m are the tokenizations of text[:m], all expanded by one model call.
    `beam` keeps the k most probable nodes per position, and always the prefixes of `keep` (a tokenization
    of `text`, e.g. the canonical one), so the result is never below log P(keep, eos). `raw`: the model's own
    log-probs, specials not renormalised away (what canonical bits per byte scores)."""
    call = self._raw_call if raw else self._call
    keep = tuple(int(v) for v in keep)
    pinned = {keep[:i] for i in range(len(keep) + 1)}
    at: dict[int, list] = {0: [((), 0.0)]}
    for m in range(len(text) + 1):
      nodes = at.pop(m, [])
      if not nodes:
        continue
      if beam > 0 and len(nodes) > beam:
        best = heapq.nlargest(beam, nodes, key=lambda node: node[1])
        nodes = best + [n for n in nodes if n[0] in pinned and n not in best]
      rows_NxV = call([t for t, _ in nodes])
      if m == len(text):
        return float(_logsumexp(np.array([lp for _, lp in nodes]) + rows_NxV[:, self.eos_id]))
      rest = text[m:]
      for (t, lp), row_V in zip(nodes, rows_NxV):
        for n in range(1, min(len(rest), self._max_len) + 1):
          for v in self._by_bytes.get(rest[:n], ()):
            if row_V[v] > -np.inf:
              at.setdefault(m + n, []).append((t + (v,), lp + float(row_V[v])))
    return -np.inf

  def _raw_call(self, prefixes: list[tuple[int, ...]]) -> np.ndarray:
    self._passes += len(prefixes)
    return np.asarray(self.next_log_probs(prefixes), np.float64)

  def _distribution(self, exact, over) -> np.ndarray:
    """[257] next-byte log-probs from a cover: elements past the prefix give their byte right after it; those
    ending exactly on it take one more (batched) next-token step, each id giving its first byte, eos the end."""
    bins, logs = [g[3] for g in over], [g[2] for g in over]
    if exact:
      rows_ExV = self._call([t for t, _ in exact])
      valid = np.flatnonzero(self.first_byte_V >= 0)  # byte-carrying ids and eos
      log_ExV = np.array([lp for _, lp in exact])[:, None] + rows_ExV[:, valid]
      bins.append(np.broadcast_to(self.first_byte_V[valid], log_ExV.shape).ravel())
      logs.append(log_ExV.ravel())
    if not logs:
      return np.full(END + 1, -np.inf)
    out_257 = _scatter_logsumexp(np.concatenate(bins).astype(np.int64), np.concatenate(logs))
    total = _logsumexp(out_257)  # = P(prefix) (the cover's total) when nothing was pruned
    return out_257 - total if np.isfinite(total) else out_257

  def next_byte_log_probs(self, prefix: bytes) -> np.ndarray:
    """float64 [257]: log P(next byte = c | prefix) for c in 0..255, then log P(end | prefix); all -inf if the
    prefix has probability 0 (or the beam kept none of it)."""
    return self._distribution(*self._search(prefix))


def naive_next_byte_log_probs(next_log_probs: NextLogProbs, unit_bytes: Sequence[bytes], eos_id: int,
                              encode: Callable[[bytes], list[int]], prefix: bytes) -> np.ndarray:
  """Baseline [257]: the next-token distribution after the canonical encoding of `prefix`, mapped to each
  token's first byte (eos to the end event). Wrong whenever the prefix ends inside a would-be token."""
  model = ByteModel(next_log_probs, unit_bytes, eos_id)
  return model._distribution([(tuple(encode(prefix)), 0.0)], [])


def token_healing_next_byte_log_probs(next_log_probs: NextLogProbs, unit_bytes: Sequence[bytes], eos_id: int,
                                      encode: Callable[[bytes], list[int]], prefix: bytes) -> np.ndarray:
  """Token-healing baseline [257]: back up the last token r of the canonical encoding and predict from the ids
  that extend r (those equal to r take one more next-token step). Only the canonical path is used."""
  ids = tuple(encode(prefix))
  if not ids:
    return naive_next_byte_log_probs(next_log_probs, unit_bytes, eos_id, encode, prefix)
  model = ByteModel(next_log_probs, unit_bytes, eos_id)
  exact, over = [], []
  model._expand([(ids[:-1], len(prefix) - len(unit_bytes[ids[-1]]), 0.0)], prefix, exact, over)
  return model._distribution(exact, over)


def ensemble_next_byte_log_probs(models: Sequence[ByteModel], prefix: bytes, weights=None) -> np.ndarray:
  """[257] log of the weighted mixture of the models' next-byte distributions (uniform by default): byte-level
  ensembling of models whose tokenizers differ (Phan et al. 2024)."""
  w_M = np.ones(len(models)) if weights is None else np.asarray(weights, np.float64)
  log_w_M = np.log(w_M / w_M.sum())
  lp_Mx257 = np.stack([m.next_byte_log_probs(prefix) for m in models])
  return _logsumexp(log_w_M[:, None] + lp_Mx257, axis=0)
