"""The training loop: build everything from the config, resume if a checkpoint exists, train, evaluate."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from lm import config as config_lib
from lm import objectives, parallel
from lm.data.pipeline import ChunkData, ConceptData, TokenData
from lm.data.tokenizers import Tokenizer
from lm.errors import CheckpointError, ConfigError, LMError
from lm.eval import bpb as bpb_lib
from lm.models.base import build_model
from lm.train import checkpoint, metrics as metrics_lib
from lm.train.optim import learning_rate, make_optimizer
from lm.train.state import TrainState, init_state, param_count
from lm.train.step import make_train_step


@dataclasses.dataclass
class Run:
  """What train, eval and sample share: the resolved config, mesh, model and state layout."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  tokenizer: Tokenizer
  model: nn.Module
  tx: Any
  state_shardings: Any
  abstract_state: Any

  @property
  def param_shardings(self):
    return self.state_shardings.params

  def put_batch(self, batch: dict) -> dict:
    return parallel.global_batch(batch, self.mesh)

  def example_batch(self, rows: int) -> dict:
    d = self.config.data
    if self.config.model.family in ("hierarchical", "concept"):
      C, L = d.num_chunks, d.chunk_len
      z, zc, zt = (jnp.zeros(s, jnp.int32) for s in ((rows, C, L), (rows, C), (rows, C, L + 1)))
      batch = dict(units=z, unit_mask=z + 1, chunk_mask=zc + 1, segment_ids=zc + 1, positions=zc, doc_end=zc,
                   targets=zt, loss_mask=zt)
      if self.config.model.family == "concept" and d.concept_embeddings:  # precomputed concepts: no encoder
        batch["concepts"] = jnp.zeros((rows, C, self.config.model.concept_dim), jnp.float32)
      return batch
    z = jnp.zeros((rows, d.seq_len), jnp.int32)
    return dict(inputs=z, targets=z, segment_ids=z + 1, positions=z, loss_mask=z)

  def init(self, seed: int) -> TrainState:
    fn = functools.partial(init_state, self.model, self.tx, example_batch=self.example_batch(1))
    with parallel.activation_context(self.mesh):
      return jax.jit(fn, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed))


