"""Sequence-level sampling: power sampling by SMC and by Metropolis-Hastings, and constrained generation by SMC.

Targets are over Ω(N) (`lm.decoding.exact`): continuations that end with eos within N units or are cut at N.
- Power distribution π_α(x) ∝ p(x)^α (sequence-level temperature 1/α; Karan & Du 2025, "Reasoning with
  Sampling"), which is not what sampling each unit at temperature 1/α gives.
- Constrained: p(x | x ∈ C), C = continuations whose bytes match a regex in full (`lm.decoding.regex`).
Both can be combined: π(x) ∝ p(x)^α 1[x ∈ C].

SMC (Power-SMC, Azizi et al. 2026; constrained SMC as in Lew et al. 2023 / Loula et al. 2025): particles are
batch rows. Each step proposes from q(v) ∝ p(v | x)^α m(v), m the constraint's mask of units that keep a full
match reachable within the units left; the incremental weight p^α m / q = Σ_v p(v | x)^α m(v) does not depend
on the drawn unit. When the effective sample size falls under `ess` x particles, particles are resampled
(systematic) and the KV cache rows gathered with them. Ẑ, the product over resampling rounds of the mean
weight, is an unbiased estimate of Σ_x p(x)^α 1[x ∈ C] (P(C) at α = 1). Masking alone (no weights) samples
the product of locally renormalised conditionals, which is not p(x | C).

MH (Karan & Du's reference algorithm): the continuation grows in `blocks`; after each block, `steps` times,
pick a position t uniformly, redraw everything from t on from q (unit temperature 1/α), accept with
log r = α (log p(x') - log p(x)) + log q(x) - log q(x') over the redrawn parts. Units after an eos are an
absorbing fill (probability 1 under p and q), so every state has the same positions to pick.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.decoding import steps


def _masked(lp_RxV, alpha, state_R, units_left, eos_id, tables):
  """log of p^α m per unit [R, V], m the constraint's mask (all ones without `tables`)."""
  target = alpha * lp_RxV
  if tables is None:
    return target
  next_SxV, to_accept_S, accepting_S = tables
  nxt_RxV = next_SxV[state_R]
  ok = (nxt_RxV >= 0) & (to_accept_S[jnp.maximum(nxt_RxV, 0)] <= units_left - 1)
  ok = ok.at[:, eos_id].set(accepting_S[state_R])
  return jnp.where(ok, target, -jnp.inf)


def _systematic(rng, log_w_GxN):
  """Ancestor indices [G, N] per group, systematic resampling: one uniform per group."""
  G, N = log_w_GxN.shape
  w = jax.nn.softmax(log_w_GxN, axis=-1)
  edges = jnp.cumsum(w, axis=-1)
  u = (jax.random.uniform(rng, (G, 1)) + jnp.arange(N)[None, :]) / N
  return jnp.minimum(jax.vmap(jnp.searchsorted)(edges, u), N - 1).astype(jnp.int32)


def _ramped(alpha: float, ramp: int, max_new: int, i):
  """α_i of step i: 1 + (α - 1) min(1, (i + 1) / ramp), and α at the last step whatever the ramp (ramp 0: α)."""
  if ramp <= 0:
    return jnp.float32(alpha)
  frac = jnp.minimum(1.0, (i + 1) / ramp)
  return jnp.where(i >= max_new - 1, alpha, 1.0 + (alpha - 1.0) * frac).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "particles", "max_new", "eos_id", "alpha", "ess",
                                             "resample", "ramp"))
