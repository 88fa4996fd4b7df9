"""Build a run whole (config -> family, mesh, model, optimizer, state layout), restore one for inference, and
evaluate it. Training (`loop.py`), `lm eval`, `lm sample`, probes and the Python API all start here."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lm import config as config_lib
from lm import families, objectives, parallel
from lm.data.tokenizers import Tokenizer
from lm.data import corpus, pipeline, prepared, tokenizers
from lm.errors import CheckpointError, ConfigError, DataError, plural
from lm.eval import bpb as bpb_lib
from lm.families import Family
from lm.interop import convert
from lm.objectives.base import Requirements
from lm.train import checkpoint, init_from, trackers
from lm.train.optim import make_optimizer
from lm.train.state import TrainState, init_state


@dataclasses.dataclass
class Run:
  """What train, eval and sample share: the resolved config, its family, mesh, model and state layout."""
  config: ml_collections.ConfigDict
  family: Family
  needs: Requirements
  mesh: jax.sharding.Mesh
  tokenizer: Tokenizer
  model: nn.Module
  tx: Any
  state_shardings: Any = None
  abstract_state: Any = None

  @property
  def param_shardings(self):
    return self.state_shardings.params

  def put_batch(self, batch: dict) -> dict:
    return parallel.global_batch(batch, self.mesh)

  def example_batch(self, rows: int) -> dict:
    return families.zeros(self.family.batch_spec(self.config, rows))

  def init(self, seed: int) -> TrainState:
    """The initial train state. Its program runs once, so the layer scan is compiled rolled
    (`scan_unroll=1`): the same values, bit for bit, in a third less compile time than unrolled on CPU."""
    model = self.model
    if self.config.model.scan_unroll != 1:
      rolled = ml_collections.ConfigDict(self.config.to_dict())
      rolled.model.scan_unroll = 1
      model = self.family.build_model(rolled, self.tokenizer.vocab_size, needs=self.needs)
    fn = functools.partial(init_state, model, self.tx, example_batch=self.example_batch(1))
    with parallel.activation_context(self.mesh):
      return jax.jit(fn, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed))

  def decode_model(self) -> nn.Module:
    """The model in decoding mode (KV caches), with the same heads, so trained params fit it."""
    return self.family.build_model(self.config, self.tokenizer.vocab_size, decode=True, needs=self.needs)

  def load_data(self):
    """The config's data with this run's tokenizer (never retrained)."""
    return self.family.load_data(self.config, tokenizer=self.tokenizer)

  def sample(self, params, prompt: str, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """Text continuing `prompt`, decoded with `params` where they are (sharded as the run placed them, never
    gathered onto one device); in a multi-process run every process must call it."""
    return self.family.sample(self, params, prompt, max_new=max_new, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed)

  def speculative(self, params, prompt: str, max_new: int) -> tuple[str, dict]:
    return families.require(self.family, families.Speculative, "--speculative", self.config).speculative(
        self, params, prompt, max_new)

  def flops_per_byte(self, n_bytes: float, rows: list[dict[str, np.ndarray]]) -> dict[str, float]:
    return self.family.flops_per_byte(self.config, self.tokenizer.vocab_size, n_bytes, rows, self.needs)


def _vocab_guess(config) -> int:
  """The vocabulary a config's tokenizer will have, as far as known before it is built (bytes: exact; a model
  with its own `model.vocab_size`, an imported one: at most that)."""
  if config.model.get("vocab_size", 0):
    return int(config.model.vocab_size)
  return tokenizers.ByteTokenizer().vocab_size if config.data.tokenizer == "bytes" else int(config.data.vocab_size)


def check_data_size(config, family: Family) -> None:
  """A corpus that cannot fill one batch, from the sizes of its files alone (nothing is read): every unit
  of a row holds at least one byte of text or a document's bos or eos (with SentencePiece or another loaded
  tokenizer, at most two units per byte), so rows <= ceil(factor * (bytes + 2 * documents) / units per row)."""
  d = config.data
  parsed = pipeline.parse_source(d.source)
  if d.completion_after and any(prepared.is_prepared(s) for s, _ in parsed):
    raise ConfigError(f"data.completion_after={d.completion_after!r} needs raw text in memory, but data.source "
                      f"{d.source!r} is a prepared directory; train on the raw source or set data.completion_after=''")
  if d.completion_after and d.eval_max_bytes:
    raise ConfigError(f"data.completion_after={d.completion_after!r} scores held-out documents whole, so "
                      f"data.eval_max_bytes={d.eval_max_bytes} cannot apply; set data.eval_max_bytes=0")
  if parsed[0][1] is not None or any(prepared.is_prepared(s) for s, _ in parsed):
    return  # prepared and mixed sources are checked when opened (their manifests hold the counts)
  size = corpus.source_size(d.source)
  if size is None:
    return
  n_bytes, n_docs, n_files = size
  if n_bytes > d.max_raw_bytes:
    raise DataError(f"data.source {d.source!r}: {n_bytes / 2**20:.0f} MiB of raw text is more than data.max_raw_bytes="
                    f"{d.max_raw_bytes} to tokenize in memory at every start; run `lm prepare {d.source} --out DIR` "
                    "once and train on --config.data.source=DIR")
  factor = 1 if d.tokenizer in ("bytes", "bpe") else 2
  per_row = family.units_per_row(config)
  rows = -(-factor * (n_bytes + 2 * n_docs) // per_row)
  if rows < d.batch_size:
    raise DataError(f"data.source {d.source!r}: {plural(n_bytes, 'byte')} in {plural(n_files, 'file')} pack into "
                    f"at most {plural(rows, 'row')} of {per_row} units, fewer than one batch of data.batch_size="
                    f"{d.batch_size}; lower data.batch_size or the row length, or add text")


def backend_of(devices=None) -> str:
  """The platform `devices` belong to (default: jax's backend): `lm compile` builds runs for TPU devices of a
  topology while this process's own backend is CPU."""
  return devices[0].platform if devices else jax.default_backend()


def _resolve(config, devices):
  """What `check` and `build_run` both start from: the config resolved for this backend and validated, its
  family, the mesh (checked against the devices and the split fields) and what the objectives need (their
  names and options checked)."""
  config = config_lib.resolve_backend_defaults(config, backend_of(devices))
  families.validate(config)
  family = families.get(config.model.family)
  mesh = parallel.make_mesh(config.mesh, devices)
  parallel.check_divisibility(config, mesh, family.tensor_split_fields(config))
  needs = objectives.requirements(config.objectives)
  objectives.build(config.objectives)  # bad option values (rho's keep, ...) fail here, before any compile
  return config, family, mesh, needs


def check(config: ml_collections.ConfigDict, devices=None) -> ml_collections.ConfigDict:
  """Every check of a run's config that needs neither its data nor a compile, one line each: fields and the
  family's own, the mesh against the devices, objective names and options, the heads they train, a reference
  run, the trackers, and the corpus against one batch where its files' sizes tell (the tokenizer spec is
  checked by `loop.train` for a fresh start only: a resume uses its checkpoint's). `lm train` runs it
  before it reads data, compiles or writes anything. Returns the config resolved for this backend (with the
  architecture of `config.init_from`, where one is named)."""
  config, family, mesh, needs = _resolve(init_from.apply_init_from(config), devices)
  model = family.build_model(config, _vocab_guess(config), needs=needs)
  batch = families.zeros(family.batch_spec(config, 1))
  jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))  # head options, layer counts, shapes
  trackers.check(config.train.trackers)
  if config.data.batch_size % jax.process_count():
    raise ConfigError(f"data.batch_size={config.data.batch_size} is not divisible by the "
                      f"{plural(jax.process_count(), 'process', 'processes')}; make it a multiple")
  if needs.reference is not None:
    _check_reference(needs)
  check_data_size(config, family)
  return config


