"""Tokens against bytes at matched training compute: token_ntp (BPE), byte_flat and byte_hat.

Run:
  python benchmarks/families.py                      # small variants, ~10 minutes per run on a 2-core CPU
  python benchmarks/families.py --seeds 0,1,2        # three seeds each
  python benchmarks/families.py --quick              # smoke mode: tiny variants, a tiny budget, one seed
Writes JSON to --out (default benchmarks/results/families.json), a plot of bits per byte against training
FLOPs beside it (`.png`, with matplotlib), and prints a table.

Every run gets the same training budget in FLOPs (`--budget`, default: what `byte_flat:VARIANT` spends in its
configured steps): steps = budget / (FLOPs per training step), with FLOPs per step from the same formulas
the training loop logs (`loop.train_flops_per_step`: FLOPs per byte x the training data's bytes per step). All runs are scored on the same
held-out segments (`data.eval_max_bytes`), on clean text and on noised text (`lm eval --noise` kinds).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import config as config_lib  # noqa: E402
from lm.data import noise  # noqa: E402
from lm.eval import compare  # noqa: E402
from lm.train import loop  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "families.json"
RUNS = {"token_bpe": ("token_ntp", ["data.tokenizer=bpe", "data.vocab_size=2048"]),
        "byte_flat": ("byte_flat", []), "byte_hat": ("byte_hat", [])}
NOISE = ("delete:0.05", "swap:0.05", "upper:0.1")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="small")
  p.add_argument("--seeds", default="0")
  p.add_argument("--budget", type=float, default=0.0, help="training FLOPs per run (0: byte_flat's own)")
  p.add_argument("--eval-max-bytes", type=int, default=120)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  variant = "tiny" if args.quick else args.variant
  seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
  root = pathlib.Path(tempfile.mkdtemp(prefix="families-"))

  configs = {}
  for name, (experiment, overrides) in RUNS.items():
    c = config_lib.load_experiment(f"{experiment}:{variant}")
    config_lib.apply_overrides(c, [*overrides, f"data.eval_max_bytes={args.eval_max_bytes}", "sample.max_new=0",
                                   "train.eval_every=0", "train.checkpoint_every=0"])
    if args.quick:
      config_lib.apply_overrides(c, ["eval.max_batches=2"])
    configs[name] = c
  per_step = {name: loop.train_flops_per_step(c, loop.load_data(c))["flops_per_step"] for name, c in configs.items()}
  budget = args.budget or per_step["byte_flat"] * configs["byte_flat"].train.steps
  if args.quick:
    budget = per_step["byte_flat"] * 10

  rows = []
  for name, c in configs.items():
    steps = max(int(budget // per_step[name]), 1)
    for seed in seeds:
      config_lib.apply_overrides(c, [f"train.steps={steps}", f"train.seed={seed}",
                                     f"optim.warmup_steps={min(c.optim.warmup_steps, max(steps // 10, 1))}"])
      workdir = root / f"{name}-{seed}"
      print(f"== {name} seed {seed}: {steps} steps, {per_step[name]:.3g} FLOPs/step", flush=True)
      t0 = time.time()
      summary = loop.train(c, str(workdir))
      seconds = time.time() - t0
      run, data = summary["run"], loop.load_data(c, tokenizer=summary["run"].tokenizer)
      evaluate = loop.make_evaluator(run)
      scores = {}
      for split in ("val", "test"):
        scores[split] = evaluate(summary["state"].params, data.eval_batches(
            split, loop.eval_batch_size(c), max_batches=c.eval.max_batches or None))["bpb"]
      for spec in NOISE:
        docs = noise.noised(data.splits["val"], spec)
        scores[spec] = evaluate(summary["state"].params, data.eval_batches(
            "val", loop.eval_batch_size(c), max_batches=c.eval.max_batches or None, docs=docs))["bpb"]
      info = compare.summarize_run(workdir)
      rows.append(dict(run=name, seed=seed, steps=steps, seconds=seconds, params=info["params"],
                       train_flops=steps * per_step[name], flops_per_byte_train=info["flops_per_byte_train"],
                       val_bpb=scores["val"], test_bpb=scores["test"], noised={k: scores[k] for k in NOISE},
                       curve=info["curve"], name=name, family=info["family"]))

  print(f"\n{'run':<11}{'params':>9}{'FLOP/B':>10}{'train FLOPs':>13}{'val bpb':>16}{'test bpb':>16}"
        + "".join(f"{k:>14}" for k in NOISE))
  table = []
  for name in configs:
    mine = [r for r in rows if r["run"] == name]

    def stat(values):
      return (statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)
    entry = dict(run=name, params=mine[0]["params"], flops_per_byte_train=mine[0]["flops_per_byte_train"],
                 train_flops=mine[0]["train_flops"], steps=mine[0]["steps"],
                 val_bpb=stat([r["val_bpb"] for r in mine]), test_bpb=stat([r["test_bpb"] for r in mine]),
                 noised={k: stat([r["noised"][k] for r in mine]) for k in NOISE}, seeds=len(mine))
    table.append(entry)
    print(f"{name:<11}{entry['params'] / 1e6:>8.2f}M{entry['flops_per_byte_train']:>10.3g}"
          f"{entry['train_flops']:>13.3g}{entry['val_bpb'][0]:>10.4f}±{entry['val_bpb'][1]:.3f}"
          f"{entry['test_bpb'][0]:>10.4f}±{entry['test_bpb'][1]:.3f}"
          + "".join(f"{entry['noised'][k][0]:>14.4f}" for k in NOISE))
  result = dict(variant=variant, budget_flops=budget, eval_max_bytes=args.eval_max_bytes, table=table,
                runs=[{k: v for k, v in r.items() if k not in ("curve", "name", "family")} for r in rows],
                machine=f"{platform.machine()} {jax.default_backend()} x{jax.device_count()}",
                date=time.strftime("%Y-%m-%d"), jax=jax.__version__, numpy=np.__version__)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  try:
    compare.plot([r for r in rows if r["seed"] == seeds[0]], str(out.with_suffix(".png")))
  except Exception as e:  # pylint: disable=broad-except  # the table is the result; the plot is a view of it
    print(f"no plot: {e}")
  return result


if __name__ == "__main__":
  main()
