"""Launchers: the same `lm train` on several local processes, on every worker of a TPU pod, or under SLURM.

Each target is a module of pure functions that build the commands (or the script), so what a launcher would
run can be printed (`--dry-run`) and tested without running anything; `lm launch TARGET ...` dispatches here.
"""

from __future__ import annotations

import pathlib


def train_argv(experiment: str | None, workdir: str, overrides: list[str], spec: str | None = None,
               restart: bool = False) -> list[str]:
  """The arguments after `lm` that every process runs: `train EXPERIMENT --workdir DIR --config.K=V ...`."""
  argv = ["train", experiment] if experiment else ["train", f"--config={spec}"]
  argv += ["--workdir", str(workdir), *(f"--config.{o}" for o in overrides)]
  return argv + ["--restart"] if restart else argv


def run_name(experiment: str | None, spec: str | None = None) -> str:
  """`token_ntp:tiny` or `experiments/token_ntp.py:tiny` -> `token_ntp_tiny` (job names, never paths)."""
  name, _, arg = (experiment or spec or "run").partition(":")
  stem = pathlib.PurePath(name).stem
  return f"{stem}_{arg}" if arg else stem
