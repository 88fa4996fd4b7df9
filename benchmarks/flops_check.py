"""FLOPs per training step three ways: the family's analytic count over the padded step (what `train_flops` logs),
XLA's count of the same step compiled for this machine's CPUs (and as lowered, before XLA's passes), and the
analytic count at the positions holding data (`train_flops_data`), so the padding a family computes shows.

Run:
  python benchmarks/flops_check.py                                    # every family's tiny experiment and heads
  python benchmarks/flops_check.py --experiments byte_hat:small,concept_sllm:tiny
Writes JSON to --out (default benchmarks/results/flops_check.json) and prints one table.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import aot, families  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "flops_check.json"
EXPERIMENTS = ("token_ntp:tiny", "byte_flat:tiny", "byte_hat:tiny", "concept_lcm:tiny", "concept_sllm:tiny",
               "token_mtp:tiny", "token_dsmtp:tiny", "token_top:tiny", "token_ftp:tiny")


def check(spec: str) -> dict:
  config = families.load_config(spec)
  compiled = aot.cpu_flops(config)
  lowered = aot.cpu_flops(config, optimized=False)
  data = run_lib.load_data(config)
  logged = run_lib.train_flops_per_step(run_lib.build_run(config, data.tokenizer), data)
  analytic = compiled["analytic_flops_per_step"]
  return dict(analytic=analytic, compiled=compiled["compiled_flops_per_step"],
              lowered=lowered["lowered_flops_per_step"], logged=logged["flops_per_step"],
              data=logged["flops_per_step_data"], bytes_per_step=logged["bytes_per_step"],
              bytes_per_step_rel_interval=logged["bytes_per_step_rel_interval"],
              compiled_over_analytic=compiled["compiled_flops_per_step"] / analytic,
              lowered_over_compiled=lowered["lowered_flops_per_step"] / compiled["compiled_flops_per_step"],
              executed_over_data=logged["flops_per_step"] / logged["flops_per_step_data"])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--experiments", default=",".join(EXPERIMENTS))
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  rows = {}
  print(f"{'experiment':<20}{'analytic':>11}{'compiled':>11}{'comp/anal':>10}{'low/comp':>10}{'logged':>11}"
        f"{'exec/data':>10}{'bytes/step':>12}", flush=True)
  for spec in [s.strip() for s in args.experiments.split(",") if s.strip()]:
    r = rows[spec] = check(spec)
    print(f"{spec:<20}{r['analytic']:>11.4g}{r['compiled']:>11.4g}{r['compiled_over_analytic']:>10.3f}"
          f"{r['lowered_over_compiled']:>10.4f}{r['logged']:>11.4g}{r['executed_over_data']:>10.3f}"
          f"{r['bytes_per_step']:>12.1f}", flush=True)
  protocol.write(args.out, protocol.record(sys.argv, dict(experiments=list(rows)), rows))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