def build_run(config: ml_collections.ConfigDict, tokenizer: Tokenizer, devices=None) -> Run:
  """Resolve per-backend defaults, validate, build mesh, model, optimizer and state shardings (no compile)."""
  config, family, mesh, needs = _resolve(config, devices)
  model = family.build_model(config, tokenizer.vocab_size, needs=needs)
  tx = make_optimizer(config.optim, config.train.steps)
  run = Run(config, family, needs, mesh, tokenizer, model, tx)
  boxed = jax.eval_shape(functools.partial(init_state, model, tx, example_batch=run.example_batch(1),
                                           unbox=False), jax.random.PRNGKey(0))
  run.state_shardings = parallel.logical_sharding(boxed, mesh)
  run.abstract_state = checkpoint.abstract_with_shardings(nn.unbox(boxed), run.state_shardings)
  return run


def load_data(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None):
  """The config's data as its family packs it; `tokenizer` reuses a trained one instead of building one."""
  return families.get(config.model.family).load_data(config, tokenizer)


def eval_batch_size(config) -> int:
  return config.eval.batch_size or config.data.batch_size // config.train.grad_accum


def make_evaluator(run: Run):
  """(params, batches) -> the evaluation dict (`bpb`, `nll_sum`, `n_bytes`, ... and the family's extras)."""
  step = jax.jit(run.family.eval_step(run.model),
                 in_shardings=(run.param_shardings, parallel.batch_sharding(run.mesh)))

  def evaluate(params, batches):  # batches are global; each process puts its own block of rows
    with parallel.activation_context(run.mesh):
      return bpb_lib.evaluate(step, params, batches, lambda b: run.put_batch(parallel.process_rows(b)),
                              summary=run.family.eval_summary)
  return evaluate


