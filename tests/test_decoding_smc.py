"""Power sampling (MH and SMC) and constrained SMC against every sequence of a tiny model, enumerated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lm.decoding import exact, smc

V, EOS = 3, 2


def _prompts(rows):
  return jnp.zeros((rows, 1), jnp.int32), jnp.ones((rows,), jnp.int32)  # the enumeration's context [0]


def _sequences(ids_RxL, lengths_R):
  return [tuple(int(u) for u in row[:n]) for row, n in zip(np.asarray(ids_RxL), np.asarray(lengths_R))]


def _suffixes(next_lp, prefix, units, alpha):
  """Every continuation of `prefix` within `units` more units: (suffix, log p, log q), q at temperature 1/α."""
  shifted = lambda ps: next_lp([prefix + p for p in ps])  # noqa: E731
  lp = dict(exact.enumerate_sequences(shifted, EOS, units))

  def tempered(ps):
    a = alpha * shifted(ps)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))
  return [(y, lp[y], lq) for y, lq in exact.enumerate_sequences(tempered, EOS, units)]


def test_token_temperature_is_not_sequence_temperature(tiny_token_model):
  _, _, _, next_lp = tiny_token_model(V)
  seqs = exact.enumerate_sequences(next_lp, EOS, 3)
  power = exact.power_distribution(seqs, 4.0)
  token = exact.token_temperature_distribution(next_lp, EOS, 3, 4.0)
  assert set(power) == set(token) and abs(sum(token.values()) - 1) < 1e-12
  assert 0.5 * sum(abs(power[x] - token[x]) for x in power) > 0.01


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_mh_transition_keeps_the_power_distribution_stationary(tiny_token_model, alpha):
  """The kernel of the sampler's move (position uniform, suffix from q at temperature 1/α, absorbing eos), with
  its acceptance rule `smc.mh_log_accept`, every proposal enumerated: π_α K = π_α to 1e-10. (The jitted
  sampler's own proposals are checked against π_α by sampling, in the next test.)"""
  L = 3
  _, _, _, next_lp = tiny_token_model(V)
  seqs = exact.enumerate_sequences(next_lp, EOS, L)
  index = {x: i for i, (x, _) in enumerate(seqs)}
  K = np.zeros((len(seqs), len(seqs)))
  for x, _ in seqs:
    for t in range(L):
      if t >= len(x):  # past the eos: the proposal copies the whole sequence
        K[index[x], index[x]] += 1 / L
        continue
      options = _suffixes(next_lp, x[:t], L - t, alpha)
      old = next(s for s in options if s[0] == x[t:])
      for y, lp_y, lq_y in options:
        accept = min(1.0, float(np.exp(smc.mh_log_accept(alpha, lp_y, old[1], lq_y, old[2]))))
        K[index[x], index[x[:t] + y]] += np.exp(lq_y) / L * accept
        K[index[x], index[x]] += np.exp(lq_y) / L * (1 - accept)
  np.testing.assert_allclose(K.sum(1), 1.0, atol=1e-12)
  pi = exact.power_distribution(seqs, alpha)
  pi_S = np.array([pi[x] for x, _ in seqs])
  np.testing.assert_allclose(pi_S @ K, pi_S, atol=1e-10)


def test_mh_sampler_reaches_the_power_distribution(tiny_token_model):
  L, alpha, chains = 3, 3.0, 3000
  _, decode_model, params, next_lp = tiny_token_model(V)
  pi = exact.power_distribution(exact.enumerate_sequences(next_lp, EOS, L), alpha)
  out = smc.power_mh(decode_model, params, *_prompts(chains), jax.random.PRNGKey(0), max_new=L, eos_id=EOS,
                     alpha=alpha, blocks=1, steps_per_block=12)
  got = _sequences(out["ids"], out["lengths"])
  counts = {x: got.count(x) for x in pi}
  assert sum(counts.values()) == chains  # every chain ends in Ω(L)
  lookup = dict(exact.enumerate_sequences(next_lp, EOS, L))
  np.testing.assert_allclose(np.asarray(out["log_p"]), [lookup[x] for x in got], atol=1e-4)
  tv = 0.5 * sum(abs(counts[x] / chains - pi[x]) for x in pi)
  token = exact.token_temperature_distribution(next_lp, EOS, L, alpha)
  assert tv < 0.04 < 0.5 * sum(abs(token[x] - pi[x]) for x in pi)
  assert 0 < int(out["accepted"].sum()) < int(out["moves"].sum()) <= chains * 12 and out["forward_passes"] == 1 + L * 13


@pytest.mark.parametrize("resample,ramp", [(True, 0), (False, 0), (True, 5)])
def test_power_smc_normaliser_is_unbiased(tiny_token_model, resample, ramp):
  """Ẑ is unbiased for Σ p^α; with a ramp longer than the run (α 1.4, 1.8, then 3 at the last step) too."""
  L, alpha, runs = 3, 3.0, 600
  _, decode_model, params, next_lp = tiny_token_model(V)
  z = np.exp(exact.log_partition(exact.enumerate_sequences(next_lp, EOS, L), alpha))
  out = smc.smc(decode_model, params, *_prompts(runs), jax.random.PRNGKey(1), particles=4, max_new=L, eos_id=EOS,
                alpha=alpha, ess=0.9, resample=resample, ramp=ramp)
  z_hat = np.exp(np.asarray(out["log_z"], np.float64))
  assert abs(z_hat.mean() - z) < 4 * z_hat.std() / np.sqrt(runs)
  assert (int(out["resamples"].sum()) > 0) == resample


# The constraint "an even number of unit 1" as unit-level tables: state = parity; eos only when even.
PARITY = (jnp.array([[0, 1, -1], [1, 0, -1]], jnp.int32), jnp.array([0, 1], jnp.int32), jnp.array([True, False]))


def _even(x):
  return sum(u == 1 for u in x) % 2 == 0


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_constrained_smc_estimates_the_constraints_probability(tiny_token_model, alpha):
  """Ẑ is unbiased for Σ_{x in C} p(x)^α: P(C) at α = 1, power and constraint together at α = 2."""
  L, runs = 4, 600
  _, decode_model, params, next_lp = tiny_token_model(V)
  members = [(x, lp) for x, lp in exact.enumerate_sequences(next_lp, EOS, L) if _even([u for u in x if u != EOS])]
  z = np.exp(exact.log_partition(members, alpha))
  out = smc.smc(decode_model, params, *_prompts(runs), jax.random.PRNGKey(2), particles=4, max_new=L, eos_id=EOS,
                tables=PARITY, alpha=alpha)
  z_hat = np.exp(np.asarray(out["log_z"], np.float64))
  assert 0 < z < 1 and abs(z_hat.mean() - z) < 4 * z_hat.std() / np.sqrt(runs)
  assert all(_even(x) for x in _sequences(out["ids"].reshape(-1, L), out["lengths"].reshape(-1)))


def test_constrained_smc_samples_the_conditional_and_masking_does_not(tiny_token_model):
  L, runs = 4, 1500
  _, decode_model, params, next_lp = tiny_token_model(V)
  want, _ = exact.conditional(exact.enumerate_sequences(next_lp, EOS, L), lambda x: _even([u for u in x if u != EOS]))
  support = sorted(want, key=want.get, reverse=True)

  def chi2(samples):
    counts = np.array([samples.count(x) for x in support], np.float64)
    expected = np.array([want[x] for x in support]) * len(samples)
    big = expected >= 5  # pool the rare cells, as the test asks
    o = np.append(counts[big], counts[~big].sum())
    e = np.append(expected[big], expected[~big].sum())
    return stats.chisquare(o, e).pvalue

  out = smc.smc(decode_model, params, *_prompts(runs), jax.random.PRNGKey(3), particles=32, max_new=L, eos_id=EOS,
                tables=PARITY, ess=0.5)
  pick = jax.random.categorical(jax.random.PRNGKey(4), out["log_weights"], axis=-1)  # one particle per run, ∝ w
  chosen = [s[int(k)] for s, k in zip(
      [_sequences(i, n) for i, n in zip(np.asarray(out["ids"]), np.asarray(out["lengths"]))], np.asarray(pick))]
  assert chi2(chosen) > 1e-3
  masked = smc.smc(decode_model, params, *_prompts(runs), jax.random.PRNGKey(3), particles=1, max_new=L, eos_id=EOS,
                   tables=PARITY, resample=False)
  assert chi2(_sequences(masked["ids"][:, 0], masked["lengths"][:, 0])) < 1e-6
