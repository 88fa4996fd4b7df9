"""Small runs against the papers' directions: star graphs, name induction, TOP vs NTP vs MTP at equal FLOPs.

Run:
  python benchmarks/reproduce.py                                   # every part, seeds 0,1,2
  python benchmarks/reproduce.py --parts star --seeds 0,1,2        # one part
  python benchmarks/reproduce.py --parts star --star-arms ntp,top  # some arms of it
  python benchmarks/reproduce.py --quick                           # smoke: 1 seed, a few steps, 16 documents
Writes JSON to --out (default benchmarks/results/reproduce.json) and prints one table, the paper's figure
beside ours (mean ± std over seeds).

Every arm of a part runs the same experiment with the same model, data, optimizer and schedule; only the
objectives list differs, copied from `experiments/token_ARM.py` (ntp: next-token; mtp: 4 heads; top: ntp +
token order prediction; ftp, dsmtp the same way; `mtp:n=2` sets an option of the arm's objective). Parts:
  star       `probe_star:VARIANT` (Bachmann & Nagarajan 2024; Zuhri et al. 2025, Table 5): greedy exact-path
             accuracy on held-out graphs, and teacher forced: the first decision after the start node and the
             later steps (edge lookups). Next-token training's Clever Hans signature: later steps near 1, the
             first decision near 1 / degree.
  induction  `probe_induction:VARIANT` (Gloeckle et al. 2024, section 4.1): accuracy on a name's later
             mentions (its bytes after the first); first mentions are the control.
  bpb        `token_ARM:VARIANT` on the embedded corpus at one training budget in FLOPs, not steps: each arm
             trains for budget / (its FLOPs per step) steps, the budget being next-token's at the variant's
             steps. Val bits per byte of the next-unit head (Zuhri et al. 2025: TOP below NTP, MTP above).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lm import config as config_lib  # noqa: E402
from lm.eval import probes  # noqa: E402
from lm.train import loop  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "reproduce.json"
PARTS = ("star", "induction", "bpb")

# What each part measures (key, column title) and what the papers report for each arm.
METRICS = {
    "star": (("exact", "exact path"), ("first", "TF first decision"), ("later", "TF later steps"),
             ("bpb", "val bpb")),
    "induction": (("later", "later mentions"), ("first", "first mentions"), ("bpb", "val bpb")),
    "bpb": (("bpb", "val bpb"), ("steps", "steps"), ("flops", "train FLOPs")),
}
PAPER = {
    ("star", "ntp"): "Clever Hans: first decision ~1/degree, lookups ~1; G(5,5) exact 0.1% (TOP paper T5)",
    ("star", "mtp"): "MTP-4 19.5% exact on G(5,5) (TOP paper T5)",
    ("star", "top"): "100% exact on G(5,5) (TOP paper T5)",
    ("induction", "ntp"): "small models: induction barely forms (Gloeckle et al. Fig. 7)",
    ("induction", "mtp"): "forms, or much better than ntp, at small sizes (Gloeckle et al. 4.1)",
    ("bpb", "ntp"): "baseline",
    ("bpb", "mtp"): "worse than ntp at small scale (TOP paper)",
    ("bpb", "top"): "better than ntp (TOP paper)",
}
DEFAULT_ARMS = {"star": "ntp,mtp,top", "induction": "ntp,mtp:n=2", "bpb": "ntp,mtp,top"}
DEFAULT_VARIANT = {"star": "tiny", "induction": "tiny", "bpb": "small"}


def objectives_of(arm: str) -> list[dict]:
  """The objectives list of `experiments/token_NAME.py` for arm `NAME[:KEY=VALUE...]` (options set on its NAME
  objective, e.g. `mtp:n=2`): one definition of each arm for every part."""
  name, *options = arm.split(":")
  objectives = [dict(o) for o in config_lib.load_experiment(f"token_{name}").objectives]
  for option in options:
    key, _, value = option.partition("=")
    target = next((o for o in objectives if o["name"] == name), None)
    if target is None or not key:
      raise SystemExit(f"error: arm {arm!r}: write NAME:KEY=VALUE with an option of objective {name!r}")
    target[key] = _literal(value)
  return objectives


def _literal(value: str):
  try:
    return json.loads(value)  # numbers, true/false
  except json.JSONDecodeError:
    return value


def make_config(experiment: str, arm: str, seed: int, steps: int = 0, own_objectives: bool = False,
                short_warmup: bool = True):
  """`experiment` with arm's objectives (or its own), train.seed and, given, train.steps (the warmup capped at
  a tenth of them when `short_warmup`: for --steps smoke runs, not for equal-FLOPs step counts)."""
  config = config_lib.load_experiment(experiment)
  if not own_objectives:
    config.objectives = objectives_of(arm)
  config.train.seed = seed
  if steps:
    config.train.update(steps=steps, checkpoint_every=steps, log_every=min(config.train.log_every, steps),
                        eval_every=0)
    if short_warmup:
      config.optim.warmup_steps = min(config.optim.warmup_steps, max(steps // 10, 1))
  config.sample.max_new = 0
  config_lib.validate(config)
  return config


def train(config, root: str) -> dict:
  return loop.train(config, tempfile.mkdtemp(dir=root))


_FLOPS: dict[str, float] = {}


def flops_per_step(config) -> float:
  """Training FLOPs of one step of `config` (the analytic count `lm compare` uses), without training; the
  same for every seed, so counted once per experiment."""
  if config.experiment not in _FLOPS:
    data = run_lib.load_data(config)
    run = run_lib.build_run(config, data.tokenizer)
    _FLOPS[config.experiment] = float(run_lib.train_flops_per_step(run, data)["flops_per_step"])
  return _FLOPS[config.experiment]


def star(arm: str, seed: int, variant: str, steps: int, n: int, root: str) -> dict:
  out = train(make_config(f"probe_star:{variant}", arm, seed, steps), root)
  r = probes.star_graph_accuracy(out["run"], out["state"].params, n=n)
  return dict(exact=r["accuracy"], first=r["teacher_forced_first_decision"], later=r["teacher_forced_later_steps"],
              valid=r["valid_path_rate"], chance=r["chance"], bpb=out["val_bpb"], seconds=out["seconds"])


def induction(arm: str, seed: int, variant: str, steps: int, n: int, root: str) -> dict:
  out = train(make_config(f"probe_induction:{variant}", arm, seed, steps), root)
  r = probes.induction_accuracy(out["run"], out["state"].params, n=n)
  return dict(later=r["accuracy"], first=r["first_occurrence_accuracy"], names=r["name_accuracy"],
              chance=r["chance"], bpb=out["val_bpb"], seconds=out["seconds"])


def bpb(arm: str, seed: int, variant: str, steps: int, n: int, root: str) -> dict:  # pylint: disable=unused-argument
  """Val bpb of token_ARM:VARIANT trained on next-token's FLOPs budget at the variant's (or --steps) steps."""
  base = make_config(f"token_ntp:{variant}", "ntp", seed, steps, own_objectives=True)
  budget = base.train.steps * flops_per_step(base)
  config = make_config(f"token_{arm}:{variant}", arm, seed, steps, own_objectives=True)
  per_step = flops_per_step(config)
  arm_steps = max(1, round(budget / per_step))
  config = make_config(f"token_{arm}:{variant}", arm, seed, arm_steps, own_objectives=True,
                       short_warmup=bool(steps))  # the variant's warmup for every arm, whatever its step count
  out = train(config, root)
  return dict(bpb=out["val_bpb"], steps=arm_steps, flops=arm_steps * per_step, budget=budget,
              seconds=out["seconds"])


RUNNERS = {"star": star, "induction": induction, "bpb": bpb}


def _stats(values: list[float]) -> dict:
  return dict(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
              values=values)


def _arms(spec: str, part: str) -> list[str]:
  arms = [a.strip() for a in spec.split(",") if a.strip()]
  for arm in arms:
    name = arm.split(":")[0]
    if not (config_lib.experiments_dir() / f"token_{name}.py").exists():
      raise SystemExit(f"error: --{part}-arms: no experiments/token_{name}.py to take arm {arm!r}'s objectives from")
  return arms


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
  p.add_argument("--seeds", default="", help="comma-separated train.seed values (default 0,1,2; --quick: 0)")
  p.add_argument("--quick", action="store_true", help="smoke mode: 1 seed, 5 steps, 16 probe documents")
  p.add_argument("--steps", type=int, default=0, help="override every run's train.steps (0: the variant's)")
  p.add_argument("--n", type=int, default=0, help="held-out documents per probe (default 400; --quick: 16)")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  for part in PARTS:
    p.add_argument(f"--{part}-arms", default=DEFAULT_ARMS[part], help=f"{part}: objectives of experiments/token_ARM.py")
    p.add_argument(f"--{part}-variant", default=DEFAULT_VARIANT[part], help=f"{part}: experiment variant")
  args = p.parse_args(argv)
  parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise SystemExit(f"error: --parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
  seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
  steps = args.steps or (5 if args.quick else 0)
  n = args.n or (16 if args.quick else 400)
  arms = {part: _arms(getattr(args, f"{part}_arms"), part) for part in parts}
  for part in parts:  # every arm's config loads and validates before the first run, not hours into the benchmark
    for arm in arms[part]:
      experiment = {"star": "probe_star", "induction": "probe_induction"}.get(part, f"token_{arm}")
      make_config(f"{experiment}:{getattr(args, f'{part}_variant')}", arm, 0, steps,
                  own_objectives=part == "bpb")

  t0 = time.time()
  results: dict[str, dict] = {}
  with tempfile.TemporaryDirectory(prefix="lm-reproduce-") as root:
    for part in parts:
      variant = getattr(args, f"{part}_variant")
      results[part] = dict(variant=variant, arms={})
      for arm in arms[part]:
        runs = []
        for seed in seeds:
          print(f"== {part}: {arm}, seed {seed}", flush=True)
          runs.append(RUNNERS[part](arm, seed, variant, steps, n, root))
        row = {k: _stats([r[k] for r in runs]) for k in runs[0] if isinstance(runs[0][k], (int, float))
               and runs[0][k] is not None}
        row["paper"] = PAPER.get((part, arm.split(":")[0]), "")
        results[part]["arms"][arm] = row
        _save(args.out, results, seeds, steps, n, args.quick, t0)

  print(f"reproduce: seeds {seeds}, steps {steps or 'per variant'}, {n} probe documents, "
        f"{jax.default_backend()} x{jax.device_count()}, {time.time() - t0:.0f}s")
  for part, result in results.items():
    titles = METRICS[part]
    print(f"\n  {part} ({result['variant']})")
    print(f"  {'arm':8s} " + " ".join(f"{t:>18s}" for _, t in titles) + "  paper")
    for arm, row in result["arms"].items():
      cells = " ".join(f"{row[k]['mean']:9.3g} ± {row[k]['std']:6.2g}" if k in row else f"{'-':>18s}"
                       for k, _ in titles)
      print(f"  {arm:8s} {cells}  {row['paper']}")
  print(f"\n  wrote {args.out}")
  return results


def _save(out: str, results: dict, seeds, steps, n, quick, t0) -> None:
  """The JSON so far (after every arm: a long run that stops keeps what it measured)."""
  path = pathlib.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(
      seeds=seeds, steps=steps or "variant", probe_n=n, quick=quick, parts=results, seconds=time.time() - t0,
      date=time.strftime("%Y-%m-%d"), backend=jax.default_backend(), devices=jax.device_count(),
      machine=platform.machine(), cpu_count=os.cpu_count(), jax=jax.__version__), indent=2) + "\n")


if __name__ == "__main__":
  main()