def evaluate_parts(evaluator, params, data, split: str, batch_size: int, max_batches: int | None) -> tuple[dict, list]:
  """(result, batches) of a split; for a mixture, each part is scored alone too (`<split>_bpb/<name>`) and the
  result is over all parts' bytes together."""
  names = getattr(data, "part_names", [None])
  if len(names) == 1:
    batches = data.eval_batches(split, batch_size, max_batches=max_batches)
    return evaluator(params, batches), batches
  results, batches = [], []
  for p, name in enumerate(names):
    part = data.eval_batches(split, batch_size, max_batches=max_batches, part=p)
    results.append((name, evaluator(params, part)))
    batches += part
  nll, n_bytes = sum(r["nll_sum"] for _, r in results), sum(r["n_bytes"] for _, r in results)
  units = sum(r["n_units"] for _, r in results)
  out = dict(bpb=nll / (np.log(2) * max(n_bytes, 1)), nll_sum=nll, n_bytes=n_bytes, n_units=units,
             nll_per_unit=nll / max(units, 1))
  out.update({f"{split}_bpb/{name}": r["bpb"] for name, r in results})
  return out, batches


def evaluate(run: Run, params, data, split: str = "val", docs: list[bytes] | None = None) -> dict:
  """Bits per byte (and FLOPs per byte) of `split`, or of `docs` cut into held-out segments."""
  max_batches = run.config.eval.max_batches or None
  if docs is None:
    result, batches = evaluate_parts(make_evaluator(run), params, data, split, eval_batch_size(run.config),
                                     max_batches)
    result.update(run.flops_per_byte(result["n_bytes"], [b for b, _ in batches]))
    return result
  batches = data.eval_batches(split, eval_batch_size(run.config), max_batches=max_batches, docs=docs)
  result = make_evaluator(run)(params, batches)
  result.update(run.flops_per_byte(result["n_bytes"], [b for b, _ in batches]))
  return result


def train_flops_per_step(run: Run, data, tolerance: float = 0.005) -> dict:
  """FLOPs per training step (global batch): executed (`flops_per_step`, every slot of the step's rows: exact,
  it depends on shapes only) and at data positions (`flops_per_step_data`), with the bytes a step holds, from
  the training stream's rows until their mean is known to `tolerance` (relative half-width of its 95%
  interval) or an epoch is read. Bytes are what the scored targets stand for (`unit_bytes`), as in the
  training bits per byte."""
  batch, batches, seen = run.config.data.batch_size, 16, 0
  while True:
    rows = data.sample_rows(batch, max_batches=batches)
    mask = rows["loss_mask"]
    per_row = (data.unit_bytes()[rows["targets"]] * mask).reshape(len(mask), -1).sum(-1).astype(np.float64)
    mean = max(float(per_row.mean()), 1e-9)
    epoch = len(per_row) < batches * batch or len(per_row) == seen  # every row there is: the mean is exact
    half_width = 0.0 if epoch or len(per_row) < 2 else \
        1.96 * float(per_row.std(ddof=1)) / np.sqrt(len(per_row)) / mean
    if half_width <= tolerance or batches >= 1024:
      break
    batches, seen = batches * 4, len(per_row)
  n_bytes = float(per_row.sum())
  flops = run.flops_per_byte(n_bytes, [rows])
  bytes_per_step = mean * batch
  return dict(flops, bytes_per_step=bytes_per_step, bytes_per_step_rel_interval=float(half_width),
              bytes_per_step_rows=len(per_row), flops_per_step=flops["flops_per_byte_train"] * n_bytes / len(per_row) * batch,
              flops_per_step_data=flops["flops_per_byte_data"] * bytes_per_step)


