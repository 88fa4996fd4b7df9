"""The training loop: resume from the newest good checkpoint (or start), train, save, evaluate."""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from lm import families, hardware, objectives, parallel
from lm.data import tokenizers
from lm.errors import CheckpointError, ConfigError, RunFinished
from lm.train import checkpoint, history, init_from, lease, metrics as metrics_lib, trackers
from lm.train.optim import learning_rate
from lm.train.run import (Restored, Run, backend_of, build_run, check, eval_batch_size, evaluate_parts,
                          init_params, load_reference, make_evaluator, restore_step, train_flops_per_step)
from lm.train.state import param_count
from lm.train.step import make_train_step

def _saved_config(meta: dict, where: str, config) -> dict:
  """A checkpoint's config on top of this version's defaults (fields added since then compare equal); it may
  name modules outside lm only where this run's own config names them too."""
  return families.from_json(json.dumps(meta["config"]), where, families.own_code(config)).to_dict()


def resume(ckpts: checkpoint.Checkpoints, config, devices=None) -> tuple[Restored, object, dict] | None:
  """The newest step that restores into `config`, with its data and the config fields that changed since it
  was saved; None when the workdir has no checkpoint. Damaged steps are moved aside; any other failure stops
  with every step in place (`checkpoint.restore_newest`, which also makes every process agree on the step). A
  change that a resume may not make (`history.SAFE_ON_RESUME`), or a run that already reached `train.steps`,
  is an error before any data is loaded; the data always uses the checkpoint's own tokenizer."""

  def attempt(step):
    meta = ckpts.read_meta(step)
    if init_from.is_import(meta):
      raise ConfigError(f"{ckpts.workdir} holds an imported model (weights only, no optimizer state); train from it "
                        f"in a new workdir: lm train EXPERIMENT --config.init_from={ckpts.workdir} --workdir NEW")
    changed = history.changes(_saved_config(meta, f"checkpoint step {step} in {ckpts.workdir}", config),
                              config.to_dict())
    refused = [history.describe(k, *v) for k, v in changed.items() if not history.is_safe(k)]
    if refused:
      raise CheckpointError(
          f"cannot resume from checkpoint step {step} in {ckpts.workdir} with {'; '.join(refused)}: a resumed run "
          "may change only its length, logging, evaluation, checkpointing, mesh, remat, compute dtype and "
          "microbatching; set these back or pass --restart to start over (old checkpoints are kept)")
    run = build_run(config, meta["tokenizer"], devices)
    return meta, run, restore_step(ckpts, step, run, meta["config"]), changed

  found = checkpoint.restore_newest(ckpts, attempt, lambda step, r: ckpts.verify(step, r[0]["integrity"], r[2]))
  if found is None:
    return None
  step, (meta, run, state, changed) = found
  # Said only once the step read and matched its checksums: a damaged finished step is not a finished run.
  if step >= config.train.steps:
    raise RunFinished(f"run finished at step {step} in {ckpts.workdir} (train.steps={config.train.steps}); "
                      "raise --config.train.steps or use --restart (`lm eval` scores it)")
  return Restored(step, state, meta["data"], run), run.family.load_data(config, meta["tokenizer"]), changed


