"""`lm import hf`, `lm export hf`, `config.init_from` and Hugging Face reference models.

An import is an `lm` workdir whose one checkpoint (step 0) holds the params alone, with the config and the
model's own tokenizer: `lm eval`, `lm sample`, `lm export hf` and `init_from` read it; training starts from it
in a new workdir (`lm train EXPERIMENT --config.init_from=W`). Tensors are converted one at a time and placed
straight onto the run's shardings (`jax.make_array_from_callback`), so a model is never held twice.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np

from lm import config as config_lib
from lm import families, parallel
from lm.data import tokenizers as tokenizers_lib
from lm.data.hf_tokenizer import HFTokenizer
from lm.errors import CheckpointError, ConfigError
from lm.interop import hf, safetensors

# `config.model` fields that are how a run computes, not what the model is: `init_from` leaves them alone.
RUNTIME_FIELDS = {"scan_unroll", "remat_policy", "attention_impl", "attention_block_q", "attention_block_kv",
                  "attention_interpret", "dtype", "param_dtype", "logits_chunk"}


def is_hf_dir(path) -> bool:
  """A local Hugging Face model directory: config.json beside safetensors weights."""
  p = pathlib.Path(os.path.expanduser(str(path)))
  return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or (p / safetensors.INDEX).is_file())


def read_hf_config(directory) -> dict:
  path = pathlib.Path(os.path.expanduser(str(directory))) / "config.json"
  if not path.is_file():
    raise ConfigError(f"{directory}: no config.json; pass a Hugging Face model directory (config.json, "
                      "*.safetensors, tokenizer.json)")
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError(f"{path}: not valid JSON ({e}); fix or re-download it") from None


def hf_tokenizer(directory) -> HFTokenizer:
  if not tokenizers_lib.is_hf_dir(directory):
    raise ConfigError(f"{directory}: no tokenizer.json; save the tokenizer beside the model "
                      "(tokenizer.save_pretrained(DIR))")
  return HFTokenizer.from_dir(directory)


def config_for(directory, overrides=()) -> ml_collections.ConfigDict:
  """The token-family config of a Hugging Face model directory (`overrides` as for `lm train`), validated."""
  hf_cfg = read_hf_config(directory)
  config = families.base_config("token")
  config.experiment = f"hf:{pathlib.Path(directory).name}"
  for key, value in hf.model_fields(hf_cfg).items():
    config.model[key] = value
  context = hf.context_length(hf_cfg)
  config.model.max_positions = context
  config.data.tokenizer = str(directory)
  config.data.seq_len = min(context, 1024)
  config.lock()
  families.apply_overrides(config, list(overrides))
  families.validate(config)
  return config


# ---------------------------------------------------------------------------------------------------------
# Params from Hugging Face tensors.

def flatten(tree) -> dict:
  """A params tree as {"decoder/layers/attn/query": leaf}."""
  return config_lib.flatten(tree, sep="/")


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


class _Tensors:
  """Reads Hugging Face tensors by name (with or without the `model.` / `transformer.` prefix), as float32."""

  def __init__(self, directory):
    self.reader = safetensors.Reader(os.path.expanduser(str(directory)))
    self.used: set[str] = set()

  def get(self, name: str) -> np.ndarray:
    for candidate in (name, name.split(".", 1)[1]):
      if candidate in self.reader:
        self.used.add(candidate)
        return np.asarray(self.reader.get(candidate), dtype=np.float32)
    raise CheckpointError(f"the Hugging Face checkpoint has no tensor {name!r} (config.json promises it); "
                          "the weights and config.json disagree")

  def unused(self) -> list[str]:
    return sorted(n for n in self.reader.names() if n not in self.used and not n.endswith(hf.IGNORED_SUFFIXES))


def _sources(kind: str, cfg, tensors: _Tensors, scan: bool) -> dict:
  """Param path -> a function making that leaf (float32 numpy) from the Hugging Face tensors."""
  out = {}
  for rule in hf.rules(kind, cfg):
    for j, path in enumerate(rule.ours):
      def one(name, rule=rule, j=j):
        w = tensors.get(name)
        try:
          return np.asarray(rule.to_ours(w, cfg)[j])
        except (ValueError, TypeError) as e:
          raise CheckpointError(f"tensor {name} {tuple(w.shape)} does not fit the model config.json describes "
                                f"({str(e).splitlines()[0]}); the weights and config.json disagree") from None
      if not rule.layer:
        out[path] = lambda one=one, rule=rule: one(rule.hf)
      elif scan:
        out[f"decoder/layers/{path}"] = lambda one=one, rule=rule: _stack(
            lambda i: one(rule.hf.format(i=i)), cfg.num_layers)
      else:
        for i in range(cfg.num_layers):
          out[f"decoder/layers_{i}/{path}"] = lambda one=one, rule=rule, i=i: one(rule.hf.format(i=i))
  return out


def _stack(layer, count: int) -> np.ndarray:
  """[count, ...] filled layer by layer (no list of per-layer copies beside the result)."""
  first = layer(0)
  out = np.empty((count, *first.shape), first.dtype)
  out[0] = first
  for i in range(1, count):
    out[i] = layer(i)
  return out


def _place(make, target, path: str):
  """A leaf made on the host, placed on `target`'s sharding (each device reads only its block)."""
  full = make()
  if full.shape != tuple(target.shape):
    raise CheckpointError(f"param {path}: the checkpoint's tensors make {full.shape} where config.json describes "
                          f"{tuple(target.shape)}; the weights and config.json disagree")
  full = full.astype(target.dtype, copy=False)
  return jax.make_array_from_callback(full.shape, target.sharding, lambda index: full[index])


