"""benchmarks/power_exact.py's exact accuracies against a brute-force numpy reference on a hand-made model."""

import itertools
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import power_exact  # noqa: E402

V, EOS, N = 3, 2, 3


def _next_log_probs(prefixes):
  """Conditionals that depend on the whole prefix (seeded by it), float64 [n, V]; the seed offset is one where
  p^4 and temperature 1/4 disagree by far (0.43 against 0.09 on (1, eos))."""
  out = []
  for p in prefixes:
    logits = 1.5 * np.random.default_rng((hash(p) + 1) % 2 ** 32).normal(size=V)
    out.append(logits - np.log(np.exp(logits).sum()))
  return np.array(out)


def _brute(alpha):
  """Every x in Ω(N) with p(x), p(x)^α / Z and the tempered q(x), by explicit products."""
  space = [x + (EOS,) for k in range(N) for x in itertools.product([u for u in range(V) if u != EOS], repeat=k)]
  space += list(itertools.product([u for u in range(V) if u != EOS], repeat=N))
  p, q = {}, {}
  for x in space:
    rows = _next_log_probs([x[:i] for i in range(len(x))])
    p[x] = np.exp(sum(rows[i, u] for i, u in enumerate(x)))
    t = np.exp(alpha * rows)
    q[x] = np.prod([t[i, u] / t[i].sum() for i, u in enumerate(x)])
  z = sum(v ** alpha for v in p.values())
  return p, {x: v ** alpha / z for x, v in p.items()}, q


def _greedy():
  x = ()
  while len(x) < N and (not x or x[-1] != EOS):
    x += (int(np.argmax(_next_log_probs([x])[0])),)
  return x


@pytest.mark.parametrize("target", [(EOS,), (0, EOS), (1, EOS), (0, 0, EOS), (1, 0, 1)])
def test_exact_accuracies_match_brute_force(target):
  got = power_exact.accuracies(_next_log_probs, EOS, N, target, alphas=(2.0, 4.0))
  for alpha in (2.0, 4.0):
    p, power, q = _brute(alpha)
    assert abs(sum(p.values()) - 1) < 1e-12 and abs(sum(q.values()) - 1) < 1e-12
    np.testing.assert_allclose(got["p"], p[target], rtol=1e-10)
    np.testing.assert_allclose(got[f"power{alpha:g}"], power[target], rtol=1e-10)
    np.testing.assert_allclose(got[f"power{alpha:g}_hi"], power[target], rtol=1e-10)
    np.testing.assert_allclose(got[f"temp{alpha:g}"], q[target], rtol=1e-10)
    if target == (1, EOS) and alpha == 4.0:  # the case that tells the two apart
      assert power[target] > 4 * q[target]
  assert got["greedy"] == float(_greedy() == target)
  assert got["argmax"] == float(max(p, key=p.get) == target) and got["argmax_certified"]
  assert got["sequences"] == len(p) and abs(got["mass_left"]) < 1e-12


def test_restricted_enumeration_bounds_the_power_accuracy():
  """Following only units {0, eos}: p and temperature stay exact, p^α lies in the reported interval."""
  p = _brute(1.0)[0]
  target = max((x for x in p if all(u in (0, EOS) for u in x) and x[-1] == EOS), key=p.get)
  got = power_exact.accuracies(_next_log_probs, EOS, N, target, allowed={0, EOS}, alphas=(2.0, 4.0))
  for alpha in (2.0, 4.0):
    p, power, q = _brute(alpha)
    np.testing.assert_allclose(got["p"], p[target], rtol=1e-10)
    np.testing.assert_allclose(got[f"temp{alpha:g}"], q[target], rtol=1e-10)
    assert got[f"power{alpha:g}"] <= power[target] * (1 + 1e-10)
    assert power[target] <= got[f"power{alpha:g}_hi"] * (1 + 1e-10)
  kept = sum(v for x, v in p.items() if all(u in (0, EOS) for u in x))
  np.testing.assert_allclose(got["mass_left"], 1 - kept, rtol=1e-9)
  assert got["greedy"] == float(_greedy() == target)
  if got["argmax_certified"]:
    assert got["argmax"] == float(max(p, key=p.get) == target)