def smc(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, rng: jax.Array, *, particles: int,
        max_new: int, eos_id: int, alpha: float = 1.0, ess: float = 0.5, resample: bool = True, tables=None,
        ramp: int = 0):
  """SMC over `particles` rows per prompt. `tables` = (next_SxV, to_accept_S, accepting_S) of a constraint
  (`lm.decoding.regex`), or None. Returns a dict: ids [B, N, max_new] (eos fill after an end), lengths
  [B, N], log_weights [B, N] (normalised per prompt), log_p [B, N] (the model's log p of each particle),
  log_z [B] (log Ẑ), resamples [B], min_ess [B] (as a fraction of N), forward_passes (model calls over all
  rows). `resample=False` keeps the weights but never resamples (importance sampling). `ramp` > 0 bridges
  (Power-SMC): step i targets p(x_{1:i})^α_i, α_i rising linearly from 1 to α over the first `ramp` units
  (and α at the last step), so the incremental weight gains (α_i - α_{i-1}) log p(x_{1:i-1}); the final
  target and Ẑ's expectation are unchanged, while early resampling sees milder weights."""
  B, P = prompt_BxP.shape
  N, L = particles, max_new
  R = B * N
  lp_BxV, cache, position_B = steps.prefill(model, params, prompt_BxP, lengths_B, P + L)
  axes = steps.batch_axes(model, P + L)
  cache = steps.repeat_rows(cache, axes, N)
  carry = dict(lp=jnp.repeat(lp_BxV, N, axis=0), cache=cache, position=jnp.repeat(position_B, N),
               ids=jnp.full((R, L), eos_id, jnp.int32), length=jnp.zeros((R,), jnp.int32),
               done=jnp.zeros((R,), bool), state=jnp.zeros((R,), jnp.int32), log_w=jnp.zeros((R,), jnp.float32),
               log_p=jnp.zeros((R,), jnp.float32), log_z=jnp.zeros((B,), jnp.float32),
               resamples=jnp.zeros((B,), jnp.int32), min_ess=jnp.ones((B,), jnp.float32), rng=rng)

  def body(i, c):
    rng, draw, pick = jax.random.split(c["rng"], 3)
    a_i = _ramped(alpha, ramp, L, i)
    target_RxV = _masked(c["lp"], a_i, c["state"], L - i, eos_id, tables)
    log_inc_R = jax.nn.logsumexp(target_RxV, axis=-1)
    unit_R = jax.random.categorical(draw, target_RxV, axis=-1).astype(jnp.int32)
    live = ~c["done"]
    unit_R = jnp.where(live, unit_R, eos_id)
    bridge_R = (a_i - _ramped(alpha, ramp, L, i - 1)) * c["log_p"] if ramp > 0 else 0.0  # finished rows too
    log_w = c["log_w"] + jnp.where(live, log_inc_R, 0.0) + bridge_R
    log_p = c["log_p"] + jnp.where(live, jnp.take_along_axis(c["lp"], unit_R[:, None], axis=1)[:, 0], 0.0)
    ids = c["ids"].at[:, i].set(unit_R)
    length = c["length"] + live.astype(jnp.int32)
    state = c["state"]
    if tables is not None:
      state = jnp.where(live & (unit_R != eos_id), tables[0][state, unit_R], state)
    done = c["done"] | (unit_R == eos_id)
    lp, cache = jax.lax.cond(i < L - 1, lambda k: steps.step(model, params, k, unit_R, c["position"] + i),
                             lambda k: (c["lp"], k), c["cache"])  # nothing reads the last step's output

    log_w_BxN = log_w.reshape(B, N)
    ess_B = jnp.exp(2 * jax.nn.logsumexp(log_w_BxN, -1) - jax.nn.logsumexp(2 * log_w_BxN, -1)) / N
    go_B = (ess_B < ess) & (i < L - 1) if resample else jnp.zeros((B,), bool)
    ancestors_BxN = jnp.where(go_B[:, None], _systematic(pick, log_w_BxN), jnp.arange(N)[None, :])
    rows_R = (jnp.arange(B)[:, None] * N + ancestors_BxN).reshape(-1)
    log_z = c["log_z"] + jnp.where(go_B, jax.nn.logsumexp(log_w_BxN, -1) - jnp.log(N), 0.0)
    log_w = jnp.where(jnp.repeat(go_B, N), 0.0, log_w)
    gather = lambda x: jnp.take(x, rows_R, axis=0)  # noqa: E731
    cache = jax.lax.cond(jnp.any(go_B), lambda k: steps.take_rows(k, axes, rows_R), lambda k: k, cache)
    return dict(lp=gather(lp), cache=cache, position=c["position"], ids=gather(ids), length=gather(length),
                done=gather(done), state=gather(state), log_w=log_w, log_p=gather(log_p), log_z=log_z,
                resamples=c["resamples"] + go_B.astype(jnp.int32), min_ess=jnp.minimum(c["min_ess"], ess_B), rng=rng)

  c = jax.lax.fori_loop(0, L, body, carry)
  log_w_BxN = c["log_w"].reshape(B, N)
  log_z = c["log_z"] + jax.nn.logsumexp(log_w_BxN, -1) - jnp.log(N)
  return dict(ids=c["ids"].reshape(B, N, L), lengths=c["length"].reshape(B, N),
              log_weights=log_w_BxN - jax.nn.logsumexp(log_w_BxN, -1, keepdims=True),
              log_p=c["log_p"].reshape(B, N), log_z=log_z, resamples=c["resamples"], min_ess=c["min_ess"],
              forward_passes=L)


def mh_log_accept(alpha: float, log_p_new, log_p_old, log_q_new, log_q_old):
  """log r of an MH move that redrew a suffix: the four sums run over the redrawn positions only."""
  return alpha * (log_p_new - log_p_old) + log_q_old - log_q_new


