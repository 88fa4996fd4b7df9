"""Small runs against the papers' directions: star graphs, name induction, TOP vs NTP vs MTP at equal FLOPs, HAT.

Run:
  python benchmarks/reproduce.py                                   # every part, seeds 0,1,2
  python benchmarks/reproduce.py --parts star --seeds 0,1,2        # one part
  python benchmarks/reproduce.py --parts star --star-arms ntp,top  # some arms of it
  python benchmarks/reproduce.py --parts hat --seeds 0              # the HAT sweep, one seed
  python benchmarks/reproduce.py --parts hat --hat-arms flat,hat:model.d_model=256   # a shape of your own
  python benchmarks/reproduce.py --parts induction --seeds 2 --add-seeds   # one more seed beside those recorded
  python benchmarks/reproduce.py --parts star --seeds 0 --curve 5  # the probes at 5 checkpoints along training
  python benchmarks/reproduce.py --quick                           # smoke: 1 seed, a few steps, 16 documents
Writes JSON to --out (default benchmarks/results/reproduce.json; the parts of earlier runs in that file stay
unless this run measures them again) and prints one table, the paper's figure beside ours (mean ± sample std
over seeds; `benchmarks/results.py` puts 95% intervals and paired tests in RESULTS.md). With --add-seeds a
run's seeds join the ones an arm already has in --out (one process per seed keeps a long benchmark's partial
results and lets two seeds share the machine); the recorded arm must have the same variant, --steps and --n,
and none of the new seeds.

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
  hat        byte_hat shapes against flat bytes and BPE tokens (Neitemeier et al. 2025: HAT at parity with
             BPE at matched compute, more robust to noise), each trained on byte_flat:VARIANT's FLOPs
             (`benchmarks/families.py`'s budget and scoring: the same held-out segments, clean and noised).
             The sweep has two axes from byte_hat:small's shape before it (backbone 192 x 4, byte level 96
             wide, encoder and decoder 2 layers each; now `hat_e96`): FLOPs moved into the word backbone, as
             the paper's models put most of their parameters there, with a byte level 64 wide (encoder 1
             layer, decoder 2): `hat_b256x4`, `hat_b256x6`, `hat_b320x6`; and the byte level's width at that
             backbone: `hat_e48`, `hat_e64`, `hat_e96`, `hat_e128`. The best, `hat_e64`, is byte_hat:small
             now (`hat`). Shapes sized for `small`. `ARM:KEY=VALUE` adds a config
             override to an arm.
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import families as family_runs  # noqa: E402  # benchmarks/families.py: its scoring and noise kinds
import lm.api as lm_api  # noqa: E402
import protocol  # noqa: E402  # benchmarks/protocol.py: statistics and what a result records
from lm import config as config_lib, families  # noqa: E402
from lm.eval import probes  # noqa: E402
from lm.train import checkpoint, loop  # noqa: E402
from lm.train import run as run_lib  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "reproduce.json"
PARTS = ("star", "induction", "bpb", "hat")

# What each part measures (key, column title) and what the papers report for each arm.
METRICS = {
    "star": (("exact", "exact path"), ("first", "TF first decision"), ("later", "TF later steps"),
             ("bpb", "val bpb")),
    "induction": (("later", "later mentions"), ("first", "first mentions"), ("bpb", "val bpb")),
    "bpb": (("bpb", "val bpb"), ("test", "test bpb"), ("steps", "steps"), ("flops", "train FLOPs")),
    "hat": (("bpb", "val bpb"), ("test", "test bpb"), ("delete", "+bpb delete 5%"), ("swap", "+bpb swap 5%"),
            ("upper", "+bpb upper 10%"), ("steps", "steps")),
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
    ("hat", "bpe"): "baseline",
    ("hat", "flat"): "sets the FLOPs budget",
}
for _shape in ("hat", "hat_b256x4", "hat_b256x6", "hat_b320x6", "hat_e48", "hat_e64", "hat_e96", "hat_e128"):
  PAPER[("hat", _shape)] = "parity with BPE at matched compute; degrades less under noise (Neitemeier et al.)"
DEFAULT_ARMS = {"star": "ntp,mtp,top", "induction": "ntp,mtp:n=2", "bpb": "ntp,mtp,top",
                "hat": "bpe,flat,hat,hat_b256x4,hat_b256x6,hat_b320x6,hat_e48,hat_e96,hat_e128"}
# The variants the recorded results use; --quick takes the probes' tiny ones (their small data takes a while
# to draw).
DEFAULT_VARIANT = {"star": "small", "induction": "small", "bpb": "small", "hat": "small"}
QUICK_VARIANT = {"star": "tiny", "induction": "tiny", "bpb": "small", "hat": "small"}

# The HAT part's arms: experiment and overrides. Every shape keeps byte_hat's data (words, rows, batch) and
# optimizer and spells out the sizes it sweeps, so an arm means the same thing whatever byte_hat:small is.
def _byte_level(width: int, encoder_layers: int = 1, decoder_layers: int = 2) -> list[str]:
  return [f"model.encoder.d_model={width}", f"model.encoder.num_layers={encoder_layers}",
          f"model.encoder.d_ff={width * 3}", f"model.decoder.d_model={width}",
          f"model.decoder.num_layers={decoder_layers}", f"model.decoder.d_ff={width * 3}"]


_BACKBONE = ["model.d_model=192", "model.num_layers=4", "model.num_heads=6", "model.num_kv_heads=3",
             "model.d_ff=512"]  # byte_hat:small's
HAT_ARMS = {
    "bpe": ("token_ntp", ["data.tokenizer=bpe", "data.vocab_size=2048"]),
    "flat": ("byte_flat", []),
    "hat": ("byte_hat", []),  # as configured: since this sweep, hat_e64's shape
    # FLOPs moved into the backbone, the byte level 64 wide.
    "hat_b256x4": ("byte_hat", ["model.d_model=256", "model.num_layers=4", "model.num_heads=8",
                                "model.num_kv_heads=4", "model.d_ff=768", *_byte_level(64)]),
    "hat_b256x6": ("byte_hat", ["model.d_model=256", "model.num_layers=6", "model.num_heads=8",
                                "model.num_kv_heads=4", "model.d_ff=768", *_byte_level(64)]),
    "hat_b320x6": ("byte_hat", ["model.d_model=320", "model.num_layers=6", "model.num_heads=8",
                                "model.num_kv_heads=4", "model.d_ff=960", *_byte_level(64)]),
    # The other axis: byte_hat:small's backbone, the byte level's width (and depth: 96 is the shape
    # byte_hat:small had before this sweep, d_ff 256 rather than 288).
    "hat_e48": ("byte_hat", [*_BACKBONE, *_byte_level(48)]),
    "hat_e64": ("byte_hat", [*_BACKBONE, *_byte_level(64)]),
    "hat_e96": ("byte_hat", [*_BACKBONE, *_byte_level(96, 2, 2), "model.encoder.d_ff=256",
                             "model.decoder.d_ff=256"]),
    "hat_e128": ("byte_hat", [*_BACKBONE, *_byte_level(128, 2, 2)]),
}
CURVE_METRIC = {"star": "first", "induction": "later"}  # the probe metric --curve prints
HAT_BUDGET = "flat"  # the arm whose configured steps set the HAT part's FLOPs budget


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
                short_warmup: bool = True, overrides: tuple[str, ...] = ()):
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
  config_lib.apply_overrides(config, list(overrides))  # the part's --PART-config, every arm alike
  config_lib.validate(config)
  return config


def train(config, root: str, workdir: str | None = None) -> dict:
  out = loop.train(config, workdir or tempfile.mkdtemp(dir=root))
  if out.get("preempted"):  # SIGTERM or a preemption notice: the arms measured before this one are saved
    raise SystemExit(f"reproduce: stopped at step {out['step']} of an arm; the arms measured before it are saved")
  return out


def probe_curve(config, root: str, probe, curve: int) -> tuple[dict, list[dict]]:
  """Train `config` and run `probe(run, params) -> metrics` on the final params and, given `curve` = K > 0, on
  K evenly spaced checkpoints (the last one the final step): a learning curve of the probe, same training."""
  if not curve:
    out = train(config, root)
    return out, []
  steps = config.train.steps
  config.train.update(checkpoint_every=max(1, steps // curve), keep_checkpoints=curve + 1)
  workdir = tempfile.mkdtemp(dir=root)
  out = train(config, root, workdir)
  ckpts = checkpoint.Checkpoints(workdir)
  abstract = out["run"].abstract_state.params
  points = [dict(step=step, **probe(out["run"], ckpts.read_params(step, abstract)))
            for step in sorted(ckpts.steps())]
  return out, points


_FLOPS: dict[str, float] = {}


def flops_per_step(config) -> float:
  """Training FLOPs of one step of `config` (the analytic count `lm compare` uses), without training; the
  same for every seed and step count, so counted once per model, data and objectives."""
  key = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("train", "optim", "sample")},
                   sort_keys=True, default=str)
  if key not in _FLOPS:
    data = run_lib.load_data(config)
    run = run_lib.build_run(config, data.tokenizer)
    _FLOPS[key] = float(run_lib.train_flops_per_step(run, data)["flops_per_step"])
  return _FLOPS[key]


def star(arm: str, seed: int, variant: str, steps: int, n: int, root: str, curve: int = 0,
         overrides: tuple[str, ...] = ()) -> dict:
  def probe(run, params):
    r = probes.star_graph_accuracy(run, params, n=n)
    return dict(exact=r["accuracy"], first=r["teacher_forced_first_decision"],
                later=r["teacher_forced_later_steps"], valid=r["valid_path_rate"], chance=r["chance"])

  out, points = probe_curve(make_config(f"probe_star:{variant}", arm, seed, steps, overrides=overrides), root,
                            probe, curve)
  return dict(probe(out["run"], out["state"].params), bpb=out["val_bpb"], seconds=out["seconds"],
              **(dict(curve=points) if points else {}))


def induction(arm: str, seed: int, variant: str, steps: int, n: int, root: str, curve: int = 0,
              overrides: tuple[str, ...] = ()) -> dict:
  def probe(run, params):
    r = probes.induction_accuracy(run, params, n=n)
    return dict(later=r["accuracy"], first=r["first_occurrence_accuracy"], names=r["name_accuracy"],
                chance=r["chance"])

  out, points = probe_curve(make_config(f"probe_induction:{variant}", arm, seed, steps, overrides=overrides),
                            root, probe, curve)
  return dict(probe(out["run"], out["state"].params), bpb=out["val_bpb"], seconds=out["seconds"],
              **(dict(curve=points) if points else {}))


def bpb(arm: str, seed: int, variant: str, steps: int, n: int, root: str,  # pylint: disable=unused-argument
        overrides: tuple[str, ...] = (), budget_kind: str = "flops") -> dict:
  """Val and test bpb of token_ARM:VARIANT (with `overrides`) trained on next-token's budget at the variant's (or
  --steps) steps: its executed FLOPs, or (`budget_kind="tokens"`) its steps, as the papers compare."""
  def config_of(experiment, arm_, steps_, **kw):
    return make_config(experiment, arm_, seed, steps_, own_objectives=True, overrides=overrides, **kw)

  base = config_of(f"token_ntp:{variant}", "ntp", steps)
  budget = base.train.steps * flops_per_step(base)
  config = config_of(f"token_{arm}:{variant}", arm, steps)
  per_step = flops_per_step(config)
  arm_steps = base.train.steps if budget_kind == "tokens" else max(1, round(budget / per_step))
  config = config_of(f"token_{arm}:{variant}", arm, arm_steps,
                     short_warmup=bool(steps))  # the variant's warmup for every arm, whatever its step count
  out = train(config, root)
  test = lm_api.LM(out["run"], out["state"].params).evaluate(split="test")["bpb"]
  return dict(bpb=out["val_bpb"], test=test, steps=arm_steps, flops=arm_steps * per_step, budget=budget,
              seconds=out["seconds"])


def hat_config(arm: str, variant: str, seed: int, steps: int = 0, eval_max_bytes: int = 120):
  """The HAT part's config of arm `NAME[:KEY=VALUE...]` (a `HAT_ARMS` entry plus overrides), scored as
  `benchmarks/families.py` scores: held-out segments of at most `eval_max_bytes`, no sampling."""
  name, *overrides = arm.split(":")
  if name not in HAT_ARMS:
    raise SystemExit(f"error: --hat-arms: unknown arm {name!r}; choose from {', '.join(HAT_ARMS)}")
  experiment, own = HAT_ARMS[name]
  config = families.load_config(f"{experiment}:{variant}", [
      *own, *overrides, f"data.eval_max_bytes={eval_max_bytes}", "sample.max_new=0", "train.eval_every=0",
      "train.checkpoint_every=0", f"train.seed={seed}"])
  if steps:
    config.train.steps = steps
  return config


def hat(arm: str, seed: int, variant: str, steps: int, n: int, root: str) -> dict:  # pylint: disable=unused-argument
  """Clean and noised val/test bpb of one HAT-part arm trained on `HAT_BUDGET`'s FLOPs at the variant's (or
  --steps) steps; the noised columns are differences from clean val bpb."""
  reference = hat_config(HAT_BUDGET, variant, seed, steps)
  budget = reference.train.steps * flops_per_step(reference)
  config = hat_config(arm, variant, seed)
  per_step = flops_per_step(config)
  arm_steps = max(1, round(budget / per_step))
  config.train.steps = arm_steps
  config.train.log_every = min(config.train.log_every, arm_steps)
  config_lib.validate(config)
  row = family_runs.train_and_score(config, tempfile.mkdtemp(dir=root))
  noised = {kind.split(":")[0]: row["noised"][kind] - row["val_bpb"] for kind in family_runs.NOISE}
  return dict(bpb=row["val_bpb"], test=row["test_bpb"], **noised, steps=arm_steps, flops=arm_steps * per_step,
              budget=budget, params=row["params"], flops_per_byte_train=row["flops_per_byte_train"],
              seconds=row["seconds"])


RUNNERS = {"star": star, "induction": induction, "bpb": bpb, "hat": hat}


def _arms(spec: str, part: str) -> list[str]:
  arms = [a.strip() for a in spec.split(",") if a.strip()]
  for arm in arms:
    name = arm.split(":")[0]
    if part == "hat":
      if name not in HAT_ARMS:
        raise SystemExit(f"error: --hat-arms: unknown arm {name!r}; choose from {', '.join(HAT_ARMS)}")
    elif not (config_lib.experiments_dir() / f"token_{name}.py").exists():
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
  p.add_argument("--curve", type=int, default=0,
                 help="star, induction: also probe K evenly spaced checkpoints (a learning curve per seed)")
  p.add_argument("--add-seeds", action="store_true",
                 help="add this run's seeds to the arms recorded in --out instead of replacing them")
  p.add_argument("--bpb-budget", default="flops", choices=("flops", "tokens"),
                 help="bpb: every arm at next-token's executed FLOPs (default) or at its steps (equal tokens)")
  for part in PARTS:
    p.add_argument(f"--{part}-arms", default=DEFAULT_ARMS[part], help=f"{part}: objectives of experiments/token_ARM.py")
    if part != "hat":  # the HAT part's arms carry their own overrides (ARM:KEY=VALUE)
      p.add_argument(f"--{part}-config", default="", help=f"{part}: comma-separated config overrides for every "
                     "arm, e.g. (bpb) data.tokenizer=bpe,data.vocab_size=2048 or (star) a data.source with reverse=1")
    p.add_argument(f"--{part}-variant", default="",
                   help=f"{part}: experiment variant (default {DEFAULT_VARIANT[part]}; --quick: {QUICK_VARIANT[part]})")
  args = p.parse_args(argv)
  for part in PARTS:
    if not getattr(args, f"{part}_variant"):
      setattr(args, f"{part}_variant", (QUICK_VARIANT if args.quick else DEFAULT_VARIANT)[part])
  parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise SystemExit(f"error: --parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
  if args.curve and not set(parts) & set(CURVE_METRIC):
    raise SystemExit(f"error: --curve: only the probe parts ({', '.join(CURVE_METRIC)}) have learning curves")
  seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
  steps = args.steps or (5 if args.quick else 0)
  n = args.n or (16 if args.quick else 400)
  arms = {part: _arms(getattr(args, f"{part}_arms"), part) for part in parts}
  part_overrides = {part: tuple(o.strip() for o in getattr(args, f"{part}_config", "").split(",") if o.strip())
                    for part in parts}
  for part in parts:  # every arm's config loads and validates before the first run, not hours into the benchmark
    for arm in arms[part]:
      variant = getattr(args, f"{part}_variant")
      if part == "hat":
        config_lib.validate(hat_config(arm, variant, 0, steps))
        continue
      experiment = {"star": "probe_star", "induction": "probe_induction"}.get(part, f"token_{arm}")
      make_config(f"{experiment}:{variant}", arm, 0, steps, own_objectives=part == "bpb",
                  overrides=part_overrides[part])

  if args.quick and args.out == str(DEFAULT_OUT):  # a smoke run never overwrites the recorded results
    args.out = str(pathlib.Path(tempfile.gettempdir()) / "reproduce_quick.json")
  settings = dict(steps_flag=steps or "variant", probe_n=n, quick=args.quick)
  if args.add_seeds:  # checked before the first run, not after hours of training
    for part in parts:
      for arm in arms[part]:
        _check_addable(args.out, part, arm, dict(settings, variant=getattr(args, f"{part}_variant"),
                                                 config=list(part_overrides[part])), seeds)
  t0 = time.time()
  results: dict[str, dict] = {}
  with tempfile.TemporaryDirectory(prefix="lm-reproduce-") as root:
    for part in parts:
      variant = getattr(args, f"{part}_variant")
      results[part] = dict(variant=variant, arms={})
      for arm in arms[part]:
        runs, started = [], time.time()
        for seed in seeds:
          print(f"== {part}: {arm}, seed {seed}", flush=True)
          extra = dict(curve=max(args.curve, 0)) if part in CURVE_METRIC else {}
          if part != "hat":
            extra["overrides"] = part_overrides[part]
          if part == "bpb":
            extra["budget_kind"] = args.bpb_budget
          runs.append(RUNNERS[part](arm, seed, variant, steps, n, root, **extra))
          print(f"== {part}: {arm}, seed {seed}: " + ", ".join(  # each seed's figures as soon as it has them
              f"{k} {v:.4g}" for k, v in runs[-1].items() if isinstance(v, (int, float))), flush=True)
        row = {k: protocol.summary([r[k] for r in runs]) for k in runs[0]
               if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None}
        if any("curve" in r for r in runs):
          row["curves"] = [r.get("curve", []) for r in runs]  # one list of {step, metrics} per seed
        if part != "hat":
          row["config"] = list(part_overrides[part])
        if part == "bpb":
          row["budget_kind"] = args.bpb_budget
        row.update(paper=PAPER.get((part, arm.split(":")[0]), ""), variant=variant, seeds=seeds, **settings,
                   seconds=time.time() - started,
                   **protocol.meta(None if argv is None else ["benchmarks/reproduce.py", *argv]))
        _save(args.out, {part: dict(variant=variant, arms={arm: row})}, add_seeds=args.add_seeds)
        results[part]["arms"][arm] = _load(args.out)[part]["arms"][arm]  # the table shows every recorded seed

  print(f"reproduce: seeds {seeds}, steps {steps or 'per variant'}, {n} probe documents, "
        f"{jax.default_backend()} x{jax.device_count()}, {time.time() - t0:.0f}s")
  for part, result in results.items():
    titles = METRICS[part]
    print(f"\n  {part} ({result['variant']})")
    width = max(8, *map(len, result["arms"]))
    print(f"  {'arm':{width}s} " + " ".join(f"{t:>18s}" for _, t in titles) + "  paper")
    for arm, row in result["arms"].items():
      cells = " ".join(_cell(row.get(k)) for k, _ in titles)
      print(f"  {arm:{width}s} {cells}  {row['paper']}")
    for arm, row in result["arms"].items():
      for seed, curve in zip(row["seeds"], row.get("curves", [])):
        key = CURVE_METRIC[part]
        if curve:
          print(f"  curve of {key}, {arm} seed {seed}: " + ", ".join(f"{c['step']}: {c[key]:.3f}" for c in curve))
  print(f"\n  wrote {args.out}")
  return results


def _cell(s: dict | None) -> str:
  if s is None:
    return f"{'-':>18s}"
  return f"{s['mean']:9.3g} ± " + (f"{s['std']:6.2g}" if s.get("std") is not None else f"{'-':>6s}")


def _load(out: str) -> dict:
  path = pathlib.Path(out)
  return json.loads(path.read_text()).get("parts", {}) if path.exists() else {}


def _check_addable(out: str, part: str, arm: str, settings: dict, seeds: list[int]) -> None:
  """--add-seeds: arm's recorded row (if any) was measured the same way and has none of `seeds`."""
  old = _load(out).get(part, {}).get("arms", {}).get(arm)
  if old is None:
    return
  recorded = {k: old.get(k, [] if k == "config" else None) for k in settings}  # rows before --PART-config had none
  differs = [f"{k} {recorded[k]!r} != {v!r}" for k, v in settings.items() if recorded[k] != v]
  if differs:
    raise SystemExit(f"error: --add-seeds: {part} arm {arm!r} in {out} was measured with {'; '.join(differs)}; "
                     "run with its settings or drop --add-seeds to replace it")
  again = sorted(set(old.get("seeds", [])) & set(seeds))
  if again:
    raise SystemExit(f"error: --add-seeds: {part} arm {arm!r} in {out} already has seed(s) {again}; "
                     "choose other --seeds or drop --add-seeds to replace it")