class Preemption:
  """SIGTERM or SIGINT: save at the end of the current step and exit 0; a second signal exits at once.

  Multi-process runs must agree on the step: jax's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM and `reached_preemption_sync_point` says when every process
  is at the same step; SIGINT is turned into SIGTERM for it.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self.multi = jax.process_count() > 1
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in ((signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT)):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      sys.stderr.write(f"{name} again: exiting now without saving\n")
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signal_name = name
    sys.stderr.write(f"{name}: saving a checkpoint after this step, then exiting (send it again to exit "
                     "at once)\n")
    sys.stderr.flush()
    if self.multi:
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    if self.multi:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal_name is not None


class LogWindow:
  """Sums of step metrics since the last log line; `flush` turns them into one `metrics.jsonl` record."""

  def __init__(self, config, run: Run, compute: dict, writer, progress):
    self.config, self.compute, self.writer, self.progress = config, compute, writer, progress
    self.units_per_step = config.data.batch_size * run.family.units_per_row(config)
    self.peak_flops = hardware.peak_flops(run.mesh.devices.flat)  # None on CPUs: no MFU there
    main = config.objectives[0]
    self.main = main.get("label", main["name"])
    self.first_seconds = 0.0
    self._reset()

  def _reset(self):
    self.sums = None  # device arrays until a log step reads them
    self.steps, self.timed, self.start = 0, 0, time.time()

  def start_clock(self, first_step_seconds: float) -> None:
    """Throughput counts from here (the end of a run's first step, which may still warm up), so tokens/s
    never includes compile time; a window holding only that first step reports its own time."""
    self.start, self.timed, self.first_seconds = time.time(), 0, first_step_seconds

  def add(self, step: int, step_metrics, timed: bool = True) -> None:
    """Adds a step's metrics on the device; only a log step reads them (one transfer per window)."""
    self.sums = step_metrics if self.sums is None else _accumulate(self.sums, step_metrics)
    self.steps += 1
    self.timed += int(timed)
    if step % self.config.train.log_every == 0 or step == self.config.train.steps:
      sums, lr = read_host((self.sums, step_metrics["lr"]))
      self.sums = {k: float(v) for k, v in sums.items()}
      self.flush(step, float(lr))

  def flush(self, step: int, lr: float) -> None:
    n, w = self.steps, self.sums
    timed, elapsed = (self.timed, time.time() - self.start) if self.timed else (n, self.first_seconds)
    elapsed = max(elapsed, 1e-9)
    out = objectives.summarize({k: v for k, v in w.items() if "/" in k})
    out.update(loss=w["loss"] / n, grad_norm=w["grad_norm"] / n, lr=lr, skipped_steps=w["skipped"],
               tokens_per_sec=timed * self.units_per_step / elapsed,
               bytes_per_sec=timed * self.compute["bytes_per_step"] / elapsed,
               train_flops=step * self.compute["flops_per_step"],
               train_flops_data=step * self.compute.get("flops_per_step_data", self.compute["flops_per_step"]),
               flops_per_byte_train=self.compute["flops_per_byte_train"])
    if self.peak_flops:  # executed FLOPs (the analytic count over the padded step, no remat recompute) over the
      # mesh's peak bf16 FLOP/s
      out["mfu"] = timed * self.compute["flops_per_step"] / elapsed / self.peak_flops
    if f"{self.main}/bpb" in out:
      out["bpb"] = out[f"{self.main}/bpb"]
    self.writer.write(step, out)
    self.progress.update(step, out)
    self._reset()


@jax.jit  # not donating: the first step's metrics are also what the loop waits on to bound its run-ahead
def _accumulate(sums: dict, step_metrics: dict) -> dict:
  return jax.tree.map(jnp.add, sums, step_metrics)


@jax.jit
def _longest(streak, worst):
  return jnp.maximum(streak, worst)


def read_host(tree):
  """The one way the training loop reads device values: at log steps and non-finite checks, never every step
  (tests count the calls)."""
  return jax.device_get(tree)


# Steps dispatched ahead of the one the host waits for: enough to keep the device busy, few enough that
# batches for far-future steps do not pile up in device memory.
RUN_AHEAD = 2


def jit_train_step(run: Run, unit_bytes, reference: tuple[Run, object] | None = None):
  """The jitted `(state, batch[, reference_params]) -> (state, metrics)` of a run, for its mesh's platform:
  what `lm train` runs and `lm compile` compiles. Call it outside the mesh context (its constants live on the
  host)."""
  config, mesh = run.config, run.mesh
  extra_shardings = (reference[0].param_shardings,) if reference else ()
  return jax.jit(
      make_train_step(run.model, objectives.build(config.objectives), run.tx,
                      learning_rate(config.optim, config.train.steps), jnp.asarray(unit_bytes, jnp.float32),
                      config.train.grad_accum, reference_model=reference[0].model if reference else None,
                      backend=mesh.devices.flat[0].platform),
      in_shardings=(run.state_shardings, parallel.batch_sharding(mesh), *extra_shardings),
      out_shardings=(run.state_shardings, parallel.replicated(mesh)), donate_argnums=0)


def train_step(run: Run, data, devices=None):
  """The jitted train step of a run and the `extra` arguments it takes (a reference model's params, for
  objectives that ask for one)."""
  reference = load_reference(run, devices)
  return jit_train_step(run, data.unit_bytes(), reference), ((reference[1],) if reference else ())


class Profile:
  """`train.profile_steps="START:STOP"`: a jax profiler trace of steps START+1..STOP, in WORKDIR/profile."""

  def __init__(self, spec: str, workdir, last_step: int):
    self.start = self.stop = None
    self.last_step = last_step
    self.directory, self.active = str(epath.Path(workdir) / "profile"), False
    if spec:
      self.start, self.stop = (int(x) for x in spec.split(":"))

  def before(self, step: int) -> None:
    if step == self.start:
      try:
        jax.profiler.start_trace(self.directory)
        self.active = True
      except Exception as e:  # pylint: disable=broad-except  # a profile must never stop a run
        print(f"warning: train.profile_steps: no trace ({checkpoint.first_line(e)})", file=sys.stderr, flush=True)

  def after(self, done: int, outputs) -> None:
    if self.active and (done >= self.stop or done == self.last_step):
      jax.block_until_ready(outputs)
      self.active = False
      try:
        jax.profiler.stop_trace()
      except Exception as e:  # pylint: disable=broad-except  # e.g. a store the profiler cannot write to
        print(f"warning: train.profile_steps: the trace was not written ({checkpoint.first_line(e)})",
              file=sys.stderr, flush=True)
        return
      print(f"profile of steps {self.start + 1}..{done} written to {self.directory}", flush=True)


def use_compilation_cache(setting: str, backend: str) -> str | None:
  """Point jax's persistent compilation cache at `train.compilation_cache` ("auto": a per-user directory on
  accelerators, none on CPU, whose compiles are quick); returns the directory used."""
  directory = (os.path.expanduser("~/.cache/lm/xla") if backend != "cpu" else "") if setting == "auto" else setting
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return directory or None


def release_freed_memory() -> None:
  """Hands memory that the C heap holds freed back to the OS (glibc's `malloc_trim`; elsewhere nothing).

  XLA's compiler and the data pipeline free hundreds of MB when they finish, which glibc keeps mapped: on
  a 2-core CPU the tiny model's `lm train` held ~170 MB more in steady state without this, and the next
  phase's peak stacked on it (BUILD_NOTES, issue 13).
  """
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Train `config` in `workdir` (resuming from its newest good checkpoint) on `devices` (default: all).

  Every config error is raised before data is read, anything compiles or the workdir is written; a resume
  prints the fields it changes, refuses changes it may not make and a run that is already finished. The run
  holds the workdir's lease (`lease.hold`) from before its first read of a checkpoint to its end: a second
  writer is refused in one line naming this one.
  """
  workdir = checkpoint.workdir_path(workdir)
  t0 = time.time()
  config = check(config, devices)
  if jax.process_index() == 0:
    lease.check_writable(workdir)
  with lease.hold(workdir, "lm train"):
    return _train(config, workdir, devices, t0)


def _train(config: ml_collections.ConfigDict, workdir, devices, t0: float) -> dict:
  primary = jax.process_index() == 0
  use_compilation_cache(config.train.compilation_cache, backend_of(devices))
  ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints, read_only=False, quarantine=True)
  found = resume(ckpts, config, devices)
  changed = None
  if found is not None:
    restored, data, changed = found
    run, state, start = restored.run, restored.state, restored.step
  else:
    tokenizer = None
    if config.init_from:  # its tokenizer, exactly
      tokenizer = init_from.init_tokenizer(config.init_from)
    else:
      tokenizers.check_spec(config.data.tokenizer)  # a resume uses its checkpoint's tokenizer, never this spec
    data = families.get(config.model.family).load_data(config, tokenizer)
    run = build_run(config, data.tokenizer, devices)
    state, start = run.init(config.train.seed), 0
    if config.init_from:
      params, fresh = init_params(run, state.params)
      state = state.replace(params=params)
      if primary:
        print(f"initialised from {config.init_from}" + (f"; fresh: {', '.join(sorted({p.split('/')[0] for p in fresh}))}"
                                                         if fresh else ""), flush=True)
  release_freed_memory()
  config, mesh = run.config, run.mesh
  train_iter = data.train_iterator(config.data.batch_size, seed=config.train.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   workers=config.data.workers, prefetch=config.data.prefetch)
  if found is not None:
    train_iter.set_state(restored.data_state)
    if primary:
      print(f"resumed from step {start} in {workdir}" + (", with" if changed else ""), flush=True)
      for key, (old, new) in changed.items():
        print(f"  {history.describe(key, old, new)}", flush=True)

  step_fn, extra_args = train_step(run, data, devices)
  evaluator = make_evaluator(run)
  evaluate_val = functools.partial(evaluate_parts, evaluator, data=data, split="val",
                                   batch_size=eval_batch_size(config))
  for part in range(len(data.part_names)):  # held-out batches are read and packed once, here, before any compile
    data.eval_batches("val", eval_batch_size(config), max_batches=config.train.eval_batches, part=part)
  if primary:
    print(f"{config.experiment}: {param_count(state.params) / 1e6:.2f}M params, mesh "
          f"{dict(mesh.shape)}, {mesh.size} {jax.default_backend()} devices, setup "
          f"{time.time() - t0:.1f}s", flush=True)

  preempted = None
  # Non-finite streak checks read one scalar from the device: every `check_every` steps, not every step.
  max_bad = config.train.max_nonfinite_steps
  check_every = min(config.train.log_every, max_bad) if max_bad else 0
  worst = None
  in_flight = collections.deque()
  with parallel.activation_context(mesh), Preemption() as preemption:
    batch = run.put_batch(next(train_iter))
    release_freed_memory()
    with metrics_lib.Phase("compiling train step", enabled=primary):
      step_fn = step_fn.lower(state, batch, *extra_args).compile()
    release_freed_memory()
    # Only now, with data, reference, evaluator and step all built, does the workdir get written: the
    # human-readable copies (the checkpoint holds its own), the record of what trains from here, metrics.
    if primary:
      try:
        workdir.mkdir(parents=True, exist_ok=True)
        data.tokenizer.save(str(workdir / "tokenizer"))
        history.record(workdir, config.to_dict(), start, changed)
      except OSError as e:  # the run's first write: a full disk or a read-only directory is one line
        why = "the disk is full" if e.errno == 28 else checkpoint.first_line(e)
        raise CheckpointError(f"writing to workdir {str(workdir)!r} failed ({why}); free space or pass --workdir to "
                              "a writable directory, then rerun") from None
    writer = trackers.Trackers(config.train.trackers, workdir, config.to_dict(), start, enabled=primary)
    window = LogWindow(config, run, train_flops_per_step(run, data), writer,
                       metrics_lib.Progress(config.train.steps, enabled=primary))
    profile = Profile(config.train.profile_steps, workdir, config.train.steps)
    try:  # a run that stops on an error still hands its last metrics to the trackers (buffered on gs://)
      for step in range(start, config.train.steps):
        if batch is None:  # put while the previous steps still run: dispatch is asynchronous
          batch = run.put_batch(next(train_iter))
        profile.before(step)
        t_step = time.time()
        state, step_metrics = step_fn(state, batch, *extra_args)
        batch = None
        done = step + 1
        if step == start:  # throughput counts from the second step on
          jax.block_until_ready(step_metrics)
          window.start_clock(time.time() - t_step)
        window.add(done, step_metrics, step != start)
        profile.after(done, step_metrics)
        in_flight.append(step_metrics["loss"])
        if len(in_flight) > RUN_AHEAD:
          in_flight.popleft().block_until_ready()  # bounds how far the host runs ahead; reads nothing
        if check_every:  # the longest streak since the last read, so none ends unseen between two reads
          worst = _longest(state.nonfinite_streak, state.nonfinite_streak if worst is None else worst)
        if check_every and (done % check_every == 0 or done == config.train.steps):
          streak, worst = int(read_host(worst)), None
          if streak >= max_bad:
            ckpts.wait()
            raise CheckpointError(
                f"{streak} non-finite steps in a row at step {done}; stopped with the last good checkpoint "
                f"(step {ckpts.latest_step()}) intact; lower optim.lr or raise optim.warmup_steps")
        if preemption.should_stop(done):
          preempted = done
          profile.after(profile.stop or done, step_metrics)
          break
        if config.train.eval_every and done % config.train.eval_every == 0 and done < config.train.steps:
          val, _ = evaluate_val(state.params, max_batches=config.train.eval_batches)
          writer.write(done, {"val_bpb": val["bpb"], **{k: v for k, v in val.items() if k.startswith("val_bpb/")}})
          if primary:
            print(f"step {done}: val_bpb {val['bpb']:.4f}", flush=True)
        if config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
          ckpts.save(done, state, train_iter.get_state(), config.to_dict(), data.tokenizer)

    except BaseException:
      writer.close()
      raise

    last = preempted or config.train.steps
    if start < last and ckpts.latest_step() != last:
      ckpts.save(last, state, train_iter.get_state(), config.to_dict(), data.tokenizer)
    ckpts.wait()
    if preempted is not None:
      writer.close()
      if primary:
        print(f"{preemption.signal_name or 'preempted'}: saved step {preempted} in {workdir}; rerun the same "
              "command to resume", flush=True)
      return dict(step=preempted, preempted=True, seconds=time.time() - t0, state=state, run=run)
    del step_fn, train_iter  # the compiled step and the training stream are done with: free them first
    release_freed_memory()
    val, all_val = evaluate_val(state.params, max_batches=config.eval.max_batches or None)
    val.update(run.flops_per_byte(val["n_bytes"], [b for b, _ in all_val]))
    del all_val
    release_freed_memory()
  writer.write(config.train.steps, {"final_val_bpb": val["bpb"],
                                    **{f"final_{k}": v for k, v in val.items() if k.startswith("val_bpb/")}})
  writer.close()
  summary = dict(step=config.train.steps, val_bpb=val["bpb"], val_n_bytes=val["n_bytes"],
                 seconds=time.time() - t0, preempted=False)
  if primary:
    checkpoint.write_json(workdir / "eval_val.json", dict(val, step=config.train.steps))
  return dict(summary, state=state, run=run)


def move_aside(workdir) -> None:
  """`--restart`: keep the old run's checkpoints, metrics and config history under `<workdir>/previous-<time>/`,
  never delete them."""
  workdir = checkpoint.workdir_path(workdir)
  names = (checkpoint.CHECKPOINT_DIR, checkpoint.QUARANTINE_DIR, "metrics.jsonl", "tensorboard", history.CONFIG,
           history.HISTORY, "wandb", "wandb_id", "eval_val.json")
  moved = [workdir / name for name in names if (workdir / name).exists()]
  if not moved or jax.process_index() != 0:
    return
  target = workdir / time.strftime("previous-%Y%m%d-%H%M%S")
  target.mkdir(parents=True)
  # An object store has no empty folders: a file makes the target exist before anything is moved into it.
  (target / "RESTARTED").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
  for p in moved:
    p.rename(target / p.name)
  print(f"--restart: moved {', '.join(p.name for p in moved)} to {target}", flush=True)
