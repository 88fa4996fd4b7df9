"""Beam search, diverse beam search and minimum Bayes risk decoding.

Beam search keeps the W best partial continuations per prompt; a candidate ending in eos (or reaching
`max_new` units) joins a pool of W finished ones ranked by log p / length^length_penalty (HF's convention:
0 ranks by log p alone, 1 by log p per unit). Diverse beam search (Vijayakumar et al. 2016, arXiv 1610.02424)
splits K beams into G groups of W = K / G decoded in turn at each step; group g's candidates lose
`diversity` x (how many earlier groups' beams chose the same unit at this step), Hamming diversity, and that
penalty stays in its beams' scores as in the paper. With diversity 0 every group is plain beam search of
width W; with G = 1 the whole thing is plain beam search of width K.

MBR (Eikema & Aziz 2020) picks, among hypotheses, the one with the highest expected utility against
references (model samples, or any weighted support): exact match gives the mode (majority vote), chrF a
consensus string.
"""

from __future__ import annotations

import collections
import functools
import importlib
import inspect
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.decoding import steps
from lm.errors import LMError, type_name


@functools.partial(jax.jit, static_argnames=("model", "beams", "max_new", "eos_id", "groups", "diversity",
                                             "length_penalty"))
def beam_search(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, *, beams: int, max_new: int,
                eos_id: int, groups: int = 1, diversity: float = 0.0, length_penalty: float = 1.0):
  """Finished continuations of each left-padded prompt: ids [B, K, N] (eos included where one ends it, eos
  after), lengths [B, K], log_probs [B, K] (the model's log p of each), scores [B, K] (the ranking score),
  forward passes (model calls, each over all B x K rows). Group g is beams g*W .. g*W+W-1, best first."""
  B, P = prompt_BxP.shape
  K, G, N = beams, groups, max_new
  if K % G:
    raise ValueError(f"beams={K} must split into groups={G} equal groups")
  W = K // G
  V = steps.vocab_size(model)
  lp_BxV, cache, position_B = steps.prefill(model, params, prompt_BxP, lengths_B, P + N)
  axes = steps.batch_axes(model, P + N)
  cache = steps.repeat_rows(cache, axes, K)
  lp_RxV = jnp.repeat(lp_BxV, K, axis=0)
  position_R = jnp.repeat(position_B, K)
  neg = jnp.float32(-jnp.inf)
  first_W = jnp.where(jnp.arange(W) == 0, 0.0, neg)  # one live beam per group at the start: no duplicates
  score_BxGxW = jnp.broadcast_to(first_W, (B, G, W))
  state = dict(
      ids=jnp.full((B, G, W, N), eos_id, jnp.int32), score=score_BxGxW, logp=jnp.zeros((B, G, W), jnp.float32),
      fin_ids=jnp.full((B, G, W, N), eos_id, jnp.int32), fin_rank=jnp.full((B, G, W), neg),
      fin_logp=jnp.zeros((B, G, W), jnp.float32), fin_len=jnp.zeros((B, G, W), jnp.int32))

  def body(i, carry):
    state, lp_RxV, cache = carry
    lp_BxGxWxV = lp_RxV.reshape(B, G, W, V)
    counts_BxV = jnp.zeros((B, V), jnp.float32)
    new = {k: [] for k in ("ids", "score", "logp", "fin_ids", "fin_rank", "fin_logp", "fin_len", "parent", "unit")}
    length = (i + 1).astype(jnp.float32)
    for g in range(G):
      cand_BxWxV = state["score"][:, g, :, None] + lp_BxGxWxV[:, g] - diversity * counts_BxV[:, None, :]
      true_BxWxV = state["logp"][:, g, :, None] + lp_BxGxWxV[:, g]
      top, flat = jax.lax.top_k(cand_BxWxV.reshape(B, W * V), min(2 * W, W * V))
      parent, unit = flat // V, flat % V
      true = jnp.take_along_axis(true_BxWxV.reshape(B, W * V), flat, axis=1)
      seq = jnp.take_along_axis(state["ids"][:, g], parent[:, :, None], axis=1).at[:, :, i].set(unit)
      done = (unit == eos_id) | (i == N - 1)
      # Finished: the pool so far and this step's finished candidates, best W by the ranking score.
      rank = jnp.where(done, top / length ** length_penalty, neg)
      pool_rank = jnp.concatenate([state["fin_rank"][:, g], rank], axis=1)
      keep_rank, keep = jax.lax.top_k(pool_rank, W)
      pick = lambda old, cur: jnp.take_along_axis(jnp.concatenate([old, cur], axis=1),  # noqa: E731
                                                  keep.reshape(keep.shape + (1,) * (old.ndim - 2)), axis=1)
      new["fin_ids"].append(pick(state["fin_ids"][:, g], seq))
      new["fin_rank"].append(keep_rank)
      new["fin_logp"].append(pick(state["fin_logp"][:, g], true))
      new["fin_len"].append(pick(state["fin_len"][:, g], jnp.full(true.shape, i + 1, jnp.int32)))
      # Alive: the best W candidates that did not finish.
      alive_score, alive = jax.lax.top_k(jnp.where(done, neg, top), W)
      unit_W = jnp.take_along_axis(unit, alive, axis=1)
      new["ids"].append(jnp.take_along_axis(seq, alive[:, :, None], axis=1))
      new["score"].append(alive_score)
      new["logp"].append(jnp.take_along_axis(true, alive, axis=1))
      new["parent"].append(g * W + jnp.take_along_axis(parent, alive, axis=1))
      new["unit"].append(unit_W)
      chosen = jnp.isfinite(alive_score).astype(jnp.float32)
      counts_BxV = counts_BxV + jax.vmap(lambda u, c: jnp.zeros((V,), jnp.float32).at[u].add(c))(unit_W, chosen)
    state = {k: jnp.stack(new[k], axis=1) for k in state}
    rows_R = (jnp.arange(B)[:, None] * K + jnp.stack(new["parent"], axis=1).reshape(B, K)).reshape(-1)
    unit_R = jnp.stack(new["unit"], axis=1).reshape(-1)
    cache = steps.take_rows(cache, axes, rows_R)
    # The last step's selection needs no model call after it.
    lp_RxV, cache = jax.lax.cond(i < N - 1, lambda c: steps.step(model, params, c, unit_R, position_R + i),
                                 lambda c: (lp_RxV, c), cache)
    return state, lp_RxV, cache

  state, _, _ = jax.lax.fori_loop(0, N, body, (state, lp_RxV, cache))
  order = jnp.argsort(-state["fin_rank"], axis=2)  # the pool is kept sorted already; this makes it explicit
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 3)), axis=2)  # noqa: E731
  return (take(state["fin_ids"]).reshape(B, K, N), take(state["fin_len"]).reshape(B, K),
          take(state["fin_logp"]).reshape(B, K), take(state["fin_rank"]).reshape(B, K), N)


