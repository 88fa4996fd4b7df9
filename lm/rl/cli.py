"""`lm rl EXPERIMENT[:ARG] --workdir DIR [--config.a.b=VALUE ...] [--coordinator HOST:PORT --num-processes N
--process-id I]`."""

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
  rl.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run (as `lm train`)")
  rl.add_argument("--num-processes", type=int, help="processes in the run (with --coordinator)")
  rl.add_argument("--process-id", type=int, help="this process's index, 0 to N-1 (with --coordinator)")


def run(args, config) -> int:
  from lm import parallel
  parallel.check_distributed_args(args.coordinator, args.num_processes, args.process_id)
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)  # before any device use
  from lm.rl import loop
  workdir = args.workdir or f"runs/{config.experiment.replace(':', '_')}"
  result = loop.train(config, workdir)
  print(f"rl: {loop.summary_line(result)}", flush=True)
  return 0