def prepare(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None) -> Run:
  """Resolve per-backend defaults, validate, build mesh, model, optimizer and state shardings."""
  config = config_lib.resolve_backend_defaults(config, jax.default_backend())
  config_lib.validate(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  parallel.check_divisibility(config, mesh)
  model = build_model(config.model, tokenizer.vocab_size, heads=objectives.heads(config.objectives))
  if hasattr(model, "heads"):
    from lm.models.token import trunk_layers
    trunk_layers(model.cfg, model.heads)  # a head that takes every layer fails here, before any compile
  tx = make_optimizer(config.optim, config.train.steps)
  run = Run(config, mesh, tokenizer, model, tx, None, None)
  boxed = jax.eval_shape(functools.partial(init_state, model, tx, example_batch=run.example_batch(1),
                                           unbox=False), jax.random.PRNGKey(0))
  run.state_shardings = parallel.logical_sharding(boxed, mesh)
  run.abstract_state = checkpoint.abstract_with_shardings(nn.unbox(boxed), run.state_shardings)
  return run


def load_data(config, tokenizer: Tokenizer | None = None) -> TokenData:
  d = config.data
  if config.model.family == "hierarchical":  # raw bytes in word grids; the tokenizer is always bytes
    if d.tokenizer != "bytes":
      raise ConfigError(f"model.family='hierarchical' reads raw bytes; set data.tokenizer='bytes' (got {d.tokenizer!r})")
    return ChunkData.build(d.source, d.num_chunks, d.chunk_len, val_fraction=d.val_fraction,
                           test_fraction=d.test_fraction, split_seed=d.split_seed,
                           eval_max_bytes=d.eval_max_bytes or None)
  if config.model.family == "concept":  # sentences of bytes or tokens
    data = ConceptData.build(d.source, tokenizer if tokenizer is not None else d.tokenizer, d.vocab_size,
                             d.num_chunks, d.chunk_len, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                             split_seed=d.split_seed, eval_max_bytes=d.eval_max_bytes or None,
                             embeddings=d.concept_embeddings)
    if data.embeddings is not None:
      dim = next(iter(data.embeddings.values())).shape[1]
      if config.model.concept_dim != dim:
        raise ConfigError(f"data.concept_embeddings are {dim}-dimensional but model.concept_dim="
                          f"{config.model.concept_dim}; set --config.model.concept_dim={dim}")
    return data
  return TokenData.build(d.source, tokenizer if tokenizer is not None else d.tokenizer, d.vocab_size,
                         d.seq_len, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                         split_seed=d.split_seed, eval_max_bytes=d.eval_max_bytes or None)


def eval_batch_size(config) -> int:
  return config.eval.batch_size or config.data.batch_size // config.train.grad_accum


def make_evaluator(run: Run):
  step = jax.jit(bpb_lib.make_eval_step(run.model),
                 in_shardings=(run.param_shardings, parallel.batch_sharding(run.mesh)))

  def evaluate(params, batches):  # batches are global; each process puts its own block of rows
    with parallel.activation_context(run.mesh):
      return bpb_lib.evaluate(step, params, batches, lambda b: run.put_batch(parallel.process_rows(b)))
  return evaluate


@dataclasses.dataclass
class Restored:
  """The newest checkpoint that restores: its step, state, iterator state and the run built for it."""
  step: int
  state: Any
  data_state: Any
  saved_config: dict
  run: Run
  data: TokenData | None


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# Model fields that never change a parameter's shape, so never the reason a checkpoint does not fit.
_SHAPE_NEUTRAL = {f"model.{k}" for k in ("scan_unroll", "remat_policy", "attention_impl", "dtype", "param_dtype",
                                         "rope_base", "norm_eps", "init_std")}


def _check_compatible(mngr, step: int, run: Run, saved_config: dict, workdir) -> None:
  """One line naming the config fields that make the saved state a different shape from this run's."""
  differences = checkpoint.shape_differences(checkpoint.saved_shapes(mngr, step),
                                             checkpoint.leaf_shapes(run.abstract_state))
  if not differences:
    return
  where = f"checkpoint step {step} in {workdir}"
  current = run.config.to_dict()
  if any(d.startswith("params/") for d in differences):
    differences = [d for d in differences if d.startswith("params/")]
    fields = [d for d in checkpoint.config_differences(saved_config, current, ("model", "data"))
              if d.startswith(("model.", "data.tokenizer", "data.vocab_size"))
              and d.split(":")[0] not in _SHAPE_NEUTRAL]
    what = "the model's shape"
  else:
    fields = checkpoint.config_differences(saved_config, current, ("optim",))
    what = "the optimizer state's structure"
  detail = "; ".join(fields) if fields else "; ".join(differences[:4]) + (" ..." if len(differences) > 4 else "")
  raise CheckpointError(f"this config changes {what} against {where} ({detail}); restore with the "
                        "checkpoint's values or pass --restart to start over (old checkpoints are kept)")


def restore_newest(workdir, build, quarantine: bool) -> Restored | None:
  """Restore the newest step that restores, or None when the workdir has no checkpoint.

  `build(saved_config, tokenizer, step) -> (run, data)` makes the run to restore into; it raises for a
  config or tokenizer that cannot continue this checkpoint. A step that cannot be read (truncated or
  corrupt files) is skipped with a warning naming it; with `quarantine` it is also moved out of the
  checkpoint directory (to `corrupt-checkpoints/`, never deleted) so the run can save that step again.
  """
  workdir = checkpoint.workdir_path(workdir)
  if not (workdir / checkpoint.CHECKPOINT_DIR).exists():
    return None
  mngr = checkpoint.manager(workdir, read_only=True)
  primary = jax.process_index() == 0
  found = None
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = checkpoint.restore_meta(mngr, step)
      run, data = build(meta["config"], meta["tokenizer"], step)
      _check_compatible(mngr, step, run, meta["config"], workdir)
      state = checkpoint.restore_state(mngr, step, run.abstract_state)
    except LMError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # unreadable files: fall back to an older step
      where = ""
      if quarantine and primary:
        where = f"; moved it to {checkpoint.quarantine(workdir, step)}"
      if primary:
        print(f"warning: checkpoint step {step} in {workdir} cannot be restored ({_first_line(e)}){where}; "
              "trying the previous one", file=sys.stderr, flush=True)
      continue
    found = Restored(step, state, meta["data"], meta["config"], run, data)
    break
  if quarantine and jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("lm-restore-newest")  # nobody saves until corrupt steps moved
  return found


def _resume_data(config, saved_config: dict, saved_tokenizer: Tokenizer, step: int, workdir) -> TokenData:
  """The run's data with the checkpoint's tokenizer, or an error if the config asks for another one."""
  d, s = config.data, saved_config.get("data", {})
  recipe = ("tokenizer", "vocab_size", "source", "val_fraction", "test_fraction", "split_seed")
  if all(s.get(k) == d[k] for k in recipe):  # same recipe: take what trained it, never retrain
    return load_data(config, saved_tokenizer)
  data = load_data(config)
  tok = data.tokenizer
  if tok.files() != saved_tokenizer.files():
    how = (f"{tok.vocab_size} ids but the checkpoint's has {saved_tokenizer.vocab_size}"
           if tok.vocab_size != saved_tokenizer.vocab_size else
           f"the same size ({tok.vocab_size} ids) as the checkpoint's but a different vocabulary")
    raise CheckpointError(
        f"tokenizer {d.tokenizer!r} has {how} (checkpoint step {step} in {workdir}, trained with "
        f"data.tokenizer={s.get('tokenizer')!r}); set data.tokenizer back or pass --restart to start over")
  return data


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


def _check_writable(workdir) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write-test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"workdir {str(workdir)!r} is not writable ({e.strerror or e}); "
                          "pass --workdir to a writable directory") from None