# Model fields that never change a parameter's shape, so never the reason a checkpoint does not fit.
_SHAPE_NEUTRAL = {f"model.{k}" for k in ("scan_unroll", "remat_policy", "attention_impl", "attention_block_q",
                                         "attention_block_kv", "attention_interpret", "dtype", "param_dtype",
                                         "rope_base", "norm_eps", "init_std", "rope_scaling", "rope_factor",
                                         "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_positions",
                                         "sliding_window")}


def check_compatible(ckpts: checkpoint.Checkpoints, step: int, saved_shapes: dict, run: Run,
                     saved_config: dict, params_only: bool = False) -> None:
  """One line naming the config fields that make the saved state (or only its params) a different shape from
  this run's."""
  expected = checkpoint.leaf_shapes(run.abstract_state)
  if params_only:
    saved_shapes, expected = ({k: v for k, v in d.items() if k.startswith("params/")} for d in (saved_shapes, expected))
  differences = checkpoint.shape_differences(saved_shapes, expected)
  if not differences:
    return
  where = f"checkpoint step {step} in {ckpts.workdir}"
  current = run.config.to_dict()
  if any(d.startswith("params/") for d in differences):
    differences = [d for d in differences if d.startswith("params/")]
    fields = [d for d in checkpoint.config_differences(saved_config, current, ("model", "data", "objectives"))
              if d.startswith(("model.", "data.tokenizer", "data.vocab_size", "objectives"))
              and d.split(":")[0] not in _SHAPE_NEUTRAL]
    what = "the model's shape"
  else:
    fields = checkpoint.config_differences(saved_config, current, ("optim",))
    what = "the optimizer state's structure"
  detail = "; ".join(fields) if fields else "; ".join(differences[:4]) + (" ..." if len(differences) > 4 else "")
  raise CheckpointError(f"this config changes {what} against {where} ({detail}); restore with the "
                        "checkpoint's values or pass --restart to start over (old checkpoints are kept)")


def restore_step(ckpts: checkpoint.Checkpoints, step: int, run: Run, saved_config: dict):
  """The step's train state in `run`'s layout; `checkpoint.Unreadable` if its files are damaged, an error naming
  the config fields if its shapes do not fit `run`."""
  check_compatible(ckpts, step, ckpts.read_shapes(step), run, saved_config)
  return ckpts.read_state(step, run.abstract_state)


@dataclasses.dataclass
class Restored:
  """A checkpoint that restored: its step, state (None when only params were read), data iterator state, the
  run built for it, and its params."""
  step: int
  state: Any
  data_state: Any
  run: Run
  params: Any = None

  def __post_init__(self):
    if self.params is None and self.state is not None:
      self.params = self.state.params


def _inference_mesh(saved_mesh: dict, devices) -> dict:
  """The mesh a run trained with, on these devices (so params stay sharded as they trained: an 8B model
  trained with fsdp evaluates sharded), or all data parallel when those sizes do not fit these devices."""
  mesh = dict(saved_mesh, cpu_devices=0)
  try:
    parallel.mesh_shape(ml_collections.ConfigDict(mesh), len(devices or jax.devices()))
    return mesh
  except ConfigError:
    return dict(data=-1, fsdp=1, tensor=1, cpu_devices=0)


