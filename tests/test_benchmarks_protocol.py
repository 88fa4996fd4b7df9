"""benchmarks/protocol.py against values worked out by hand or in closed form."""

import datetime
import math
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
  import protocol  # noqa: E402  # benchmarks/ is not a package
finally:
  sys.path.remove(str(ROOT / "benchmarks"))


def test_summary_is_the_sample_std_and_t_interval():
  s = protocol.summary([1, 2, 3, 4, 5])
  # std sqrt(2.5); t(0.975, 4 df) = 2.7764451051977987 (tables); half-width t * std / sqrt(5).
  half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
  assert (s["n"], s["mean"], s["std"]) == (5, 3.0, pytest.approx(math.sqrt(2.5)))
  assert (s["lo"], s["hi"]) == (pytest.approx(3 - half, abs=1e-12), pytest.approx(3 + half, abs=1e-12))
  one = protocol.summary([0.7])
  assert one["std"] is None and one["lo"] is None and one["values"] == [0.7]


def test_paired_matches_the_closed_form_at_two_df():
  d = protocol.paired([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])  # differences 1, 2, 3
  t = 2 / (1 / math.sqrt(3))
  # Student t with 2 df: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2.
  assert (d["mean"], d["std"], d["t"]) == (2.0, pytest.approx(1.0), pytest.approx(t))
  assert d["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10)
  assert protocol.paired([1, 2], [0, 1])["p"] == 0.0  # every seed differs by exactly 1
  assert protocol.paired([1, 2], [1, 2])["p"] == 1.0
  with pytest.raises(ValueError, match="pair them by seed"):
    protocol.paired([1, 2], [1])


def test_welch_equal_spreads_has_2n_minus_2_df():
  w = protocol.welch([1, 2, 3], [4, 5, 6])
  t = -3 / math.sqrt(2 / 3)
  # Student t with 4 df: P(|T| > |t|) = 1 - (t / sqrt(t^2 + 4)) (1 + 2 / (t^2 + 4)).
  x = abs(t) / math.sqrt(t * t + 4)
  assert (w["mean"], w["df"], w["t"]) == (-3.0, pytest.approx(4.0), pytest.approx(t))
  assert w["p"] == pytest.approx(1 - x * (1 + 2 / (t * t + 4)), rel=1e-10)


def test_wilson_interval():
  z2 = protocol.Z ** 2
  assert protocol.rate(0, 10)["hi"] == pytest.approx(z2 / (10 + z2))  # k = 0: upper bound z^2 / (n + z^2)
  five = protocol.rate(5, 10)
  assert (five["rate"], five["lo"], five["hi"]) == (0.5, pytest.approx(0.236593, abs=1e-6),
                                                    pytest.approx(0.763407, abs=1e-6))
  with pytest.raises(ValueError):
    protocol.rate(3, 2)


def test_fisher_against_hand_enumeration():
  # 3 of 3 against 0 of 3: margins 3 successes in 6; P(x = 3) = P(x = 0) = 1 / C(6, 3) = 1/20 each.
  assert protocol.fisher(3, 3, 0, 3) == pytest.approx(0.1)
  assert protocol.fisher(4, 4, 0, 4) == pytest.approx(2 / 70)  # Fisher's tea: 1 / C(8, 4) each tail
  # 2 of 4 against 0 of 4: x (arm 1's share of 2 successes in 8) = 0, 1, 2 with P = 6/28, 16/28, 6/28.
  assert protocol.fisher(2, 4, 0, 4) == pytest.approx((6 + 6) / 28)
  assert protocol.fisher(1, 2, 1, 2) == 1.0


def test_select_chooses_on_val_and_reports_test():
  grid = {"1e-3": dict(val=[2.0, 2.1], test=[2.2, 2.3]), "3e-3": dict(val=[1.9, 2.0], test=[2.5, 2.6])}
  s = protocol.select(grid)
  # Chosen by val although its test is worse: the test figure is reported, never used to choose.
  assert s["chosen"] == "3e-3" and s["test"]["mean"] == pytest.approx(2.55) and "lowest mean val" in s["reason"]
  assert protocol.select({"a": dict(val=0.1, test=0.2), "b": dict(val=0.3, test=0.1)},
                         lower_is_better=False)["chosen"] == "b"


def test_record_says_where_and_when():
  r = protocol.record(["benchmarks/x.py", "--seeds", "0,1"], dict(lr=1e-3), dict(bpb=[1.0]))
  assert r["command"] == "python benchmarks/x.py --seeds 0,1" and r["settings"] == dict(lr=1e-3)
  assert len(r["commit"]) == 40 and isinstance(r["dirty"], bool)
  assert r["machine"]["cpu_count"] >= 1 and r["machine"]["backend"] == "cpu"
  assert datetime.datetime.fromisoformat(r["date"]).tzinfo is not None
