"""The training loop: build everything from the config, resume if a checkpoint exists, train, evaluate."""

from __future__ import annotations

import dataclasses
import functools
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
from lm.data.pipeline import TokenData
from lm.data.tokenizers import Tokenizer, load_tokenizer
from lm.errors import CheckpointError
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
    T = self.config.data.seq_len
    z = jnp.zeros((rows, T), jnp.int32)
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
  model = build_model(config.model, tokenizer.vocab_size)
  tx = make_optimizer(config.optim, config.train.steps)
  run = Run(config, mesh, tokenizer, model, tx, None, None)
  boxed = jax.eval_shape(functools.partial(init_state, model, tx, example_batch=run.example_batch(1),
                                           unbox=False), jax.random.PRNGKey(0))
  run.state_shardings = parallel.logical_sharding(boxed, mesh)
  run.abstract_state = checkpoint.abstract_with_shardings(nn.unbox(boxed), run.state_shardings)
  return run


def load_data(config, tokenizer: Tokenizer | None = None) -> TokenData:
  d = config.data
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


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Train `config` in `workdir` (resuming from its newest checkpoint) on `devices` (default: all)."""
  workdir = checkpoint.workdir_path(workdir)
  primary = jax.process_index() == 0
  t0 = time.time()
  data = load_data(config)
  run = prepare(config, data.tokenizer, devices)
  config, mesh = run.config, run.mesh
  T, B = config.data.seq_len, config.data.batch_size
  if primary:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      probe = workdir / ".write-test"
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise CheckpointError(f"workdir {str(workdir)!r} is not writable ({e.strerror or e}); "
                            "pass --workdir to a writable directory") from None
    data.tokenizer.save(str(workdir / "tokenizer"))
    checkpoint.write_json(workdir / "config.json", config.to_dict())

  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  train_iter = data.train_iterator(B, seed=config.train.seed, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  start = mngr.latest_step()
  if start is not None:
    state, data_state = checkpoint.restore(mngr, start, run.abstract_state)
    train_iter.set_state(data_state)
    if primary:
      print(f"resumed from step {start} in {workdir}", flush=True)
  else:
    state, start = run.init(config.train.seed), 0

  unit_bytes = jnp.asarray(data.tokenizer.unit_bytes(), jnp.float32)
  lr = learning_rate(config.optim, config.train.steps)
  step_fn = jax.jit(
      make_train_step(run.model, objectives.build(config.objectives), run.tx, lr, unit_bytes,
                      config.train.grad_accum),
      in_shardings=(run.state_shardings, parallel.batch_sharding(mesh)),
      out_shardings=(run.state_shardings, parallel.replicated(mesh)), donate_argnums=0)
  evaluator = make_evaluator(run)
  val_batches = data.eval_batches("val", eval_batch_size(config), max_batches=config.train.eval_batches)

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
                 tokens_per_sec=window_steps * B * T / max(elapsed, 1e-9))
      main = config.objectives[0].get("label", config.objectives[0]["name"])
      if f"{main}/bpb" in out:
        out["bpb"] = out[f"{main}/bpb"]
      writer.write(step, out)
      progress.update(step, out)
      window, window_start, window_steps = {}, time.time(), 0

  with parallel.activation_context(mesh):
    for step in range(start, config.train.steps):
      batch = run.put_batch(next(train_iter))
      state, step_metrics = step_fn(state, batch)
      if pending is not None:
        finish_step(*pending)
      pending = (step + 1, step_metrics)
      streak = int(state.nonfinite_streak) if config.train.max_nonfinite_steps else 0
      if config.train.max_nonfinite_steps and streak >= config.train.max_nonfinite_steps:
        mngr.wait_until_finished()
        raise CheckpointError(
            f"{streak} non-finite steps in a row at step {step + 1}; stopped with the last good checkpoint "
            f"(step {mngr.latest_step()}) intact; lower optim.lr or raise optim.warmup_steps")
      done = step + 1
      if config.train.eval_every and done % config.train.eval_every == 0 and done < config.train.steps:
        val = evaluator(state.params, val_batches)
        writer.write(done, {"val_bpb": val["bpb"]})
        if primary:
          print(f"step {done}: val_bpb {val['bpb']:.4f}", flush=True)
      if config.train.checkpoint_every and done % config.train.checkpoint_every == 0:
        checkpoint.save(mngr, done, state, train_iter.get_state(), config.to_dict())
    if pending is not None:
      finish_step(*pending)

    if mngr.latest_step() != config.train.steps:
      checkpoint.save(mngr, config.train.steps, state, train_iter.get_state(), config.to_dict())
    mngr.wait_until_finished()
    all_val = data.eval_batches("val", eval_batch_size(config), max_batches=config.eval.max_batches or None)
    val = evaluator(state.params, all_val)
  writer.write(config.train.steps, {"final_val_bpb": val["bpb"]})
  writer.close()
  summary = dict(step=config.train.steps, val_bpb=val["bpb"], val_n_bytes=val["n_bytes"],
                 seconds=time.time() - t0)
  if primary:
    checkpoint.write_json(workdir / "eval_val.json", val)
  return dict(summary, state=state, run=run)


def restore_for_inference(workdir) -> tuple[Run, Any, ml_collections.ConfigDict]:
  """Load a run's config, tokenizer and newest params (onto the current devices) from its workdir."""
  config = checkpoint.load_run_config(workdir)
  tokenizer = load_tokenizer(str(epath.Path(workdir) / "tokenizer"))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  run = prepare(config, tokenizer)
  mngr = checkpoint.manager(workdir, read_only=True)
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), run.abstract_state)
  return run, state.params, config


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