def _add_seeds(old: dict, new: dict) -> dict:
  """One arm's row with both rows' seeds: metric values joined (and their mean/std recomputed), wall seconds
  summed, everything else (date, machine) from the new row."""
  row = dict(new, seeds=[*old["seeds"], *new["seeds"]], seconds=old.get("seconds", 0.0) + new["seconds"])
  if "curves" in old or "curves" in new:
    row["curves"] = [*old.get("curves", [[]] * len(old["seeds"])), *new.get("curves", [[]] * len(new["seeds"]))]
  for key, value in new.items():
    if isinstance(value, dict) and "values" in value and isinstance(old.get(key), dict):
      row[key] = protocol.summary([*old[key]["values"], *value["values"]])
  return row


def _save(out: str, results: dict, add_seeds: bool = False) -> None:
  """The JSON so far (after every arm: a long run that stops keeps what it measured). What an earlier run left
  in the same file stays unless this run measures the same arm of the same part again (with `add_seeds`, the
  arm then keeps its earlier seeds too); every arm carries its own seeds, steps, date and machine."""
  path = pathlib.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  parts = _load(out)
  for name, part in results.items():
    merged = dict(parts.get(name, {}), **{k: v for k, v in part.items() if k != "arms"})
    arms = dict(parts.get(name, {}).get("arms", {}))
    for arm, row in part["arms"].items():
      arms[arm] = _add_seeds(arms[arm], row) if add_seeds and arm in arms else row
    merged["arms"] = arms
    parts[name] = merged
  path.write_text(json.dumps(dict(parts=parts), indent=2) + "\n")


if __name__ == "__main__":
  main()