def hf_params(run, directory, fresh=None) -> tuple[dict, list[str]]:
  """`run`'s params from the Hugging Face model in `directory`, on `run`'s shardings; leaves the model has
  and the checkpoint lacks (the heads an objective adds) come from `fresh`, or are an error without it.
  Returns (params, the paths taken from `fresh`)."""
  kind = hf.kind_of(read_hf_config(directory))
  tensors = _Tensors(directory)
  if run.model.cfg.tie_embeddings and "lm_head.weight" in tensors.reader:
    tensors.used.add("lm_head.weight")  # a tied head's copy, kept by some exports; transformers ties it away
  sources = _sources(kind, run.model.cfg, tensors, run.config.model.scan_layers)
  targets = flatten(run.abstract_state.params)
  fresh_flat = flatten(fresh) if fresh is not None else {}
  out, kept = {}, []
  for path, target in targets.items():
    if path in sources:
      out[path] = _place(sources[path], target, path)
    elif path in fresh_flat:
      out[path] = fresh_flat[path]
      kept.append(path)
    else:
      raise CheckpointError(f"{directory}: nothing in the checkpoint becomes param {path}; "
                            "the converter and the model disagree")
  unused = tensors.unused()
  if unused:
    raise CheckpointError(f"{directory}: {len(unused)} tensors this architecture does not use ({', '.join(unused[:3])}"
                          f"{' ...' if len(unused) > 3 else ''}); the checkpoint has options config.json does not "
                          "declare")
  return unflatten(out), kept


def import_hf(directory, workdir, overrides=()) -> dict:
  """Write `workdir` (a step-0 params-only checkpoint, config, tokenizer) from a Hugging Face model directory.
  Everything is checked (architecture, tokenizer, mesh) before the workdir is touched."""
  from lm.train import checkpoint, history
  from lm.train.run import build_run
  config = config_for(directory, overrides)
  tokenizer = hf_tokenizer(directory)
  if checkpoint.latest_step(workdir) is not None:
    raise CheckpointError(f"{workdir} already holds a run; import into a new --workdir")
  run = build_run(config, tokenizer)
  params, _ = hf_params(run, directory)
  # One GB of arrays serialised at a time: orbax copies what it writes to the host first, and with its default
  # (96 GB) a whole model's copy would sit beside the model.
  ckpts = checkpoint.Checkpoints(workdir, keep=1, read_only=False, save_concurrent_gb=1)
  ckpts.save(0, {"params": params}, {"imported_from": str(directory)}, run.config.to_dict(), tokenizer)
  ckpts.wait()
  if jax.process_index() == 0:
    history.record(workdir, run.config.to_dict(), 0, None)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return dict(params=count, kind=hf.kind_of(read_hf_config(directory)), mesh=dict(run.mesh.shape),
              vocab_size=tokenizer.vocab_size, model_vocab=run.model.cfg.vocab_size)


def is_import(meta: dict) -> bool:
  return isinstance(meta.get("data"), dict) and "imported_from" in meta["data"]


# ---------------------------------------------------------------------------------------------------------
# Export.

