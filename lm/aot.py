"""`lm compile`: a run's train and eval steps compiled ahead of time for a TPU slice, on any machine (or for this
machine's own CPUs, `--topology cpu`: compiled FLOPs against the family's analytic count, for any experiment).

libtpu builds a topology's devices here (`hardware.topology_devices`) and compiles the real steps for them,
with the config's mesh over those devices, so what the TPU compiler reports is what a pod would run: bytes
per device against the chip's HBM, FLOPs, the collectives it inserted. Nothing is allocated and no data is
read; the tokenizer's size is what the config says it will be.

Two compiles are made. The *real* one (the config as given) is the memory report and the collectives. Its
`cost_analysis` counts the body of every rolled loop once (the layer scan, gradient accumulation, the
loss's tiles), so FLOPs come from a second compile of the same step with every loop unrolled and one row
per device of a 4-chip slice of the same generation, scaled to the global batch (the optimizer update is
then counted once per scaled row: a few FLOPs per parameter against ~6 per parameter per token, noise at
these sizes).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import tempfile
import time

import jax
import ml_collections
import numpy as np

from lm import hardware, parallel
from lm.data.tokenizers import Tokenizer
from lm.errors import ConfigError
from lm.train import loop
from lm.train.run import Run, _vocab_guess, build_run, eval_batch_size

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE_RE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_OOM_RE = re.compile(r"Used ([\d.]+[KMGT]?i?B?) of ([\d.]+[KMGT]?i?B?) hbm", re.I)


@dataclasses.dataclass
class Compiled:
  """What one compile reported: bytes per device, per-device cost, the collectives, or the OOM it hit."""
  memory: dict | None = None
  cost: dict | None = None
  collectives: dict | None = None
  oom: str | None = None
  seconds: float = 0.0


def _abstract_batch(run: Run, rows: int) -> dict:
  sharding = parallel.batch_sharding(run.mesh)
  return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
          for k, s in run.family.batch_spec(run.config, rows).items()}


def _train_fn(run: Run):
  """The loop's own jitted step; the bytes per unit are data, so only their shape reaches the compile."""
  return loop.jit_train_step(run, np.ones(run.tokenizer.vocab_size, np.float32))


def _collectives(dump: str) -> dict[str, int]:
  """Collective ops in the optimized HLO that the compiler dumped (`Compiled.as_text` fails to re-read
  some TPU modules with async ops); a loop body's ops count once."""
  counts: dict[str, int] = {}
  for path in pathlib.Path(dump).glob("*after_optimizations.txt"):
    for name in _COLLECTIVE_RE.findall(path.read_text(errors="replace")):
      counts[name] = counts.get(name, 0) + 1
  return counts


def _compile(fn, *args, hlo: bool = True) -> Compiled:
  t0 = time.time()
  dump = tempfile.mkdtemp(prefix="lm-compile-")
  options = dict(xla_dump_to=dump, xla_dump_hlo_as_text=True, xla_dump_hlo_pass_re="^$") if hlo else {}
  try:
    compiled = fn.lower(*args).compile(compiler_options=options)
    collectives = _collectives(dump) if hlo else None
  except Exception as e:  # libtpu: XlaRuntimeError RESOURCE_EXHAUSTED ... CompileTimeHbmOom
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text and "out of memory" not in text.lower():
      raise
    m = _OOM_RE.search(text)
    line = f"needs {m.group(1)} of {m.group(2)} HBM" if m else text.strip().splitlines()[0][:300]
    return Compiled(oom=line, seconds=time.time() - t0)
  finally:
    shutil.rmtree(dump, ignore_errors=True)
  mem = compiled.memory_analysis()
  memory = None
  if mem is not None:
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias",
                                                                       "generated_code")}
    memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  cost = {k: float(v) for k, v in (cost or {}).items()
          if k in ("flops", "bytes accessed", "optimal_seconds", "transcendentals")}
  if cost.get("optimal_seconds", 1.0) <= 0:  # libtpu gives a negative number when it has no estimate
    cost.pop("optimal_seconds")
  return Compiled(memory=memory, cost=cost, collectives=collectives, seconds=time.time() - t0)


