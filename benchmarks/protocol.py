"""The protocol every benchmark follows: one convention for statistics, selection and what a result records.

Statistics over seeds are the mean, the sample std (ddof=1) and the 95% Student-t interval of the mean; where
seeds pair (same train.seed: same init and data order), a paired t-test; a success/failure outcome is a rate
with its Wilson 95% interval, two rates compared by Fisher's exact test. Choices (a learning rate, a shape)
are made on val with `select`; test is what gets reported. `record` is the JSON every benchmark writes.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys

import numpy as np
from scipy import stats  # a dependency of jax, so nothing new to install

LEVEL = 0.95
Z = 1.959963984540054  # the normal quantile at 0.975, for Wilson intervals
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _t_interval(mean: float, se: float, df: float) -> tuple[float | None, float | None]:
  if not df > 0 or not math.isfinite(se):
    return None, None
  half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
  return mean - half, mean + half


def _t_test(mean: float, se: float, df: float) -> tuple[float | None, float | None]:
  """t statistic and two-sided p; a zero spread gives p 0 (a difference) or 1 (none), t undefined."""
  if not df > 0:
    return None, None
  if se == 0:
    return None, 0.0 if mean != 0 else 1.0
  t = mean / se
  return t, float(2 * stats.t.sf(abs(t), df))


def summary(values) -> dict:
  """n, mean, sample std and the 95% t-interval of the mean (std and interval None for one value)."""
  x = np.asarray(values, np.float64)
  n = len(x)
  if n == 0:
    raise ValueError("summary of no values")
  mean = float(x.mean())
  std = float(x.std(ddof=1)) if n > 1 else None
  lo, hi = _t_interval(mean, std / math.sqrt(n), n - 1) if n > 1 else (None, None)
  return dict(n=n, mean=mean, std=std, lo=lo, hi=hi, values=[float(v) for v in x])


def paired(a, b) -> dict:
  """Mean of a - b over paired seeds, its sample std and 95% interval, the paired t statistic and two-sided p."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired: {len(a)} values against {len(b)}; pair them by seed first")
  d = summary(a - b)
  se = d["std"] / math.sqrt(d["n"]) if d["n"] > 1 else math.inf
  t, p = _t_test(d["mean"], se, d["n"] - 1)
  return dict(n=d["n"], mean=d["mean"], std=d["std"], lo=d["lo"], hi=d["hi"], t=t, p=p)


def welch(a, b) -> dict:
  """Unpaired arms: difference of means a - b, its 95% interval and Welch's t-test (Welch-Satterthwaite df)."""
  a, b = summary(a), summary(b)
  if a["n"] < 2 or b["n"] < 2:
    return dict(mean=a["mean"] - b["mean"], lo=None, hi=None, df=None, t=None, p=None)
  va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
  diff, se = a["mean"] - b["mean"], math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1)) if se > 0 else math.inf
  lo, hi = _t_interval(diff, se, df)
  t, p = _t_test(diff, se, df)
  return dict(mean=diff, lo=lo, hi=hi, df=df, t=t, p=p)


def rate(successes: int, n: int) -> dict:
  """A success/failure outcome: k of n, the rate and its Wilson score 95% interval (Wilson 1927)."""
  k, n = int(successes), int(n)
  if not 0 <= k <= n or n == 0:
    raise ValueError(f"rate: {k} successes of {n}")
  p = k / n
  centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
  half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
  return dict(k=k, n=n, rate=p, lo=max(0.0, centre - half), hi=min(1.0, centre + half))


def fisher(k1: int, n1: int, k2: int, n2: int) -> float:
  """Two-sided Fisher exact p of k1/n1 against k2/n2: the probability, given the margins, of every table no
  more likely than the one observed."""
  if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
    raise ValueError(f"fisher: {k1} of {n1} against {k2} of {n2}")
  successes = k1 + k2
  # Every table with these margins has probability count / C(n1 + n2, successes): comparing the integer
  # counts decides "no more likely" exactly, with no rounding tolerance.
  count = {x: math.comb(n1, x) * math.comb(n2, successes - x)
           for x in range(max(0, successes - n2), min(successes, n1) + 1)}
  return sum(c for c in count.values() if c <= count[k1]) / math.comb(n1 + n2, successes)


def select(grid: dict, key: str = "val", report: str = "test", lower_is_better: bool = True) -> dict:
  """Choose a setting of `grid` ({setting: {key: value or per-seed values, report: ...}}) by its mean `key`;
  the chosen setting's `report` metric is the result. Returns the choice, both metrics and why."""
  if not grid:
    raise ValueError("select: an empty grid")
  means = {s: float(np.mean(r[key])) for s, r in grid.items()}
  chosen = (min if lower_is_better else max)(means, key=means.get)
  order = "lowest" if lower_is_better else "highest"
  reason = (f"{chosen} has the {order} mean {key} ({means[chosen]:.4g}) of {len(grid)} settings: "
            + ", ".join(f"{s} {m:.4g}" for s, m in means.items()))
  return dict(chosen=chosen, by=key, reason=reason, **{key: summary(np.atleast_1d(grid[chosen][key])),
                                                     report: summary(np.atleast_1d(grid[chosen][report]))})


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def _code() -> dict:
  status = _git("status", "--porcelain", "--untracked-files=no")
  return dict(commit=_git("rev-parse", "HEAD"), dirty=None if status is None else bool(status))


# The commit when the benchmark started (this module is imported at its start): the code it runs, even when
# the checkout moves on during a long run.
_CODE = _code()


def machine() -> dict:
  """Where a benchmark ran: platform, cores and the JAX backend and devices."""
  import jax  # pylint: disable=import-outside-toplevel  # only a benchmark that records needs it
  return dict(platform=platform.platform(), cpu_count=os.cpu_count(), backend=jax.default_backend(),
              devices=[d.device_kind for d in jax.devices()], jax=jax.__version__, numpy=np.__version__)


def meta(command: str | list[str] | None = None) -> dict:
  """Commit at the start (and whether tracked files differed from it), command, machine and UTC date of a run."""
  if command is None or isinstance(command, list):
    argv = command if command is not None else sys.argv
    command = shlex.join(["python", *argv])
  return dict(**_CODE, command=command, machine=machine(),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def record(command: str | list[str] | None, settings: dict, results: dict) -> dict:
  """The JSON a benchmark writes: `meta` (commit, command, machine, date), every setting, the results."""
  return dict(meta(command), settings=settings, results=results)


def write(path, rec: dict) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(rec, indent=2, default=str) + "\n")
  return path


def text(s: dict | None, digits: int = 3) -> str:
  """`mean ± std [lo, hi]` of a `summary` (or of a `paired`/`welch` difference) for printed tables."""
  if not s:
    return "-"
  out = f"{s['mean']:.{digits}f}"
  if s.get("std") is not None:
    out += f" ± {s['std']:.{digits}f}"
  if s.get("lo") is not None:
    out += f" [{s['lo']:.{digits}f}, {s['hi']:.{digits}f}]"
  return out