class Saver:
  """Asynchronous saves with errors (disk full, permissions) turned into one line that names the last good
  step; orbax only renames a step into place once it is complete, so that step stays restorable."""

  def __init__(self, workdir, keep: int, config, tokenizer: Tokenizer):
    self.workdir, self.config, self.tokenizer = workdir, config, tokenizer
    self.mngr = checkpoint.manager(workdir, keep=keep)
    self.requested: int | None = None

  def _fail(self, e: Exception):
    good = checkpoint.latest_step(self.workdir)
    full = any(t in str(e) for t in ("No space left", "File too large", "quota", "os_error_code='28'",
                                     "os_error_code='27'"))
    why = "the disk is full" if full else _first_line(e)
    return CheckpointError(
        f"saving checkpoint step {self.requested} in {self.workdir} failed ({why}); the last good checkpoint "
        f"(step {good}) is intact: free space or fix the directory, then rerun the same command to resume")

  def save(self, step: int, state, data_state) -> None:
    try:
      self.mngr.wait_until_finished()  # surfaces a failure of the previous asynchronous save
      self.requested = step
      checkpoint.save(self.mngr, step, state, data_state, self.config.to_dict(), self.tokenizer)
    except LMError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise self._fail(e) from None

  def wait(self) -> None:
    try:
      self.mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._fail(e) from None

  def latest_step(self) -> int | None:
    return self.mngr.latest_step()