def restore_saved(workdir, devices=None, mesh: dict | None = None, batch_size: int | None = None,
                  tokenizer: Tokenizer | None = None, role: str = "run", trust_code=()) -> Restored | None:
  """The params of the newest step of `workdir` that restores (never its optimizer state), as its own saved
  config describes the model, sharded on `devices` over `mesh` (default: the mesh it trained with, where it
  fits); None when the workdir has no checkpoint. With `tokenizer`, a checkpoint trained with another one is an
  error before any array is read. The saved config may name only lm's own families and objectives unless
  `trust_code` is True or names them (`families.check_saved_code`): loading a workdir runs no code of its own."""
  ckpts = checkpoint.Checkpoints(workdir)

  def attempt(step):
    meta = ckpts.read_meta(step)
    if tokenizer is not None and meta["tokenizer"].files() != tokenizer.files():
      raise CheckpointError(
          f"{role} {str(workdir)!r} has a tokenizer of {meta['tokenizer'].vocab_size} ids, this run's has "
          f"{tokenizer.vocab_size} (or a different vocabulary); train the {role} with this data.tokenizer")
    config = families.from_json(json.dumps(meta["config"]), f"{role} {str(workdir)!r} (checkpoint step {step})",
                                trust_code)
    config.mesh = ml_collections.ConfigDict(mesh or _inference_mesh(config.mesh.to_dict(), devices))
    if batch_size is not None:
      config.data.batch_size = batch_size
    run = build_run(config, meta["tokenizer"], devices)
    check_compatible(ckpts, step, ckpts.read_shapes(step), run, meta["config"], params_only=True)
    integrity[step] = meta["integrity"]
    return Restored(step, None, meta["data"], run, params=ckpts.read_params(step, run.abstract_state.params))

  integrity = {}
  found = checkpoint.restore_newest(
      ckpts, attempt, lambda step, r: ckpts.verify(step, integrity[step], r.params, "params/"))
  return None if found is None else found[1]


def restore_for_inference(workdir, trust_code=()) -> tuple[Run, Any]:
  """The newest good checkpoint's run (its config and tokenizer) and params, on the current devices."""
  restored = restore_saved(workdir, trust_code=trust_code)
  if restored is None:
    raise CheckpointError(f"workdir {str(workdir)!r} holds no checkpoint that restores; train first with "
                          f"`lm train EXPERIMENT --workdir {workdir}`")
  return restored.run, restored.params


def _check_reference(needs: Requirements) -> str:
  """The reference workdir (or Hugging Face model directory) an objective names, if it holds a checkpoint."""
  workdir = needs.reference
  if not workdir:
    raise ConfigError(f"objective {needs.reference_objective!r} needs a reference run: set "
                      "--config.objectives.N.reference=WORKDIR of a trained run with the same tokenizer")
  if convert.is_hf_dir(workdir):
    convert.config_for(workdir)  # an unsupported architecture fails here
    return workdir
  if checkpoint.latest_step(workdir) is None:
    raise CheckpointError(f"reference workdir {workdir!r} holds no checkpoint; train the reference first")
  return workdir


def _hf_reference(directory, devices, run: Run) -> tuple[Run, Any]:
  """A Hugging Face model as a frozen reference (`objectives.N.reference=HF_DIR`) on `run`'s mesh and batch
  size; it must share `run`'s tokenizer."""
  ref_tok = convert.hf_tokenizer(directory)
  if ref_tok.files() != run.tokenizer.files():
    raise CheckpointError(f"reference model {str(directory)!r} has another tokenizer than this run; train with "
                          f"--config.data.tokenizer={directory} (or init_from it)")
  config = convert.config_for(directory)
  config.unlock()
  config.mesh = ml_collections.ConfigDict(run.config.mesh.to_dict())
  config.data.batch_size = run.config.data.batch_size
  ref = build_run(config, ref_tok, devices)
  return ref, convert.hf_params(ref, directory)[0]


def init_params(run: Run, fresh: dict) -> tuple[dict, list[str]]:
  """`run`'s params from `config.init_from` (a workdir's newest good checkpoint, or a Hugging Face model), with
  what the source lacks (new heads) from `fresh`. Returns the params and the paths that stayed fresh."""
  src = run.config.init_from
  if convert.is_hf_dir(src):
    return convert.hf_params(run, src, fresh)
  restored = restore_saved(src, mesh=run.config.mesh.to_dict(), tokenizer=run.tokenizer, role="init_from run",
                           trust_code=families.own_code(run.config))
  return init_from.merge_params(run, restored.params, fresh)


def load_reference(run: Run, devices=None) -> tuple[Run, Any] | None:
  """The frozen reference model an objective asks for (`reference=WORKDIR`, e.g. `rho`), restored onto this
  run's mesh; it must share this run's tokenizer."""
  if run.needs.reference is None:
    return None
  workdir = _check_reference(run.needs)
  if convert.is_hf_dir(workdir):
    return _hf_reference(workdir, devices, run)
  restored = restore_saved(workdir, devices, mesh=run.config.mesh.to_dict(), batch_size=run.config.data.batch_size,
                           tokenizer=run.tokenizer, role="reference run", trust_code=families.own_code(run.config))
  if restored is None:
    raise CheckpointError(f"reference workdir {workdir!r} holds no checkpoint; train the reference first")
  return restored.run, restored.params