@functools.partial(jax.jit, static_argnames=("model", "max_new", "eos_id", "alpha", "blocks", "steps_per_block"))
def power_mh(model: nn.Module, params, prompt_BxP: jax.Array, lengths_B: jax.Array, rng: jax.Array, *,
             max_new: int, eos_id: int, alpha: float, blocks: int = 1, steps_per_block: int = 10):
  """One MH chain per prompt row (repeat a prompt for several chains). Returns a dict: ids [B, max_new] (eos
  fill after an end), lengths [B], log_p [B], moves [B] (proposals that redrew something: the position fell
  before the chain's eos) and accepted [B] of them, forward_passes (model calls over all rows: each proposal
  re-runs the continuation)."""
  B, P = prompt_BxP.shape
  L = max_new
  if L % blocks:
    raise ValueError(f"max_new={L} must split into {blocks} equal blocks")
  size = L // blocks
  lp0_BxV, cache0, position_B = steps.prefill(model, params, prompt_BxP, lengths_B, P + L)

  def propose(x_BxL, keep_B, length, rng):
    """Units before keep_B copied, the rest up to `length` drawn from q; per-unit log p and log q
    (0 on the absorbing fill, and past `length`)."""
    def body(j, c):
      lp_BxV, cache, x, lp_x, lq_x, done, rng = c
      rng, draw = jax.random.split(rng)
      lq_BxV = jax.nn.log_softmax(alpha * lp_BxV, axis=-1)
      drawn = jax.random.categorical(draw, lq_BxV, axis=-1).astype(jnp.int32)
      unit = jnp.where(j < keep_B, x[:, j], drawn)
      unit = jnp.where(done | (j >= length), eos_id, unit)
      live = ~done & (j < length)
      pick = lambda t: jnp.take_along_axis(t, unit[:, None], axis=1)[:, 0]  # noqa: E731
      lp_x = lp_x.at[:, j].set(jnp.where(live, pick(lp_BxV), 0.0))
      lq_x = lq_x.at[:, j].set(jnp.where(live, pick(lq_BxV), 0.0))
      x = x.at[:, j].set(unit)
      done = done | (live & (unit == eos_id))
      lp_BxV, cache = steps.step(model, params, cache, unit, position_B + j)
      return lp_BxV, cache, x, lp_x, lq_x, done, rng
    zeros = jnp.zeros((B, L), jnp.float32)
    c = (lp0_BxV, cache0, x_BxL, zeros, zeros, jnp.zeros((B,), bool), rng)
    _, _, x, lp_x, lq_x, _, _ = jax.lax.fori_loop(0, length, body, c)
    return x, lp_x, lq_x

  def block(k, c):
    x, lp_x, lq_x, accepted, moves, rng = c
    length = (k + 1) * size
    rng, grow = jax.random.split(rng)
    x, lp_x, lq_x = propose(x, jnp.full((B,), k * size), length, grow)  # the new block, drawn from q

    def move(_, c):
      x, lp_x, lq_x, accepted, moves, rng = c
      rng, where, draw, coin = jax.random.split(rng, 4)
      t_B = jax.random.randint(where, (B,), 0, length)
      # A position past x's eos redraws nothing (the fill): accepted trivially, not counted as a move.
      moves = moves + (t_B < _lengths(x, eos_id)).astype(jnp.int32)
      x_new, lp_new, lq_new = propose(x, t_B, length, draw)
      after = jnp.arange(L)[None, :] >= t_B[:, None]
      total = lambda a: jnp.sum(jnp.where(after, a, 0.0), axis=1)  # noqa: E731
      log_r = mh_log_accept(alpha, total(lp_new), total(lp_x), total(lq_new), total(lq_x))
      ok = jnp.log(jax.random.uniform(coin, (B,))) < log_r
      keep = lambda new, old: jnp.where(ok[:, None], new, old)  # noqa: E731
      real = t_B < _lengths(x, eos_id)
      return (keep(x_new, x), keep(lp_new, lp_x), keep(lq_new, lq_x), accepted + (ok & real).astype(jnp.int32),
              moves, rng)
    return jax.lax.fori_loop(0, steps_per_block, move, (x, lp_x, lq_x, accepted, moves, rng))

  zeros = jnp.zeros((B, L), jnp.float32)
  none = jnp.zeros((B,), jnp.int32)
  x, lp_x, _, accepted, moves, _ = jax.lax.fori_loop(
      0, blocks, block, (jnp.full((B, L), eos_id, jnp.int32), zeros, zeros, none, none, rng))
  passes = 1 + sum((k + 1) * size * (1 + steps_per_block) for k in range(blocks))
  return dict(ids=x, lengths=_lengths(x, eos_id), log_p=jnp.sum(lp_x, axis=1), accepted=accepted, moves=moves,
              forward_passes=passes)


def _lengths(x_BxL: jax.Array, eos_id: int) -> jax.Array:
  """Units of each row up to and including its first eos (all of them without one)."""
  ends = jnp.cumsum((x_BxL == eos_id).astype(jnp.int32), axis=1)
  return jnp.sum((ends == 0) | ((ends == 1) & (x_BxL == eos_id)), axis=1).astype(jnp.int32)