def _flops_config(config: ml_collections.ConfigDict, rows: int) -> ml_collections.ConfigDict:
  """The same step with every loop unrolled, `rows` rows and XLA attention, so `cost_analysis` counts all of
  it."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.scan_unroll = 1 << 20  # >= any layer count: fully unrolled
  if "logits_chunk" in c.model:
    c.model.logits_chunk = -1
  c.train.grad_accum = 1
  c.data.batch_size = rows
  c.model.attention_impl = "xla"  # a Pallas kernel is a custom call whose FLOPs XLA's cost analysis never sees
  return c


def analytic_flops_per_step(run: Run) -> float | None:
  """The family's own FLOPs count of one training step over full rows (every unit scored)."""
  rows = {k: np.ones(s.shape, s.dtype) for k, s in run.family.batch_spec(run.config, run.config.data.batch_size).items()}
  try:
    return float(run.flops_per_byte(1.0, [rows])["flops_per_byte_train"])
  except (KeyError, ValueError, TypeError):
    return None


def cpu_flops(config: ml_collections.ConfigDict, optimized: bool = True) -> dict:
  """The family's analytic FLOPs per training step against XLA's count of the same step, unrolled, for this
  machine's CPUs (`lm compile --topology cpu` without the memory compiles). `optimized=False` counts the
  program as lowered, before XLA's passes: within 0.4% of the compiled count for every tiny experiment
  (BUILD_NOTES), in a tenth of the time."""
  devices = hardware.topology_devices("cpu")
  run = build_run(config, Tokenizer(_vocab_guess(config), 0, 1, 2), devices)
  out = dict(analytic_flops_per_step=analytic_flops_per_step(run))
  if optimized:
    out.update(_compiled_flops(run, "cpu", devices, None))
  else:
    rows = config.data.batch_size  # on one device: the lowered program is the whole step's, whatever the mesh
    c = _flops_config(config, rows)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    small = build_run(c, run.tokenizer, devices[:1])
    with parallel.activation_context(small.mesh):
      cost = _train_fn(small).lower(small.abstract_state, _abstract_batch(small, rows)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["lowered_flops_per_step"] = float(cost["flops"])
  counted = out.get("compiled_flops_per_step") or out.get("lowered_flops_per_step")
  if out["analytic_flops_per_step"] and counted:
    out["compiled_over_analytic"] = counted / out["analytic_flops_per_step"]
  return out


def _advice(config) -> str:
  m, mesh = config.model, config.mesh
  tips = []
  if m.remat_policy == "none":
    tips.append("--config.model.remat_policy=dots (or full)")
  elif m.remat_policy != "full":
    tips.append("--config.model.remat_policy=full")
  if int(mesh.fsdp) == 1:
    tips.append("--config.mesh.fsdp=-1 --config.mesh.data=1 (shard params and optimizer state)")
  tips.append(f"--config.train.grad_accum={2 * int(config.train.grad_accum)} (or a smaller data.batch_size)")
  return "; ".join(tips)


def compile_report(config: ml_collections.ConfigDict, topology: str, flops: bool = True) -> dict:
  """Compile `config`'s train and eval steps for `topology`; the report `lm compile` prints and writes."""
  devices = hardware.topology_devices(topology)
  run = build_run(config, Tokenizer(_vocab_guess(config), 0, 1, 2), devices)
  if run.needs.reference is not None:
    raise ConfigError("lm compile does not compile objectives with a reference run (rho); compile the "
                      "reference's own experiment, and this one with its objective swapped for ntp")
  config, mesh = run.config, run.mesh
  spec = hardware.device_spec(devices[0])
  report = dict(experiment=config.experiment, topology=topology, devices=len(devices),
                device_kind=devices[0].device_kind, chip=spec.chip if spec else None,
                hbm_bytes_per_device=spec.hbm_bytes if spec else None, mesh=dict(mesh.shape),
                batch=dict(global_rows=config.data.batch_size, grad_accum=config.train.grad_accum,
                           units_per_row=run.family.units_per_row(config)),
                model=dict(remat_policy=config.model.remat_policy, attention_impl=config.model.attention_impl,
                           dtype=config.model.dtype, scan_unroll=config.model.scan_unroll,
                           logits_chunk=getattr(run.model, "cfg", None) and run.model.cfg.logits_chunk),
                params=int(sum(np.prod(s.shape) for s in jax.tree.leaves(run.abstract_state.params))))
  train_fn = _train_fn(run)  # outside the mesh context: its constants live on this host
  eval_fn = jax.jit(run.family.eval_step(run.model), in_shardings=(run.param_shardings, parallel.batch_sharding(mesh)))
  with parallel.activation_context(mesh):
    train = _compile(train_fn, run.abstract_state, _abstract_batch(run, config.data.batch_size))
    evaluate = _compile(eval_fn, run.abstract_state.params, _abstract_batch(run, eval_batch_size(config)))
  report["train"] = dataclasses.asdict(train)
  report["eval"] = dataclasses.asdict(evaluate)
  hbm = report["hbm_bytes_per_device"]
  peaks = [c.memory["peak"] for c in (train, evaluate) if c.memory]
  if train.oom or evaluate.oom:
    report["fits"] = False
  elif hbm is None or len(peaks) < 2:  # a chip not in the table, or no memory analysis: not a yes
    report["fits"] = None
  else:
    report["fits"] = max(peaks) <= hbm
  if report["fits"] is False:
    report["advice"] = _advice(config)
  report["analytic_flops_per_step"] = analytic_flops_per_step(run)
  if flops:
    report.update(_compiled_flops(run, topology, devices, spec))
    if report["analytic_flops_per_step"] and report.get("compiled_flops_per_step"):
      report["compiled_over_analytic"] = report["compiled_flops_per_step"] / report["analytic_flops_per_step"]
  return report


# FLOPs are counted on a 4-chip slice of the same generation: on a big slice XLA turns fsdp matmuls into
# windowed einsums (a loop of collective-permutes and partial dots) whose body cost analysis counts once
# (token_8b on v5p:4x4x2 counted 0.75x the analytic FLOPs; on v5p:2x2x1 it counts 1.1x, as token_1b does).
_FLOPS_SLICE = {"v4": "v4:2x2x1", "v5p": "v5p:2x2x1", "v5e": "v5e:2x2", "v6e": "v6e:2x2"}


def _unrolled_cost(config, tokenizer, devices, rows: int, layers: int | None = None) -> Compiled:
  """Cost of the step unrolled over `rows` rows on `devices` sharded fsdp (FLOPs do not depend on the mesh)."""
  c = _flops_config(config, rows)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  if layers is not None:
    c.model.num_layers = layers
  small = build_run(c, tokenizer, devices)
  fn = _train_fn(small)  # outside the mesh context: its constants live on this host
  with parallel.activation_context(small.mesh):
    return _compile(fn, small.abstract_state, _abstract_batch(small, rows), hlo=False)


def _compiled_flops(run: Run, topology: str, devices, spec) -> dict:
  """FLOPs per step from an unrolled compile (one row per device of a 4-chip slice, scaled to the batch), with
  a roofline step-time estimate. When the unrolled step itself does not fit (its attention and logits are
  dense, its layers unscheduled: e.g. 8B at 8192 tokens), the cost of L layers is extrapolated from 2- and
  3-layer compiles, FLOPs being linear in depth (a 1-layer step is not on the line: token_1b's first layer
  counted 5% more than its later ones)."""
  config = run.config
  rows = config.data.batch_size
  small_slice = _FLOPS_SLICE.get(hardware.tpu_generation(topology))
  counted = devices if len(devices) <= 4 or small_slice is None else hardware.topology_devices(small_slice)
  # A TPU slice's step is counted on one row per device and scaled (its optimizer update then counts once per
  # row); this machine's own CPUs compile the whole batch, so their count is the step's own.
  counted_rows = rows if topology == "cpu" and rows % len(counted) == 0 else len(counted)
  unrolled = _unrolled_cost(config, run.tokenizer, counted, counted_rows)
  out = dict(flops_compile_seconds=unrolled.seconds,
             flops_counted_on=f"{len(counted)} devices, {counted_rows} rows")
  cost = unrolled.cost
  layers = int(config.model.get("num_layers", 0) or 0)
  if unrolled.oom and layers > 3:
    c2, c3 = (_unrolled_cost(config, run.tokenizer, counted, counted_rows, layers=n) for n in (2, 3))
    out["flops_compile_seconds"] += c2.seconds + c3.seconds
    if c2.cost and c3.cost and "flops" in c2.cost and "flops" in c3.cost:
      cost = {k: c2.cost[k] + (layers - 2) * (c3.cost[k] - c2.cost[k]) for k in c2.cost if k in c3.cost}
      out["flops_note"] = (f"the unrolled {layers}-layer step does not fit ({unrolled.oom}); FLOPs extrapolated "
                           "from 2- and 3-layer compiles")
  if not cost or "flops" not in cost:
    return dict(out, compiled_flops_per_step=None,
                flops_note=unrolled.oom or "the compiler reported no FLOPs")
  # the cost is per device (an SPMD partition) of `counted_rows / len(counted)` rows
  out["compiled_flops_per_step"] = cost["flops"] * len(counted) * rows / counted_rows
  per_device = out["compiled_flops_per_step"] / len(devices)
  # memory: bytes accessed of one row scaled to a device's rows, so the weights' reads count once per row (an
  # upper bound); libtpu: the compiler's own estimate for one row, scaled the same way
  rows_per_device = rows / (run.mesh.shape["data"] * run.mesh.shape["fsdp"])
  seconds = dict(compute=per_device / spec.peak_bf16 if spec else None,
                 memory_upper_bound=cost.get("bytes accessed", 0.0) * rows_per_device / spec.hbm_bandwidth
                 if spec else None,
                 libtpu=cost["optimal_seconds"] * rows_per_device if "optimal_seconds" in cost else None)
  seconds["roofline"] = seconds["compute"]
  out["step_seconds_estimate"] = seconds
  return out


def _gib(n) -> str:
  if n is None:
    return "-"
  return f"{n / hardware.GIB:.2f} GiB" if n >= hardware.GIB else f"{n / 2**20:.1f} MiB"


def format_report(r: dict) -> str:
  lines = [f"{r['experiment']} on {r['topology']}: {r['devices']} x {r['device_kind']} ({_gib(r['hbm_bytes_per_device'])}"
           f" HBM each), mesh {r['mesh']}, {r['params'] / 1e6:.1f}M params, batch {r['batch']['global_rows']} rows"
           f" x {r['batch']['units_per_row']} (grad_accum {r['batch']['grad_accum']}), remat "
           f"{r['model']['remat_policy']}, attention {r['model']['attention_impl']}"]
  lines.append(f"{'step':<6} {'argument':>12} {'output':>12} {'alias':>12} {'temp':>12} {'peak':>12}  compile")
  for name in ("train", "eval"):
    c = r[name]
    if c["oom"] or not c["memory"]:
      what = f"does not fit: {c['oom']}" if c["oom"] else "no memory analysis from the compiler"
      lines.append(f"{name:<6} {what}  ({c['seconds']:.1f}s)")
      continue
    m = c["memory"]
    lines.append(f"{name:<6} {_gib(m['argument']):>12} {_gib(m['output']):>12} {_gib(m['alias']):>12} "
                 f"{_gib(m['temp']):>12} {_gib(m['peak']):>12}  {c['seconds']:.1f}s")
  hbm = r["hbm_bytes_per_device"]
  if r["fits"]:
    peak = max(r["train"]["memory"]["peak"], r["eval"]["memory"]["peak"])
    lines.append(f"FITS: peak {_gib(peak)} of {_gib(hbm)} per device ({100 * peak / hbm:.0f}%)")
  elif r["fits"] is None:
    lines.append(f"compiled; whether it fits is unknown: no HBM figure for {r['device_kind']!r} in lm/hardware.py "
                 "(or no memory analysis)")
  else:
    lines.append(f"DOES NOT FIT in {_gib(hbm)} per device; try {r['advice']}")
  analytic, compiled = r.get("analytic_flops_per_step"), r.get("compiled_flops_per_step")
  if compiled:
    ratio = f" = {compiled / analytic:.3f} x analytic {analytic:.3e} (compiled counts remat recompute, " \
        "elementwise work and dense causal attention)" if analytic else ""
    lines.append(f"FLOPs per step: compiled {compiled:.3e}{ratio}")
    if r.get("flops_note"):
      lines.append(f"  ({r['flops_note']})")
    s = r["step_seconds_estimate"]
    parts = [f"{k} {v * 1e3:.1f} ms" for k, v in s.items() if v is not None]
    if parts:  # none for a device without figures in lm/hardware.py (CPUs)
      lines.append("step time estimate (roofline, not a measurement): " + ", ".join(parts))
  elif analytic:
    lines.append(f"FLOPs per step: analytic {analytic:.3e}" + (f"; compiled: {r['flops_note']}" if "flops_note" in r
                                                                else ""))
  coll = r["train"]["collectives"] or {}
  if coll:
    lines.append("collectives in the train step's HLO (a loop body's once): " +
                 ", ".join(f"{k} {v}" for k, v in sorted(coll.items())))
  return "\n".join(lines)


def compile_command(config, topology: str, json_path: str | None, flops: bool = True) -> int:
  from lm.train import checkpoint
  report = compile_report(config, topology, flops=flops)
  print(format_report(report), flush=True)
  if json_path:
    from etils import epath
    epath.Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(json_path, report)
    print(f"wrote {json_path}")
  return 1 if report["fits"] is False else 0