def flops_per_byte(config, vocab_size: int, n_bytes: float, n_units: float, n_chunks: float = 0.0,
                   with_encoder: bool = True) -> dict:
  """Training and inference FLOPs per byte of text holding `n_bytes` bytes in `n_units` units (and `n_chunks`
  chunks for the chunked families, by component). Training counts auxiliary heads and extra decoder passes."""
  heads = objectives.heads(config.objectives)
  if config.model.family in ("hierarchical", "concept"):
    d = config.data
    flops = bpb_lib.chunk_flops_per_byte(config.model, vocab_size, d.chunk_len, d.num_chunks, n_bytes, n_units,
                                         n_chunks, decoder_passes=1 + sum(kind == "recon" for kind, _ in heads),
                                         with_encoder=with_encoder)
    return dict(flops_per_byte_inference=flops["forward"], flops_per_byte_train=flops["train"],
                bytes_per_chunk=n_bytes / max(n_chunks, 1),
                **{f"flops_per_byte_{k}": v for k, v in flops.items() if k.endswith("_forward")})
  flops = bpb_lib.token_flops_per_unit(config.model, vocab_size, config.data.seq_len, heads)
  units_per_byte = n_units / max(n_bytes, 1)
  return dict(flops_per_byte_inference=flops["forward"] * units_per_byte,
              flops_per_byte_train=flops["train"] * units_per_byte)


def eval_flops_per_byte(run: Run, result: dict, batches) -> dict:
  """`flops_per_byte` of an evaluation (`result` from `evaluate` over `batches`)."""
  first = batches[0][0] if batches else {}
  if "unit_mask" in first:
    return flops_per_byte(run.config, run.tokenizer.vocab_size, result["n_bytes"],
                          sum(int(b["unit_mask"].sum()) for b, _ in batches),
                          sum(int(b["chunk_mask"].sum()) for b, _ in batches), with_encoder="concepts" not in first)
  return flops_per_byte(run.config, run.tokenizer.vocab_size, result["n_bytes"], result["n_units"])