def _hf_tokenizer_files(tokenizer) -> dict[str, bytes]:
  """tokenizer.json + tokenizer_config.json that `AutoTokenizer` loads, for our BPE and imported tokenizers."""
  if tokenizer.kind == "hf":
    files = tokenizer.files()
    return {k: files[k] for k in ("tokenizer.json", tokenizers_lib.HF_CONFIG)}
  if tokenizer.kind != "bpe":
    return {}
  from tokenizers import Tokenizer, processors  # pylint: disable=import-outside-toplevel
  tok = Tokenizer.from_str(tokenizer.files()["tokenizer.json"].decode("utf-8"))
  role = tok.id_to_token
  bos = role(tokenizer.bos_id)
  # Our models read a bos before every document: transformers' tokenizer adds it the same way.
  tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_id)])
  config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=bos, eos_token=role(tokenizer.eos_id),
                pad_token=role(tokenizer.pad_id), add_bos_token=True)
  return {"tokenizer.json": tok.to_str().encode("utf-8"),
          tokenizers_lib.HF_CONFIG: json.dumps(config, indent=2).encode()}


def export_hf(workdir, out, max_shard_bytes: int = 5 << 30, dtype: str = "float32") -> dict:
  """Write the newest good checkpoint of `workdir` as a Hugging Face model directory `out` (weights of the
  trunk, config.json, the tokenizer where it has a Hugging Face form). Auxiliary heads are not exported."""
  from lm.train import run as run_lib
  out = pathlib.Path(os.path.abspath(os.path.expanduser(str(out))))
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ConfigError(f"--out {out} exists and is not an empty directory; pick a new directory")
  run, params = run_lib.restore_for_inference(workdir)
  m, cfg, tok = run.config.model, run.model.cfg, run.tokenizer
  kind = hf.export_kind(m)
  np_dtype = {"float32": np.float32, "bfloat16": safetensors.DTYPES["BF16"], "float16": np.float16}[dtype]
  flat = flatten(params)
  cache: dict[str, np.ndarray] = {}

  def host(path: str) -> np.ndarray:
    if path not in cache:
      cache.clear()  # rules read their leaves together, so one leaf group is on the host at a time
      cache[path] = parallel.to_host(flat[path])
    return cache[path]

  def leaves(rule, i):
    if not rule.layer:
      return [host(p) for p in rule.ours]
    if m.scan_layers:
      return [host(f"decoder/layers/{p}")[i] for p in rule.ours]
    return [host(f"decoder/layers_{i}/{p}") for p in rule.ours]

  def shape_of(path: str, stacked: bool):
    s = flat[path].shape
    return jax.ShapeDtypeStruct(s[1:] if stacked else s, np.float32)

  tensors = []
  for rule in hf.rules(kind, cfg):
    for i in range(cfg.num_layers) if rule.layer else [None]:
      if rule.layer and m.scan_layers:
        specs = [shape_of(f"decoder/layers/{p}", True) for p in rule.ours]
      elif rule.layer:
        specs = [shape_of(f"decoder/layers_{i}/{p}", False) for p in rule.ours]
      else:
        specs = [shape_of(p, False) for p in rule.ours]
      shape = jax.eval_shape(lambda *xs, rule=rule: rule.to_hf(*xs, cfg), *specs).shape
      name = rule.hf.format(i=i) if rule.layer else rule.hf
      tensors.append((name, shape, np_dtype,
                      lambda rule=rule, i=i: np.asarray(rule.to_hf(*leaves(rule, i), cfg), dtype=np.float32)))
  context = m.max_positions or run.config.data.seq_len
  config = hf.hf_config(kind, m, cfg.vocab_size, context, tok.bos_id, tok.eos_id)
  config["dtype"] = dtype
  tmp = out.with_name(out.name + ".partial")
  if tmp.exists():
    shutil.rmtree(tmp)
  files = safetensors.write(tmp, tensors, max_shard_bytes)
  (tmp / "config.json").write_text(json.dumps(config, indent=2))
  tok_files = _hf_tokenizer_files(tok)
  for name, data in tok_files.items():
    (tmp / name).write_bytes(data)
  if out.exists():
    out.rmdir()
  os.replace(tmp, out)
  heads = sorted({p.split("/")[0] for p in flat if p.split("/")[0].endswith("_head")})
  return dict(kind=kind, files=files, tokenizer=bool(tok_files), heads_left_out=heads)


