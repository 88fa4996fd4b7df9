"""Families at matched training compute: tokens against bytes (token_ntp with BPE, byte_flat, byte_hat) or
tokens against concepts (token_ntp with BPE, concept_lcm, concept_sllm).

Run:
  python benchmarks/families.py                      # small variants, ~10 minutes per run on a 2-core CPU
  python benchmarks/families.py --seeds 0,1,2        # three seeds each
  python benchmarks/families.py --set concepts --variant tiny --seeds 0,1,2
  python benchmarks/families.py --quick              # smoke mode: tiny variants, a tiny budget, one seed
  python benchmarks/families.py --variant tiny --seeds 0,1,2 --lrs 1.5e-3,3e-3,6e-3   # the protocol's tuning
Writes JSON to --out (default benchmarks/results/SET.json, SET = families or concepts), a plot of bits per
byte against training FLOPs beside it (`.png`, with matplotlib), and prints a table. Concept runs also report
the oracle bits per byte (decoder given the true concept), the L2 distance of predicted to true concepts and
in-batch contrastive accuracy.

Every run gets the same training budget in FLOPs (`--budget`, default: what the set's reference run spends
in its configured steps: byte_flat for families, token_bpe for concepts): steps = budget / (FLOPs per
training step), with FLOPs per step as the training loop logs them (`run.train_flops_per_step`: FLOPs per
byte x the training data's bytes per step). All runs are scored on the same held-out segments
(`data.eval_max_bytes`), on clean text and on noised text (`lm eval --noise` kinds). FLOPs are what the
compiled step executes (padding included); the budget under data-position FLOPs is recorded beside it.

Tuning (`--lrs`, benchmarks/protocol.py): every run gets the same learning-rate grid on the first seed, the
one with the lowest val bpb is chosen, the other seeds run at it, and test bpb is what gets reported.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import lm.api  # noqa: E402
import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import config as config_lib, families  # noqa: E402
from lm.eval import compare  # noqa: E402
from lm.train import loop, run as run_lib  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TOKEN_BPE = ("token_ntp", ["data.tokenizer=bpe", "data.vocab_size=2048"])
SETS = {  # name -> (runs, the run whose configured steps set the budget)
    "families": ({"token_bpe": TOKEN_BPE, "byte_flat": ("byte_flat", []), "byte_hat": ("byte_hat", [])}, "byte_flat"),
    "concepts": ({"token_bpe": TOKEN_BPE, "concept_lcm": ("concept_lcm", []), "concept_sllm": ("concept_sllm", [])},
                 "token_bpe"),
}
CONCEPT_METRICS = ("oracle_bpb", "l2", "contrastive_accuracy")
NOISE = ("delete:0.05", "swap:0.05", "upper:0.1")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--set", default="families", choices=sorted(SETS))
  p.add_argument("--variant", default="small")
  p.add_argument("--seeds", default="0")
  p.add_argument("--budget", type=float, default=0.0, help="training FLOPs per run (0: byte_flat's own)")
  p.add_argument("--eval-max-bytes", type=int, default=120)
  p.add_argument("--curve-points", type=int, default=4, help="validation evals during each run (for the plot)")
  p.add_argument("--lrs", default="", help="comma-separated learning rates: each run's rate is chosen on val "
                 "from this grid with the first seed (default: each experiment's own optim.lr)")
  p.add_argument("--runs", default="", help="comma-separated subset of the set's runs (default: all); the "
                 "budget is still the reference run's, so arms split over processes stay comparable")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", help="JSON path (default benchmarks/results/SET.json)")
  args = p.parse_args(argv)
  runs, reference = SETS[args.set]
  wanted = [r for r in args.runs.split(",") if r.strip()]
  if unknown := [r for r in wanted if r not in runs]:
    raise SystemExit(f"error: --runs {','.join(unknown)} not in set {args.set!r} (runs: {', '.join(runs)})")
  args.out = args.out or str(RESULTS / f"{args.set}.json" if not args.quick else  # a smoke run never overwrites
                             pathlib.Path(tempfile.gettempdir()) / f"{args.set}_quick.json")  # what is recorded
  variant = "tiny" if args.quick else args.variant
  seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
  root = pathlib.Path(tempfile.mkdtemp(prefix="families-"))

  configs = {}
  for name, (experiment, overrides) in runs.items():
    c = families.load_config(f"{experiment}:{variant}", [
        *overrides, f"data.eval_max_bytes={args.eval_max_bytes}", "sample.max_new=0", "train.eval_every=0",
        "train.checkpoint_every=0", *(["eval.max_batches=2"] if args.quick else [])])
    configs[name] = c
  per_step, per_step_data = {}, {}
  for name, c in configs.items():
    if name not in (*wanted, reference) and wanted:
      continue
    data = run_lib.load_data(c)
    compute = run_lib.train_flops_per_step(run_lib.build_run(c, data.tokenizer), data)
    per_step[name], per_step_data[name] = compute["flops_per_step"], compute["flops_per_step_data"]
  budget = args.budget or per_step[reference] * configs[reference].train.steps
  if args.quick:
    budget = per_step[reference] * 10

  lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
  rows, selection = [], {}
  configs = {n: c for n, c in configs.items() if not wanted or n in wanted}
  for name, c in configs.items():
    steps = max(int(budget // per_step[name]), 1)
    config_lib.apply_overrides(c, [f"train.steps={steps}",
                                   f"train.eval_every={max(steps // max(args.curve_points, 1), 1) if args.curve_points else 0}",
                                   f"optim.warmup_steps={min(c.optim.warmup_steps, max(steps // 10, 1))}"])

    def run(seed, lr, tag=""):
      config_lib.apply_overrides(c, [f"train.seed={seed}", f"optim.lr={lr}"])
      print(f"== {name} seed {seed}, lr {lr:g}: {steps} steps, {per_step[name]:.3g} FLOPs/step", flush=True)
      return dict(run=name, name=name, seed=seed, lr=lr, steps=steps, train_flops=steps * per_step[name],
                  train_flops_data=steps * per_step_data[name],
                  **train_and_score(c, root / f"{name}-{seed}-{lr:g}{tag}"))

    first = seeds[0]
    if len(lrs) > 1:  # the same grid for every run, chosen on val with the first seed
      grid = {lr: run(first, lr) for lr in lrs}
      chosen = protocol.select({lr: dict(val=g["val_bpb"], test=g["test_bpb"]) for lr, g in grid.items()})
      selection[name] = dict(lr=chosen["chosen"], reason=chosen["reason"],
                             grid={f"{lr:g}": dict(val=g["val_bpb"], test=g["test_bpb"]) for lr, g in grid.items()})
      rows.append(grid[chosen["chosen"]])
      lr = chosen["chosen"]
    else:
      lr = lrs[0] if lrs else float(c.optim.lr)
      rows.append(run(first, lr))
    for seed in seeds[1:]:
      rows.append(run(seed, lr))

  print(f"\n{'run':<11}{'params':>9}{'FLOP/B':>10}{'train FLOPs':>13}{'val bpb':>16}{'test bpb':>16}"
        + "".join(f"{k:>14}" for k in NOISE))
  table = []
  for name in configs:
    mine = [r for r in rows if r["run"] == name]
    stat = protocol.summary  # sample std and 95% interval over seeds, as every benchmark reports
    entry = dict(run=name, params=mine[0]["params"], flops_per_byte_train=mine[0]["flops_per_byte_train"],
                 train_flops=mine[0]["train_flops"], train_flops_data=mine[0]["train_flops_data"],
                 steps=mine[0]["steps"], lr=mine[0]["lr"],
                 val_bpb=stat([r["val_bpb"] for r in mine]), test_bpb=stat([r["test_bpb"] for r in mine]),
                 noised={k: stat([r["noised"][k] for r in mine]) for k in NOISE}, seeds=len(mine),
                 **{f"val_{k}": stat([r[f"val_{k}"] for r in mine]) for k in CONCEPT_METRICS
                    if f"val_{k}" in mine[0]})
    table.append(entry)
    print(f"{name:<11}{entry['params'] / 1e6:>8.2f}M{entry['flops_per_byte_train']:>10.3g}"
          f"{entry['train_flops']:>13.3g}{_ms(entry['val_bpb'])}{_ms(entry['test_bpb'])}"
          + "".join(f"{entry['noised'][k]['mean']:>14.4f}" for k in NOISE))
  concept_rows = [e for e in table if "val_oracle_bpb" in e]
  if concept_rows:
    print(f"\n{'run':<14}{'val bpb':>16}{'oracle bpb':>16}{'L2':>14}{'contrastive acc':>18}")
    for e in concept_rows:
      print(f"{e['run']:<14}{_ms(e['val_bpb'])}{_ms(e['val_oracle_bpb'])}{_ms(e['val_l2'], 8, 3)}"
            f"{_ms(e['val_contrastive_accuracy'], 12)}")
  result = protocol.record(
      None if argv is None else ["benchmarks/families.py", *argv],
      dict(set=args.set, variant=variant, seeds=seeds, budget_flops=budget, flops="executed",
           budget_flops_data={n: per_step_data[n] * max(int(budget // per_step[n]), 1) for n in configs},
           runs=list(configs), lrs=lrs, eval_max_bytes=args.eval_max_bytes, curve_points=args.curve_points, quick=args.quick),
      dict(table=table, selection=selection,
           runs=[{k: v for k, v in r.items() if k not in ("curve", "name", "family")} for r in rows]))
  out = protocol.write(args.out, result)
  try:
    compare.plot([r for r in rows if r["seed"] == seeds[0]], str(out.with_suffix(".png")))
  except Exception as e:  # pylint: disable=broad-except  # the table is the result; the plot is a view of it
    print(f"no plot: {e}")
  return result


def _ms(s: dict, width: int = 10, digits: int = 4) -> str:
  """`mean±std` for the printed table (the std blank for one seed)."""
  std = f"±{s['std']:.3f}" if s["std"] is not None else " " * 6
  return f"{s['mean']:>{width}.{digits}f}{std}"


def train_and_score(c, workdir) -> dict:
  """Train `c` in `workdir`; val and test bits per byte, the same under each `NOISE` kind, the concept
  metrics where the family has them, params, FLOPs per byte and the validation curve."""
  t0 = time.time()
  summary = loop.train(c, str(workdir))
  seconds = time.time() - t0
  if summary.get("preempted"):  # stopped by a signal: its params are not the run's, so nothing is scored
    raise SystemExit(f"stopped at step {summary['step']} of {c.train.steps} by a signal; nothing was written")
  r = lm.api.LM(summary["run"], summary["state"].params)
  scores, extra = {}, {}
  for split in ("val", "test"):
    result = r.evaluate(split=split)
    scores[split] = result["bpb"]
    extra.update({f"{split}_{k}": result[k] for k in CONCEPT_METRICS if k in result})
  for spec in NOISE:
    scores[spec] = r.evaluate(noise=spec)["bpb"]
  info = compare.summarize_run(workdir)
  return dict(seconds=seconds, params=info["params"], flops_per_byte_train=info["flops_per_byte_train"],
              val_bpb=scores["val"], test_bpb=scores["test"], noised={k: scores[k] for k in NOISE},
              curve=info["curve"], family=info["family"], **extra)


if __name__ == "__main__":
  main()
