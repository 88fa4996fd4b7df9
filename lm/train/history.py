"""What a run trained with: `config.json` (the config in effect now) and `config_history.jsonl` (one record
per start or resume: the step it took effect at, the fields it changed, the whole config). Past records are
never rewritten.

A resume may change only the fields in `SAFE_ON_RESUME`: how long to train (and with it the schedule's
length), logging, evaluation, checkpointing, the mesh, rematerialisation, compute dtype and microbatching.
Any other change (the learning rate, the data, the model) would make the checkpoint's history a lie, so it
is refused with the fields named; `--restart` starts a new run instead.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from etils import epath

from lm import config as config_lib
from lm.errors import LMError
from lm.train import checkpoint

CONFIG = "config.json"
HISTORY = "config_history.jsonl"

SAFE_ON_RESUME = (
    "experiment",
    "train.steps", "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_nonfinite_steps", "train.trackers", "train.grad_accum",
    "train.profile_steps", "train.compilation_cache", "train.tpu_flags",
    "eval.", "sample.", "mesh.",
    "rl.",  # `lm train` does not read it (an `lm rl` init run resumes whatever the RL phase asks); lm/rl checks its own
    "model.remat_policy", "model.scan_unroll", "model.dtype", "model.attention_impl", "model.attention_block_q",
    "model.attention_block_kv", "model.attention_interpret",
    "data.eval_max_bytes", "data.workers", "data.prefetch", "data.max_raw_bytes",
)


def changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """`{field: (saved, current)}` for every field that differs (tuples and lists compare as JSON does)."""
  a, b = (config_lib.flatten(_without_derived(json.loads(json.dumps(d)))) for d in (saved, current))
  missing = object()
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def _without_derived(config: dict) -> dict:
  """`config` less the step boundaries set from `at` fractions (lm.config.resolve_weight): they follow
  train.steps, as the learning-rate schedule's length does, and are no change of their own."""
  for objective in config.get("objectives") or ():
    weight = objective.get("weight")
    if isinstance(weight, dict) and "at" in weight:
      weight.pop("boundaries", None)
  return config


def is_safe(field: str) -> bool:
  return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_ON_RESUME)


def describe(field: str, old: Any, new: Any) -> str:
  """`optim.lr: 0.001 -> 1e-05`."""
  return f"{field}: {old!r} -> {new!r}"


def record(workdir, config: dict, step: int, changed: dict[str, tuple[Any, Any]] | None) -> None:
  """Append the config taking effect at `step` to the history, then make it `config.json`."""
  workdir = epath.Path(workdir)
  entry = dict(step=int(step), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               event="start" if changed is None else "resume",
               changes={k: list(v) for k, v in (changed or {}).items()}, config=config)
  path = workdir / HISTORY
  past = path.read_text() if path.exists() else ""
  if past and not past.endswith("\n"):
    past += "\n"
  # Rewritten whole (append is not a thing on every store, gs:// included), atomically: a crash leaves the
  # old history or the new one, never half a line.
  checkpoint.write_text(path, past + json.dumps(entry, sort_keys=True) + "\n")
  checkpoint.write_json(workdir / CONFIG, config)


def read(workdir) -> list[dict]:
  """The history records of a workdir, oldest first ([] for a run from before the history existed)."""
  path = epath.Path(workdir) / HISTORY
  if not path.exists():
    return []
  records = []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError:
      print(f"warning: {path} line {i} is not JSON; skipped", file=sys.stderr)
  return records


def summary(workdir) -> str:
  """What `lm config DIR` prints: the run's config (JSON) and, below it, one line per start and resume."""
  path = epath.Path(workdir) / CONFIG
  if not path.exists():
    raise LMError(f"{str(workdir)!r} holds no {CONFIG}; give a run's workdir or an experiment name")
  lines = [json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True)]
  records = read(workdir)
  if records:
    lines.append(f"\nhistory ({HISTORY}):")
  for r in records:
    changed = "; ".join(describe(k, *v) for k, v in r.get("changes", {}).items())
    lines.append(f"  step {r.get('step')}: {r.get('event', 'start')} at {r.get('time', '?')}"
                 + (f": {changed}" if changed else ""))
  return "\n".join(lines)
