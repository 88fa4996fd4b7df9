"""Sequence-level RL (`lm rl`): how far it lifts held-out pass@1, and two published findings, on two tasks.

Run:
  python benchmarks/rl.py                 # arithmetic: one init, 3 arms x 3 seeds (about 15 minutes, 2-core CPU)
  python benchmarks/rl.py --task star --arms grpo,drgrpo   # star graphs (about 15 minutes)
  python benchmarks/rl.py --lrs 1e-5,3e-5,1e-4             # each arm's learning rate chosen on dev
  python benchmarks/rl.py --quick         # smoke mode: tiny init, 4 RL steps, 1 seed
  python benchmarks/rl.py --arms grpo --seeds 0 --steps 100
Writes JSON to --out (default benchmarks/results/rl_TASK.json) and prints tables.

Held-out prompts are split by content (lm/data/synthetic.py): the init pretrains on the pretrain split, RL
trains on the rl split, `lm rl` evaluates on the dev split as it goes (the experiment's `rl.eval_source`) and
the tables report the test split; no dev or test problem is in pretraining or among the RL prompts.

One next-token init (the task's experiment, `rl_arith` or `rl_star`, its model and data, `--init-steps` steps:
a deliberately weak start, so RL has room; default 800 for arith, 3000 for star, where edge lookup forms late),
then for each arm and seed (`train.seed`, which seeds the rollouts and the prompt order) an `lm rl` run of
`--steps` steps from that init, identical but for the arm's two options:
  grpo      advantage (r - mean) / std per group, each completion's loss averaged over its own units
            (`rl.advantage=grpo rl.aggregation=sequence_mean`), as in DeepSeekMath's GRPO;
  drgrpo    advantage r - mean, the loss summed over units and divided by the constant G x max_new
            (`rl.advantage=drgrpo rl.aggregation=constant`), Liu et al. 2025's Dr. GRPO;
  grpo_fit  grpo on only 16 training prompts, revisited: RL as an optimiser of what it is shown (their exact
            pass@1 is reported as "train exact" for every arm) against what carries to held-out prompts.
Learning rate: the experiment's `rl.lr`, or with a grid `--lrs` each arm runs every lr on the first seed and
keeps the one with the highest final dev answer probability (the expected exact reward, free of sampling
noise; `protocol.select`), then runs the other seeds at it. Every arm gets the same grid.
Findings checked in direction:
  1. Liu et al. 2025 ("Understanding R1-Zero-like training"): GRPO's per-completion length normalisation
     penalises each unit of a long wrong completion less, so wrong completions lengthen; Dr. GRPO's do not.
     Measured as the mean length of wrong held-out completions (temperature 1) at the start and the end.
  2. Yue et al. 2025 ("Does RL really incentivize reasoning capacity..."): RL raises pass@1, while the base
     model's pass@k catches up or overtakes at large k. Measured from `--samples` samples of every held-out
     prompt (unbiased pass@k, Chen et al. 2021) for the init and every final policy.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import config as config_lib  # noqa: E402
from lm.errors import RunFinished  # noqa: E402
from lm.rl import loop as rl_loop  # noqa: E402
from lm.rl.rollouts import Rollouts  # noqa: E402
from lm.train import loop  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TASKS = {"arith": ("rl_arith", 800), "star": ("rl_star", 3000)}
ARMS = {"grpo": dict(advantage="grpo", aggregation="sequence_mean"),
        "drgrpo": dict(advantage="drgrpo", aggregation="constant"),
        "grpo_fit": dict(advantage="grpo", aggregation="sequence_mean")}  # only FIT training prompts, revisited
FIT = 16


def _config(args, seed: int, arm: str | None = None, lr: float | None = None):
  config = config_lib.load_experiment(TASKS[args.task][0])
  config.train.update(steps=args.init_steps, checkpoint_every=args.init_steps, log_every=max(args.init_steps // 4, 1),
                      seed=0)
  config.optim.warmup_steps = min(config.optim.warmup_steps, max(args.init_steps // 10, 1))
  config.rl.update(max_new=args.max_new or config.rl.max_new, steps=args.steps, lr=lr or config.rl.lr,
                   eval_every=args.eval_every,
                   log_every=args.eval_every, checkpoint_every=args.steps, eval_prompts=args.eval_prompts, pass_k=8,
                   prompts_per_step=args.prompts_per_step, group=args.group)
  if arm is not None:
    config.rl.update(ARMS[arm])
    if arm.endswith("_fit"):  # FIT training prompts (after the held-out ones where they come first)
      config.rl.prompts = config.rl.prompts.replace(
          ":n=4000", f":n={FIT + (0 if config.rl.eval_source else args.eval_prompts)}")
    config.train.seed = seed
  config_lib.validate(config)
  return config


def _test_pairs(r) -> list[tuple[str, str]]:
  """The first `r.eval_prompts` of the test split: `r.eval_source` (the dev split) with split=test."""
  if ":split=dev" not in r.eval_source:
    raise SystemExit(f"error: rl.eval_source {r.eval_source!r} is not a split=dev source, so there is no test split "
                     "to report")
  pairs = rl_loop.prompt_answers(r.eval_source.replace(":split=dev", ":split=test"))
  if len(pairs) < r.eval_prompts:
    raise SystemExit(f"error: the test split has {len(pairs)} prompts, fewer than --eval-prompts {r.eval_prompts}")
  return pairs[:r.eval_prompts]


def _test(result: dict, params, seed: int) -> dict:
  """pass@1, pass@8, answer probability and completion lengths on the test prompts (as `lm rl` reports dev)."""
  run, r = result["run"], result["run"].config.rl
  pairs = _test_pairs(r)
  return rl_loop.evaluate(Rollouts(run, pairs, run.config), params, pairs, r, seed=seed)


def _curve(workdir: pathlib.Path) -> list[dict]:
  """`lm rl`'s evaluations along the run: on dev, what the learning rate is chosen by."""
  keep = ("step", "pass@1", "pass@8", "answer_prob", "eval_len", "eval_len_right", "eval_len_wrong")
  rows = [json.loads(line) for line in (workdir / "rl" / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return [{k: row[k] for k in keep if k in row} for row in rows if "pass@1" in row]


def _pass_curve(result: dict, params, args, seed: int) -> dict[str, float]:
  """Unbiased pass@k for k = 1, 2, 4, ... up to --samples, from --samples samples of every test prompt."""
  run, r = result["run"], result["run"].config.rl
  pairs = _test_pairs(r)
  rollouts = Rollouts(run, pairs, run.config)
  _, correct = rl_loop.held_out(rollouts, params, pairs, r, args.samples, seed=1000 + seed)
  ks = [2 ** i for i in range(args.samples.bit_length()) if 2 ** i <= args.samples]
  return {str(k): statistics.fmean(rl_loop.pass_at_k(args.samples, int(c), k) for c in correct) for k in ks}


def _train_prob(result: dict, params, args) -> float:
  """Exact pass@1 (answer probability) on the first FIT training prompts (all of grpo_fit's)."""
  run, r = result["run"], result["run"].config.rl
  pairs = rl_loop.split_prompts(r, rl_loop.prompt_answers(r.prompts))[1][:FIT]
  rollouts = Rollouts(run, pairs, run.config)
  return float(rollouts.answer_prob(params, *map(list, zip(*pairs))).mean())


def _stat(xs: list[float]) -> str:
  xs = [x for x in xs if x is not None]
  if not xs:
    return "-"
  s = protocol.summary(xs)
  return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", choices=sorted(TASKS), default="arith")
  p.add_argument("--arms", default="grpo,drgrpo,grpo_fit")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--init-steps", type=int, default=0, help="next-token steps of the init (0: the task's default)")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--lrs", default="", help="RL learning rates, comma-separated: each arm's is chosen on dev "
                 "(empty: the experiment's rl.lr)")
  p.add_argument("--prompts-per-step", type=int, default=8)
  p.add_argument("--group", type=int, default=8)
  p.add_argument("--max-new", type=int, default=16, help="completion limit in units (room to lengthen; 0: the "
                 "experiment's)")
  p.add_argument("--eval-every", type=int, default=50)
  p.add_argument("--eval-prompts", type=int, default=128)
  p.add_argument("--samples", type=int, default=64, help="samples per held-out prompt for the pass@k curve")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="")
  args = p.parse_args()
  args.init_steps = args.init_steps or TASKS[args.task][1]
  args.out = args.out or str(RESULTS / f"rl_{args.task}.json")
  if args.quick:
    args.init_steps, args.steps, args.eval_every, args.seeds, args.samples = 20, 4, 2, "0", 8
  arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
  root = pathlib.Path(tempfile.mkdtemp(prefix="lm_rl_bench_"))
  t0 = time.time()
  init = str(root / "init")
  try:
    loop.train(_config(args, 0), init)
  except RunFinished:
    pass
  lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [_config(args, 0).rl.lr]
  runs, base, chosen = {}, {}, {}

  def run_one(arm: str, seed: int, lr: float) -> dict:
    workdir = root / f"{arm}_{seed}_{lr:g}"
    t = time.time()
    config = _config(args, seed, arm, lr)
    config.rl.init_from = init
    result = rl_loop.train(config, workdir)
    start = run_lib.init_params(result["run"], result["state"].params)[0]
    if seed not in base:  # the init on test, with the same samples' seeds as this seed's final policies
      base[seed] = dict(test=_test(result, start, seed), pass_k=_pass_curve(result, start, args, seed))
    out = dict(arm=arm, seed=seed, lr=lr, curve=_curve(workdir), test=[base[seed]["test"],
                                                                       _test(result, result["state"].params, seed)],
               pass_k=_pass_curve(result, result["state"].params, args, seed), seconds=time.time() - t,
               train_prob=[_train_prob(result, start, args), _train_prob(result, result["state"].params, args)])
    print(f"{arm} seed {seed} lr {lr:g}: dev pass@1 {out['curve'][0]['pass@1']:.3f} -> {out['curve'][-1]['pass@1']:.3f}"
          f", test pass@1 {out['test'][0]['pass@1']:.3f} -> {out['test'][1]['pass@1']:.3f}, wrong length "
          f"{out['test'][1].get('eval_len_wrong', float('nan')):.2f} ({time.time() - t:.0f}s)", flush=True)
    return out

  for arm in arms:
    if len(lrs) > 1:  # the grid on the first seed, chosen on dev; test rides along, unread by the choice
      grid = {lr: run_one(arm, seeds[0], lr) for lr in lrs}
      chosen[arm] = protocol.select({lr: dict(dev=g["curve"][-1]["answer_prob"], test=g["test"][1]["answer_prob"])
                                     for lr, g in grid.items()}, key="dev", report="test", lower_is_better=False)
      lr = chosen[arm]["chosen"]
      print(f"{arm}: lr {lr:g} ({chosen[arm]['reason']})", flush=True)
      chosen[arm]["grid"] = {f"{x:g}": g for x, g in grid.items() if x != lr}
      runs[f"{arm}/{seeds[0]}"] = grid[lr]
    else:
      lr = lrs[0]
      chosen[arm] = dict(chosen=lr, reason="the only learning rate given" if args.lrs else "the experiment's rl.lr")
    for seed in seeds:
      if f"{arm}/{seed}" not in runs:
        runs[f"{arm}/{seed}"] = run_one(arm, seed, lr)

  used = ", ".join(f"{arm} {chosen[arm]['chosen']:g}" for arm in arms)
  print(f"\nlm rl on {TASKS[args.task][0]} from one {args.init_steps}-step next-token init; {args.steps} steps at lr "
        f"{used}{' (chosen on dev from ' + args.lrs + ')' if len(lrs) > 1 else ''}, {len(seeds)} seeds; "
        f"{args.eval_prompts} test prompts at temperature 1 (mean ± std over seeds)")
  print("pass@1: sampled (8 a prompt); exact: the answer's probability (the expected reward, no sampling noise); "
        f"train exact: on the first {FIT} training prompts")
  cols = (("pass@1", "pass@1"), ("answer_prob", "exact"), ("eval_len_wrong", "wrong len"),
          ("eval_len_right", "right len"))
  print(f"{'arm':9}" + "".join(f"{name + ' ' + when:>17}" for _, name in cols for when in ("start", "end"))
        + f"{'train exact start':>19}{'train exact end':>17}")
  for arm in arms:
    rs = [v for v in runs.values() if v["arm"] == arm]
    first, last = [r["test"][0] for r in rs], [r["test"][1] for r in rs]
    print(f"{arm:9}" + "".join(f"{_stat([c.get(key) for c in when]):>17}" for key, _ in cols for when in (first, last))
          + f"{_stat([r['train_prob'][0] for r in rs]):>19}{_stat([r['train_prob'][1] for r in rs]):>17}")
  ks = list(next(iter(base.values()))["pass_k"])
  print(f"\npass@k from {args.samples} samples per test prompt (mean ± std over seeds)")
  print(f"{'policy':8} " + " ".join(f"{'k=' + k:>14}" for k in ks))
  print(f"{'init':8} " + " ".join(f"{_stat([b['pass_k'][k] for b in base.values()]):>14}" for k in ks))
  for arm in arms:
    print(f"{arm:8} " + " ".join(f"{_stat([v['pass_k'][k] for v in runs.values() if v['arm'] == arm]):>14}"
                                 for k in ks))
  # The learning rates used (each arm's, resolved: never a 0 for "the experiment's"), and the grid.
  test_source = _config(args, 0).rl.eval_source.replace(":split=dev", ":split=test")
  settings = dict({k: v for k, v in vars(args).items() if k not in ("out", "lrs")}, lrs=lrs,
                  lr={arm: chosen[arm]["chosen"] for arm in arms}, test_source=test_source)
  results = dict(seconds=time.time() - t0, init_pass_k={k: b["pass_k"] for k, b in base.items()},
                 init_test={k: b["test"] for k, b in base.items()}, runs=runs, selection=chosen)
  protocol.write(args.out, protocol.record(None, settings, results))
  print(f"\nwrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
  main()