# ---------------------------------------------------------------------------------------------------------
# init_from and reference models.

def _source_meta(src: str) -> dict:
  from lm.train import checkpoint
  step = checkpoint.latest_step(src)
  if step is None:
    raise ConfigError(f"config.init_from={src!r} is neither a Hugging Face model directory (config.json + "
                      "*.safetensors) nor a workdir with a checkpoint")
  return checkpoint.Checkpoints(src).read_meta(step)


def apply_init_from(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the architecture of `config.init_from` (a copy; unchanged without one): a Hugging Face
  model's options, or every model field of a workdir's saved config but how it computes (`RUNTIME_FIELDS`)."""
  src = config.get("init_from", "")
  if not src:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  if is_hf_dir(src):
    if not families.get(config.model.family).hf_decoder:
      raise ConfigError(f"config.init_from={src!r} is a Hugging Face decoder; train a token-family experiment "
                        f"from it (this one is model.family={config.model.family!r})")
    hf_cfg = read_hf_config(src)
    fields = dict(hf.model_fields(hf_cfg), max_positions=hf.context_length(hf_cfg))
    hf_tokenizer(src)
    config.data.tokenizer = str(src)
  else:
    saved = _source_meta(src)["config"]
    if saved["model"]["family"] != config.model.family:
      raise ConfigError(f"config.init_from={src!r} is a {saved['model']['family']} run and this experiment is "
                        f"{config.model.family}; train an experiment of its family")
    fields = {k: v for k, v in saved["model"].items() if k not in RUNTIME_FIELDS and k in config.model}
  for key, value in fields.items():
    config.model[key] = value
  return config


def init_tokenizer(src: str):
  return hf_tokenizer(src) if is_hf_dir(src) else _source_meta(src)["tokenizer"]


def _resize_vocab(x, shape):
  """A workdir's embedding or unembedding padded for another backend's vocab multiple (padding rows are zero)."""
  pads = [(0, max(t - s, 0)) for s, t in zip(x.shape, shape)]
  x = np.pad(np.asarray(parallel.to_host(x)), pads)
  return x[tuple(slice(0, t) for t in shape)]


def init_params(run, fresh: dict) -> tuple[dict, list[str]]:
  """`run`'s params from `config.init_from`, with what the source lacks (new heads) from `fresh`. Returns the
  params and the paths that stayed fresh."""
  src = run.config.init_from
  if is_hf_dir(src):
    return hf_params(run, src, fresh)
  from lm.train.run import restore_saved
  restored = restore_saved(src, mesh=run.config.mesh.to_dict(), tokenizer=run.tokenizer, role="init_from run",
                           trust_code=families.own_code(run.config))
  source = flatten(restored.params)
  targets, fresh_flat = flatten(run.abstract_state.params), flatten(fresh)
  out, kept = {}, []
  for path, target in targets.items():
    if path not in source:
      out[path] = fresh_flat[path]
      kept.append(path)
      continue
    x = source[path]
    if tuple(x.shape) != tuple(target.shape):
      if path not in ("embed/embedding", "unembed/kernel/kernel"):
        raise CheckpointError(f"config.init_from={src!r}: param {path} is {tuple(x.shape)} there and "
                              f"{tuple(target.shape)} here; the heads' equal_params or the model fields differ")
      x = _resize_vocab(x, target.shape).astype(target.dtype)
      out[path] = jax.make_array_from_callback(x.shape, target.sharding, lambda index, x=x: x[index])
    else:
      out[path] = jax.device_put(x.astype(target.dtype), target.sharding)
  return unflatten(out), kept


def reference_run(directory, devices, mesh: dict, batch_size: int, tokenizer):
  """A Hugging Face model as a frozen reference (`objectives.N.reference=HF_DIR`): its run and params on this
  run's mesh; it must share this run's tokenizer."""
  from lm.train.run import build_run
  ref_tok = hf_tokenizer(directory)
  if ref_tok.files() != tokenizer.files():
    raise CheckpointError(f"reference model {str(directory)!r} has another tokenizer than this run; train with "
                          f"--config.data.tokenizer={directory} (or init_from it)")
  config = config_for(directory)
  config.unlock()
  config.mesh = ml_collections.ConfigDict(mesh)
  config.data.batch_size = batch_size
  run = build_run(config, ref_tok, devices)
  params, _ = hf_params(run, directory)
  return run, params
