"""Token-level objectives compared: val bits per byte, star-graph and name-induction probe accuracy, over seeds.

Run:
  python benchmarks/objectives.py                          # tiny variants, 3 seeds (about 3 minutes per objective
                                                           # and seed on a 2-core CPU)
  python benchmarks/objectives.py --quick                  # smoke mode: 1 seed, 5 steps, 16 probe documents
  python benchmarks/objectives.py --variant small --seeds 0,1,2 --objectives ntp,mtp
Writes JSON to --out (default benchmarks/results/objectives.json) and prints a table of mean ± sample std over
seeds.

For each objective NAME with an experiment `experiments/token_NAME.py` (others are skipped with a note) and each
seed S, three runs with `train.seed=S`:
  1. `token_NAME:VARIANT` on its own data (the embedded corpus): final val bits per byte (main head only);
  2. `probe_star:VARIANT` with `objectives` copied from token_NAME: greedy exact-path accuracy on held-out star
     graphs (chance 1/degree), and the teacher-forced accuracy beside it;
  3. `probe_induction:VARIANT`, the same objectives: accuracy on names' later mentions (chance 1/26).
Only the objectives list is copied: model and optimizer settings are the probe experiment's, so the probes
compare objectives at one model size.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import config as config_lib  # noqa: E402
from lm.eval import probes  # noqa: E402
from lm.train import loop  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "objectives.json"
OBJECTIVES = ("ntp", "mtp", "dsmtp", "top", "ftp")
METRICS = (("bpb", "val bpb"), ("star", "star acc"), ("star_tf", "star TF acc"), ("induction", "induction acc"))


def _config(experiment: str, seed: int, steps: int, objectives=None):
  config = config_lib.load_experiment(experiment)
  if objectives is not None:
    config.objectives = [dict(o) for o in objectives]
  config.train.seed = seed
  if steps:
    config.train.update(steps=steps, checkpoint_every=steps, log_every=min(config.train.log_every, steps),
                        eval_every=0)
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(steps // 10, 1))
  config.sample.max_new = 0
  config_lib.validate(config)
  return config


def _plain(x):
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def _train(config, root: str) -> dict:
  workdir = tempfile.mkdtemp(dir=root)
  return loop.train(config, workdir)


def run_one(name: str, variant: str, seed: int, steps: int, n_probe: int, root: str) -> dict:
  """The three runs of one objective and seed -> {metric: value}."""
  t = time.time()
  lm_config = _config(f"token_{name}:{variant}", seed, steps)
  # The objectives as the runs resolve them (a schedule given at fractions of train.steps gets its boundaries).
  resolved = config_lib.resolve_backend_defaults(lm_config, jax.default_backend()).objectives
  out = dict(bpb=_train(lm_config, root)["val_bpb"], objectives=json.loads(json.dumps(resolved, default=_plain)))
  star = _train(_config(f"probe_star:{variant}", seed, steps, lm_config.objectives), root)
  result = probes.star_graph_accuracy(star["run"], star["state"].params, n=n_probe)
  out.update(star=result["accuracy"], star_tf=result["teacher_forced_accuracy"], star_chance=result["chance"])
  ind = _train(_config(f"probe_induction:{variant}", seed, steps, lm_config.objectives), root)
  result = probes.induction_accuracy(ind["run"], ind["state"].params, n=n_probe)
  out.update(induction=result["accuracy"], induction_chance=result["chance"], seconds=time.time() - t)
  return out


def _cell(s: dict) -> str:
  return f"{s['mean']:8.3f} ± {s['std']:6.3f}" if s["std"] is not None else f"{s['mean']:8.3f}{'':9s}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(DEFAULT_OUT))
  p.add_argument("--quick", action="store_true", help="smoke mode: 1 seed, 5 steps, 16 probe documents")
  p.add_argument("--seeds", default="", help="comma-separated train.seed values (default 0,1,2; --quick: 0)")
  p.add_argument("--variant", default="tiny", help="experiment variant for every run (default tiny)")
  p.add_argument("--steps", type=int, default=0, help="override train.steps of every run (0: the variant's)")
  p.add_argument("--objectives", default=",".join(OBJECTIVES), help="which token_NAME experiments to compare")
  p.add_argument("--n", type=int, default=0, help="held-out documents per probe (default 200; --quick: 16)")
  args = p.parse_args(argv)
  seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
  steps = args.steps or (5 if args.quick else 0)
  n_probe = args.n or (16 if args.quick else 200)

  names, skipped = [], []
  for name in filter(None, (s.strip() for s in args.objectives.split(","))):
    if (config_lib.experiments_dir() / f"token_{name}.py").exists():
      names.append(name)
    else:
      skipped.append(name)
      print(f"note: experiments/token_{name}.py does not exist yet; skipping {name}", flush=True)

  t0 = time.time()
  rows: dict[str, dict] = {}
  with tempfile.TemporaryDirectory(prefix="lm-objectives-") as root:
    for name in names:
      runs = []
      for seed in seeds:
        print(f"== {name}, seed {seed}", flush=True)
        runs.append(run_one(name, args.variant, seed, steps, n_probe, root))
      rows[name] = {k: protocol.summary([r[k] for r in runs]) for k, _ in METRICS}
      rows[name].update(star_chance=runs[0]["star_chance"], induction_chance=runs[0]["induction_chance"],
                        seconds=sum(r["seconds"] for r in runs), objectives=runs[0]["objectives"])

  result = protocol.record(
      None if argv is None else ["benchmarks/objectives.py", *argv],
      dict(variant=args.variant, seeds=seeds, steps=steps or "variant", probe_n=n_probe, quick=args.quick),
      dict(objectives=rows, skipped=skipped, seconds=time.time() - t0))
  out = protocol.write(args.out, result)

  print(f"objectives: variant {args.variant}, seeds {seeds}, steps {steps or 'per variant'}, {n_probe} probe "
        f"documents, {jax.default_backend()} x{jax.device_count()}, {result['results']['seconds']:.0f}s")
  print(f"  {'objective':10s} " + " ".join(f"{title:>17s}" for _, title in METRICS))
  for name, row in rows.items():
    print(f"  {name:10s} " + " ".join(_cell(row[k]) for k, _ in METRICS))
  if rows:
    first = next(iter(rows.values()))
    chance = first["induction_chance"]
    print(f"  chance: star {first['star_chance']:.3f}, induction "
          f"{'n/a' if chance is None else f'{chance:.3f}'}")
  if skipped:
    print(f"  skipped (no experiments/token_NAME.py): {', '.join(skipped)}")
  print(f"  wrote {out}")
  return result


if __name__ == "__main__":
  main()