def train_flops_per_step(config, data: TokenData) -> dict:
  """FLOPs per byte of the training data and FLOPs per training step (global batch), from the packed rows:
  bytes are what the scored targets stand for (`unit_bytes`), as in the training bits per byte."""
  rows = data.train_rows
  unit_bytes = data.unit_bytes()
  n_bytes = float((unit_bytes[rows["targets"]] * rows["loss_mask"]).sum())
  n_rows = len(rows["loss_mask"])
  if "unit_mask" in rows:
    flops = flops_per_byte(config, data.tokenizer.vocab_size, n_bytes, float(rows["unit_mask"].sum()),
                           float(rows["chunk_mask"].sum()), with_encoder="concepts" not in rows)
  else:
    flops = flops_per_byte(config, data.tokenizer.vocab_size, n_bytes, float(rows["loss_mask"].sum()))
  bytes_per_step = n_bytes / max(n_rows, 1) * config.data.batch_size
  return dict(flops, bytes_per_step=bytes_per_step, flops_per_step=flops["flops_per_byte_train"] * bytes_per_step)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Train `config` in `workdir` (resuming from its newest good checkpoint) on `devices` (default: all)."""
  workdir = checkpoint.workdir_path(workdir)
  primary = jax.process_index() == 0
  t0 = time.time()
  if primary:
    _check_writable(workdir)

  def build(saved_config, saved_tokenizer, step):
    data = _resume_data(config, saved_config, saved_tokenizer, step, workdir)
    return prepare(config, data.tokenizer, devices), data

  restored = restore_newest(workdir, build, quarantine=True)
  if restored is not None:
    run, data, state, start = restored.run, restored.data, restored.state, restored.step
  else:
    data = load_data(config)
    run = prepare(config, data.tokenizer, devices)
    state, start = run.init(config.train.seed), 0
  config, mesh = run.config, run.mesh
  T, B = config.data.seq_len, config.data.batch_size
  if primary:  # human-readable copies; the checkpoint holds its own
    data.tokenizer.save(str(workdir / "tokenizer"))
    checkpoint.write_json(workdir / "config.json", config.to_dict())

  saver = Saver(workdir, config.train.keep_checkpoints, config, data.tokenizer)
  train_iter = data.train_iterator(B, seed=config.train.seed, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  if restored is not None:
    train_iter.set_state(restored.data_state)
    if primary:
      print(f"resumed from step {start} in {workdir}", flush=True)

  unit_bytes = jnp.asarray(data.unit_bytes(), jnp.float32)
  lr = learning_rate(config.optim, config.train.steps)
  reference = load_reference(config, data.tokenizer, devices)
  extra_args, extra_shardings = ((reference[1],), (reference[0].param_shardings,)) if reference else ((), ())
  step_fn = jax.jit(
      make_train_step(run.model, objectives.build(config.objectives), run.tx, lr, unit_bytes,
                      config.train.grad_accum, reference_model=reference[0].model if reference else None),
      in_shardings=(run.state_shardings, parallel.batch_sharding(mesh), *extra_shardings),
      out_shardings=(run.state_shardings, parallel.replicated(mesh)), donate_argnums=0)
  evaluator = make_evaluator(run)
  val_batches = data.eval_batches("val", eval_batch_size(config), max_batches=config.train.eval_batches)

  compute = train_flops_per_step(config, data)
  writer = metrics_lib.MetricsWriter(workdir, enabled=primary)
  progress = metrics_lib.Progress(config.train.steps, enabled=primary)
  if primary:
    print(f"{config.experiment}: {param_count(state.params) / 1e6:.2f}M params, mesh "
          f"{dict(mesh.shape)}, {mesh.size} {jax.default_backend()} devices, setup "
          f"{time.time() - t0:.1f}s", flush=True)

  window: dict[str, float] = {}
  window_start, window_steps = time.time(), 0
  pending = None  # metrics of the previous step: read one step late so dispatch stays ahead

  def finish_step(step: int, step_metrics) -> None:
    nonlocal window, window_start, window_steps
    host = jax.device_get(step_metrics)
    for k, v in host.items():
      window[k] = window.get(k, 0.0) + float(v)
    window_steps += 1
    if step % config.train.log_every == 0 or step == config.train.steps:
      elapsed = time.time() - window_start
      out = objectives.summarize({k: v for k, v in window.items() if "/" in k})
      out.update(loss=window["loss"] / window_steps, grad_norm=window["grad_norm"] / window_steps,
                 lr=float(host["lr"]), skipped_steps=window["skipped"],
                 tokens_per_sec=window_steps * B * T / max(elapsed, 1e-9),
                 bytes_per_sec=window_steps * compute["bytes_per_step"] / max(elapsed, 1e-9),
                 train_flops=step * compute["flops_per_step"],
                 flops_per_byte_train=compute["flops_per_byte_train"])
      main = config.objectives[0].get("label", config.objectives[0]["name"])
      if f"{main}/bpb" in out:
        out["bpb"] = out[f"{main}/bpb"]
      writer.write(step, out)
      progress.update(step, out)
      window, window_start, window_steps = {}, time.time(), 0

  preempted = None
  with parallel.activation_context(mesh), Preemption() as preemption:
    for step in range(start, config.train.steps):
      batch = run.put_batch(next(train_iter))
      state, step_metrics = step_fn(state, batch, *extra_args)
      if pending is not None:
        finish_step(*pending)
      pending = (step + 1, step_metrics)
      done = step + 1
      streak = int(state.nonfinite_streak) if config.train.max_nonfinite_steps else 0
      if config.train.max_nonfinite_steps and streak >= config.train.max_nonfinite_steps:
        saver.wait()
        raise CheckpointError(
            f"{streak} non-finite steps in a row at step {done}; stopped with the last good checkpoint "
            f"(step {saver.latest_step()}) intact; lower optim.lr or raise optim.warmup_steps")
      if preemption.should_stop(done):
        preempted = done
        break
      if config.train.eval_every and done % config.train.eval_every == 0 and done < config.train.steps:
        val = evaluator(state.params, val_batches)
        writer.write(done, {"val_bpb": val["bpb"]})
        if primary:
          print(f"step {done}: val_bpb {val['bpb']:.4f}", flush=True)
      if config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
        saver.save(done, state, train_iter.get_state())
    if pending is not None:
      finish_step(*pending)

    last = preempted or config.train.steps
    if start < last and saver.latest_step() != last:
      saver.save(last, state, train_iter.get_state())
    saver.wait()
    if preempted is not None:
      writer.close()
      if primary:
        print(f"{preemption.signal_name or 'preempted'}: saved step {preempted} in {workdir}; rerun the same "
              "command to resume", flush=True)
      return dict(step=preempted, preempted=True, seconds=time.time() - t0, state=state, run=run)
    all_val = data.eval_batches("val", eval_batch_size(config), max_batches=config.eval.max_batches or None)
    val = evaluator(state.params, all_val)
    val.update(eval_flops_per_byte(run, val, all_val))
  writer.write(config.train.steps, {"final_val_bpb": val["bpb"]})
  writer.close()
  summary = dict(step=config.train.steps, val_bpb=val["bpb"], val_n_bytes=val["n_bytes"],
                 seconds=time.time() - t0, preempted=False)
  if primary:
    checkpoint.write_json(workdir / "eval_val.json", val)
  return dict(summary, state=state, run=run)


def load_reference(config, tokenizer: Tokenizer, devices=None) -> tuple[Run, Any] | None:
  """The frozen reference model an objective names with `reference=WORKDIR` (e.g. `rho`), restored onto
  this run's mesh; it must share this run's tokenizer."""
  specs = [o for o in config.objectives if "reference" in o or o["name"] == "rho"]
  if not specs:
    return None
  workdir = specs[0].get("reference", "")
  if not workdir:
    raise ConfigError(f"objective {specs[0]['name']!r} needs a reference run: set "
                      "--config.objectives.N.reference=WORKDIR of a trained run with the same tokenizer")

  def build(saved_config, saved_tokenizer, step):  # pylint: disable=unused-argument
    if saved_tokenizer.files() != tokenizer.files():
      raise CheckpointError(
          f"reference run {workdir!r} has a tokenizer of {saved_tokenizer.vocab_size} ids, this run's has "
          f"{tokenizer.vocab_size} (or a different vocabulary); train the reference with this data.tokenizer")
    ref_config = config_lib.from_json(json.dumps(saved_config))
    ref_config.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    ref_config.data.batch_size = config.data.batch_size
    return prepare(ref_config, saved_tokenizer, devices), None

  restored = restore_newest(workdir, build, quarantine=False)
  if restored is None:
    raise CheckpointError(f"reference workdir {workdir!r} holds no checkpoint; train the reference first")
  return restored.run, restored.state.params


def restore_for_inference(workdir) -> tuple[Run, Any, ml_collections.ConfigDict]:
  """The newest good checkpoint's config, tokenizer and params, on the current devices."""
  def build(saved_config, saved_tokenizer, step):  # pylint: disable=unused-argument
    config = config_lib.from_json(json.dumps(saved_config))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return prepare(config, saved_tokenizer), None

  restored = restore_newest(workdir, build, quarantine=False)
  if restored is None:
    raise CheckpointError(f"workdir {str(workdir)!r} holds no checkpoint that restores; train first with "
                          f"`lm train EXPERIMENT --workdir {workdir}`")
  return restored.run, restored.state.params, restored.run.config


def unigram_bpb(data: TokenData) -> float:
  """Bits per byte of the train-split unigram distribution on the val split: the floor to beat."""
  tok = data.tokenizer
  counts = np.ones(tok.vocab_size)
  for doc in data.splits["train"]:
    ids = np.append(tok.encode(doc), tok.eos_id)
    counts += np.bincount(ids, minlength=tok.vocab_size)
  logp = np.log(counts / counts.sum())
  nll, n_bytes = 0.0, 0
  for doc in data.splits["val"]:
    ids = np.append(tok.encode(doc), tok.eos_id)
    nll -= logp[ids].sum()
    n_bytes += len(doc) + 1
  return nll / (np.log(2) * n_bytes)


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
