"""Launchers: the same `lm train` on several local processes, on every worker of a TPU pod, or under SLURM.

Each target is a module of pure functions that build the commands (or the script), so what a launcher would
run can be printed (`--dry-run`) and tested without running anything; `lm launch TARGET ...` dispatches here.
"""

from __future__ import annotations

import argparse
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


def add_parser(subparsers) -> None:
  """`lm launch local|tpu|slurm ...`: the launch command's arguments, added to the `lm` parser."""
  la = subparsers.add_parser("launch", help="run `lm train` on several local processes, a TPU pod or SLURM")
  targets = la.add_subparsers(dest="target", required=True)

  def target(name: str, help: str) -> argparse.ArgumentParser:
    tp = targets.add_parser(name, help=help)
    tp.add_argument("experiment", nargs="?", help="as for `lm train`; --config.a.b=VALUE overrides too")
    tp.add_argument("--workdir", required=True, help="the run's workdir (shared by all hosts on a cluster)")
    tp.add_argument("--restart", action="store_true", help="passed on to `lm train`")
    return tp

  lo = target("local", "N processes on this host with a loopback coordinator (fake hosts on CPU)")
  lo.add_argument("--processes", type=int, required=True)
  lo.add_argument("--devices-per-process", type=int,
                  help="CPU devices per process (default: what XLA_FLAGS says, else 1)")
  tpu = target("tpu", "install on every worker of a TPU pod and start the run on all of them (gcloud)")
  tpu.add_argument("--name", required=True, help="the TPU VM (pod slice) name")
  tpu.add_argument("--zone", required=True)
  tpu.add_argument("--project", help="GCP project (default: gcloud's configured project)")
  tpu.add_argument("--repo", help="git URL of this package that every worker can clone")
  tpu.add_argument("--ref", default="main", help="branch, tag or commit of --repo (default main)")
  tpu.add_argument("--skip-install", action="store_true", help="only start the run")
  tpu.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
  sl = target("slurm", "write an sbatch script (one process per GPU via srun) and submit it")
  sl.add_argument("--nodes", type=int, required=True)
  sl.add_argument("--gpus-per-node", type=int, required=True)
  sl.add_argument("--partition")
  sl.add_argument("--time", help="wall-clock limit, e.g. 24:00:00")
  sl.add_argument("--account")
  sl.add_argument("--job-name", help="default lm-EXPERIMENT")
  sl.add_argument("--output", help="SLURM log path (default WORKDIR/slurm-%%j.out)")
  sl.add_argument("--python", default="python", help="the interpreter on the nodes (default python on PATH)")
  sl.add_argument("--dry-run", action="store_true", help="print the script instead of writing and submitting it")
