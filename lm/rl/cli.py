"""`lm rl EXPERIMENT[:ARG] --workdir DIR [--config.a.b=VALUE ...]`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
  from lm import config as config_lib
  rl = sub.add_parser("rl", help="sequence-level training (policy gradients on rewarded samples, or DPO) of "
                      "EXPERIMENT; --config.rl.* sets it (lm/rl/loop.py)", epilog=config_lib.overrides_help(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  rl.add_argument("experiment", nargs="?", help="as for `lm train` (its own `lm train` run is the init unless "
                  "--config.rl.init_from names one)")
  rl.add_argument("--workdir", help="where WORKDIR/init and WORKDIR/rl go (default runs/NAME)")


def run(args, config) -> int:
  from lm.rl import loop
  workdir = args.workdir or f"runs/{config.experiment.replace(':', '_')}"
  result = loop.train(config, workdir)
  print(f"rl: {loop.summary_line(result)}", flush=True)
  return 0
