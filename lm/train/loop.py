"""The training loop: resume from the newest good checkpoint (or start), train, save, evaluate."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from lm import families, objectives, parallel
from lm.errors import CheckpointError
from lm.train import checkpoint, metrics as metrics_lib
from lm.train.optim import learning_rate
from lm.train.run import (Restored, Run, build_run, eval_batch_size, load_reference, make_evaluator, restore_step,
                          train_flops_per_step)
from lm.train.state import param_count
from lm.train.step import make_train_step

RECIPE = ("tokenizer", "vocab_size", "source", "val_fraction", "test_fraction", "split_seed")


def _resume_data(family, config, saved_config: dict, saved_tokenizer, step: int, workdir):
  """The run's data with the checkpoint's tokenizer, or an error if the config asks for another one."""
  d, s = config.data, saved_config.get("data", {})
  if all(s.get(k) == d[k] for k in RECIPE):  # same recipe: take what trained it, never retrain
    return family.load_data(config, saved_tokenizer)
  data = family.load_data(config)
  tok = data.tokenizer
  if tok.files() != saved_tokenizer.files():
    how = (f"{tok.vocab_size} ids but the checkpoint's has {saved_tokenizer.vocab_size}"
           if tok.vocab_size != saved_tokenizer.vocab_size else
           f"the same size ({tok.vocab_size} ids) as the checkpoint's but a different vocabulary")
    raise CheckpointError(
        f"tokenizer {d.tokenizer!r} has {how} (checkpoint step {step} in {workdir}, trained with "
        f"data.tokenizer={s.get('tokenizer')!r}); set data.tokenizer back or pass --restart to start over")
  return data


def resume(ckpts: checkpoint.Checkpoints, config, devices=None) -> tuple[Restored, object] | None:
  """The newest step that restores into `config` (with its data), or None; unreadable steps are moved aside."""
  family = families.get(config.model.family)
  found = None
  for step in ckpts.steps():
    meta = ckpts.read_meta(step)
    if meta is None:
      continue
    data = _resume_data(family, config, meta["config"], meta["tokenizer"], step, ckpts.workdir)
    run = build_run(config, data.tokenizer, devices)
    state = restore_step(ckpts, step, run, meta["config"])
    if state is not None:
      found = Restored(step, state, meta["data"], run), data
      break
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("lm-restore-newest")  # nobody saves until corrupt steps moved
  return found


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
    main = config.objectives[0]
    self.main = main.get("label", main["name"])
    self._reset()

  def _reset(self):
    self.sums: dict[str, float] = {}
    self.steps, self.start = 0, time.time()

  def add(self, step: int, step_metrics) -> None:
    host = jax.device_get(step_metrics)
    for k, v in host.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.steps += 1
    if step % self.config.train.log_every == 0 or step == self.config.train.steps:
      self.flush(step, float(host["lr"]))

  def flush(self, step: int, lr: float) -> None:
    elapsed, n, w = max(time.time() - self.start, 1e-9), self.steps, self.sums
    out = objectives.summarize({k: v for k, v in w.items() if "/" in k})
    out.update(loss=w["loss"] / n, grad_norm=w["grad_norm"] / n, lr=lr, skipped_steps=w["skipped"],
               tokens_per_sec=n * self.units_per_step / elapsed,
               bytes_per_sec=n * self.compute["bytes_per_step"] / elapsed,
               train_flops=step * self.compute["flops_per_step"],
               flops_per_byte_train=self.compute["flops_per_byte_train"])
    if f"{self.main}/bpb" in out:
      out["bpb"] = out[f"{self.main}/bpb"]
    self.writer.write(step, out)
    self.progress.update(step, out)
    self._reset()


def train_step(run: Run, data, devices=None):
  """The jitted `(state, batch, *extra) -> (state, metrics)` of a run and the `extra` arguments it takes
  (a reference model's params, for objectives that ask for one)."""
  config, mesh = run.config, run.mesh
  reference = load_reference(run, devices)
  extra_args, extra_shardings = ((reference[1],), (reference[0].param_shardings,)) if reference else ((), ())
  step_fn = jax.jit(
      make_train_step(run.model, objectives.build(config.objectives), run.tx,
                      learning_rate(config.optim, config.train.steps), jnp.asarray(data.unit_bytes(), jnp.float32),
                      config.train.grad_accum, reference_model=reference[0].model if reference else None),
      in_shardings=(run.state_shardings, parallel.batch_sharding(mesh), *extra_shardings),
      out_shardings=(run.state_shardings, parallel.replicated(mesh)), donate_argnums=0)
  return step_fn, extra_args


def _check_writable(workdir) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write-test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"workdir {str(workdir)!r} is not writable ({e.strerror or e}); "
                          "pass --workdir to a writable directory") from None


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Train `config` in `workdir` (resuming from its newest good checkpoint) on `devices` (default: all)."""
  workdir = checkpoint.workdir_path(workdir)
  primary = jax.process_index() == 0
  t0 = time.time()
  if primary:
    _check_writable(workdir)
  ckpts = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints, read_only=False, quarantine=True)
  found = resume(ckpts, config, devices)
  if found is not None:
    restored, data = found
    run, state, start = restored.run, restored.state, restored.step
  else:
    data = families.get(config.model.family).load_data(config)
    run = build_run(config, data.tokenizer, devices)
    state, start = run.init(config.train.seed), 0
  config, mesh = run.config, run.mesh
  if primary:  # human-readable copies; the checkpoint holds its own
    data.tokenizer.save(str(workdir / "tokenizer"))
    checkpoint.write_json(workdir / "config.json", config.to_dict())

  train_iter = data.train_iterator(config.data.batch_size, seed=config.train.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count())
  if found is not None:
    train_iter.set_state(restored.data_state)
    if primary:
      print(f"resumed from step {start} in {workdir}", flush=True)

  step_fn, extra_args = train_step(run, data, devices)
  evaluator = make_evaluator(run)
  val_batches = data.eval_batches("val", eval_batch_size(config), max_batches=config.train.eval_batches)

  writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
  window = LogWindow(config, run, train_flops_per_step(run, data), writer,
                     metrics_lib.Progress(config.train.steps, enabled=primary))
  if primary:
    print(f"{config.experiment}: {param_count(state.params) / 1e6:.2f}M params, mesh "
          f"{dict(mesh.shape)}, {mesh.size} {jax.default_backend()} devices, setup "
          f"{time.time() - t0:.1f}s", flush=True)

  pending = None  # metrics of the previous step: read one step late so dispatch stays ahead
  preempted = None
  with parallel.activation_context(mesh), Preemption() as preemption:
    for step in range(start, config.train.steps):
      state, step_metrics = step_fn(state, run.put_batch(next(train_iter)), *extra_args)
      if pending is not None:
        window.add(*pending)
      pending = (step + 1, step_metrics)
      done = step + 1
      streak = int(state.nonfinite_streak) if config.train.max_nonfinite_steps else 0
      if config.train.max_nonfinite_steps and streak >= config.train.max_nonfinite_steps:
        ckpts.wait()
        raise CheckpointError(
            f"{streak} non-finite steps in a row at step {done}; stopped with the last good checkpoint "
            f"(step {ckpts.latest_step()}) intact; lower optim.lr or raise optim.warmup_steps")
      if preemption.should_stop(done):
        preempted = done
        break
      if config.train.eval_every and done % config.train.eval_every == 0 and done < config.train.steps:
        val = evaluator(state.params, val_batches)
        writer.write(done, {"val_bpb": val["bpb"]})
        if primary:
          print(f"step {done}: val_bpb {val['bpb']:.4f}", flush=True)
      if config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
        ckpts.save(done, state, train_iter.get_state(), config.to_dict(), data.tokenizer)
    if pending is not None:
      window.add(*pending)

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
    all_val = data.eval_batches("val", eval_batch_size(config), max_batches=config.eval.max_batches or None)
    val = evaluator(state.params, all_val)
    val.update(run.flops_per_byte(val["n_bytes"], [b for b, _ in all_val]))
  writer.write(config.train.steps, {"final_val_bpb": val["bpb"]})
  writer.close()
  summary = dict(step=config.train.steps, val_bpb=val["bpb"], val_n_bytes=val["n_bytes"],
                 seconds=time.time() - t0, preempted=False)
  if primary:
    checkpoint.write_json(workdir / "eval_val.json", val)
  return dict(summary, state=state, run=run)


def move_aside(workdir) -> None:
  """`--restart`: keep old checkpoints and metrics under `<workdir>/previous-<time>/`, never delete them."""
  workdir = epath.Path(workdir)
  moved = [p for p in (workdir / checkpoint.CHECKPOINT_DIR, workdir / "metrics.jsonl", workdir / "tensorboard")
           if p.exists()]
  if not moved or jax.process_index() != 0:
    return
  target = workdir / time.strftime("previous-%Y%m%d-%H%M%S")
  target.mkdir(parents=True)
  for p in moved:
    p.rename(target / p.name)
  print(f"--restart: moved {', '.join(p.name for p in moved)} to {target}", flush=True)
