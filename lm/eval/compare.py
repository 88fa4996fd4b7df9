"""`lm compare DIR...`: one table of trained runs (family, parameters, FLOPs per byte, val/test bits per byte,
bytes per second) and, with `-o FILE.png`, bits per byte against training FLOPs.

Reads what the runs wrote: the newest checkpoint's config and parameter shapes, `eval_val.json` /
`eval_test.json` from `lm eval` (FLOPs per byte by component, bits per byte, concept metrics) and
`metrics.jsonl` (bytes per second, the validation curve, and the training FLOPs the loop counted per step).
FLOPs are what the compiled steps execute, padding included (`flops="executed"`), or the data-position count
of an ideal padding-free implementation (`flops="data"`; `lm compare --flops data`).
"""

from __future__ import annotations

import json
import math

from lm.errors import CheckpointError, LMError


def _read_json(path):
  return json.loads(path.read_text()) if path.exists() else None


def summarize_run(workdir, flops: str = "executed") -> dict:
  """What `lm compare` shows for one run; needs `lm eval DIR` to have been run (for FLOPs per byte)."""
  from lm.train import checkpoint
  if flops not in ("executed", "data"):
    raise LMError(f"--flops {flops!r}: choose executed (what the compiled step computes) or data (positions "
                  "holding data)")
  workdir = checkpoint.workdir_path(workdir)
  if checkpoint.latest_step(workdir) is None:
    raise CheckpointError(f"workdir {str(workdir)!r} holds no checkpoint; train it first")
  mngr = checkpoint.manager(workdir, read_only=True)
  step = mngr.latest_step()
  config = checkpoint.restore_meta(mngr, step)["config"]
  params = sum(math.prod(s) for p, s in checkpoint.saved_shapes(mngr, step).items() if p.startswith("params/"))
  val, test = _read_json(workdir / "eval_val.json"), _read_json(workdir / "eval_test.json")
  per_byte, flops_key = ("flops_per_byte_train", "train_flops") if flops == "executed" else \
      ("flops_per_byte_data", "train_flops_data")
  if val is None or per_byte not in val:
    raise LMError(f"{str(workdir)!r} has no eval_val.json with FLOPs per byte ({per_byte}); run `lm eval {workdir}` first")
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()] \
      if (workdir / "metrics.jsonl").exists() else []
  speeds = [r["bytes_per_sec"] for r in records if "bytes_per_sec" in r]
  # Training FLOPs per step as the training loop counted them on its own data (every log record has them).
  counted = [r for r in records if r.get(flops_key)]
  if flops == "data" and records and not counted:
    raise LMError(f"{str(workdir)!r} was trained before lm logged train_flops_data; compare it with --flops "
                  "executed")
  per_step = counted[-1][flops_key] / counted[-1]["step"] if counted else 0.0
  curve = [(r["step"] * per_step, r["val_bpb"]) for r in records if "val_bpb" in r]
  curve.append((step * per_step, val["bpb"]))
  return dict(workdir=str(workdir), name=workdir.name, experiment=config.get("experiment", ""),
              family=config["model"]["family"], params=params, step=step, flops=flops,
              flops_per_byte_train=val[per_byte],
              flops_per_byte_inference=val["flops_per_byte_inference" + ("_data" if flops == "data" else "")],
              **{k: v for k, v in val.items() if k.startswith("flops_per_byte_") and k.endswith("_forward")},
              **{k: val[k] for k in ("oracle_bpb", "l2", "contrastive_accuracy") if k in val},
              train_flops=step * per_step, val_bpb=val["bpb"], test_bpb=test["bpb"] if test else None,
              bytes_per_sec=sorted(speeds)[len(speeds) // 2] if speeds else None, curve=curve)


def table(rows: list[dict]) -> str:
  head = f"{'run':<20}{'family':<14}{'params':>10}{'FLOP/B train':>14}{'train FLOPs':>13}{'val bpb':>9}{'test bpb':>9}{'bytes/s':>10}"
  lines = [head]
  for r in rows:
    test = f"{r['test_bpb']:.4f}" if r["test_bpb"] is not None else "-"
    speed = f"{r['bytes_per_sec']:.0f}" if r["bytes_per_sec"] is not None else "-"
    lines.append(f"{r['name'][:19]:<20}{r['family']:<14}{r['params'] / 1e6:>9.2f}M{r['flops_per_byte_train']:>14.3g}"
                 f"{r['train_flops']:>13.3g}{r['val_bpb']:>9.4f}{test:>9}{speed:>10}")
  return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise LMError("-o needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    xs, ys = zip(*r["curve"])
    ax.plot(xs, ys, marker="o", label=f"{r['name']} ({r['family']})")
  xs_all = [x for r in rows for x, _ in r["curve"] if x > 0]
  if xs_all and max(xs_all) > 10 * min(xs_all):  # log only where the runs span decades
    ax.set_xscale("log")
  else:
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
  kind = rows[0].get("flops", "executed") if rows else "executed"
  ax.set_xlabel("training FLOPs" + (" (data positions)" if kind == "data" else " (executed)"))
  ax.set_ylabel("validation bits per byte")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