# ---------------------------------------------------------------------------------------------- MBR


def exact_match(hypothesis: str, reference: str) -> float:
  return float(hypothesis == reference)


def chrf(hypothesis: str, reference: str, order: int = 6, beta: float = 2.0) -> float:
  """Character n-gram F-score (Popović 2015) in [0, 1], whitespace ignored, precision and recall averaged
  over the n-gram orders both strings have (sacrebleu's chrF without the word n-grams)."""
  hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
  if hyp == ref:
    return 1.0
  precisions, recalls = [], []
  for n in range(1, order + 1):
    h = collections.Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
    r = collections.Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
    if not h or not r:
      continue
    match = sum((h & r).values())
    precisions.append(match / sum(h.values()))
    recalls.append(match / sum(r.values()))
  if not precisions:
    return 0.0
  p, r = float(np.mean(precisions)), float(np.mean(recalls))
  return 0.0 if p + r == 0 else (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


UTILITIES: dict[str, Callable[[str, str], float]] = {"exact": exact_match, "chrf": chrf}


def utility_fn(spec) -> Callable[[str, str], float]:
  """A utility by name (`exact`, `chrf`), a `pkg.module:function` of (hypothesis, reference) -> float, or the
  function itself."""
  if callable(spec):
    return spec
  if spec in UTILITIES:
    return UTILITIES[spec]
  module, _, name = str(spec).partition(":")
  if name.isidentifier() and all(part.isidentifier() for part in module.split(".")):
    try:
      fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
      raise LMError(f"--utility {spec!r}: cannot import {name} from {module} ({e})") from None
    if not callable(fn) or not accepts(fn, "a", "a"):
      raise LMError(f"--utility {spec!r}: {module}.{name} must be a function of (hypothesis, reference) returning a "
                    "number")
    return _numeric(fn, spec)
  raise LMError(f"--utility {spec!r}: use {', '.join(UTILITIES)} or pkg.module:function(hypothesis, reference)")


def accepts(fn, *args, **kwargs) -> bool:
  """Whether `fn(*args, **kwargs)` binds to `fn`'s signature (checked without calling it); True when Python cannot
  tell (some builtins have no signature)."""
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return True
  try:
    signature.bind(*args, **kwargs)
  except TypeError:
    return False
  return True


def _numeric(fn, spec) -> Callable[[str, str], float]:
  """`fn` whose result is checked as it is used: a value that is not a number is one line naming the utility."""
  def utility(hypothesis, reference):
    value = fn(hypothesis, reference)
    try:
      return float(value)
    except (TypeError, ValueError):
      raise LMError(f"--utility {spec!r}: returned {type_name(value)}; the utility must return a number") from None
  return utility


def mbr(hypotheses: Sequence, references: Sequence | None = None, weights: Sequence[float] | None = None,
        utility: str | Callable = "exact") -> tuple[int, np.ndarray]:
  """(index of the hypothesis with the highest expected utility, expected utility of each): E_w[u(h, y)] over
  `references` (default: the hypotheses themselves, each weight 1/n: samples as pseudo-references)."""
  u = utility_fn(utility)
  references = list(hypotheses) if references is None else list(references)
  w = np.full(len(references), 1 / len(references)) if weights is None else np.asarray(weights, np.float64)
  expected = np.array([sum(wj * u(h, y) for y, wj in zip(references, w)) for h in hypotheses])
  return int(np.argmax(expected)), expected
