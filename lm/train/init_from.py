"""`config.init_from`: start a run from another run's params or from a Hugging Face model directory.

`apply_init_from` gives the config the source's architecture (every model field of a workdir's saved config
but how it computes, `RUNTIME_FIELDS`; a Hugging Face model's options and its tokenizer); `init_tokenizer` is
the source's tokenizer, exactly; `merge_params` places a source's params onto the new run's shardings, with
what the source lacks (the heads an objective adds) kept fresh. Restoring the source is `lm.train.run`'s
(`init_params`); reading Hugging Face tensors is `lm.interop.convert`'s.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from lm import families, parallel
from lm.errors import CheckpointError, ConfigError
from lm.interop import convert, hf
from lm.train import checkpoint

# `config.model` fields that are how a run computes, not what the model is: `init_from` leaves them alone.
RUNTIME_FIELDS = {"scan_unroll", "remat_policy", "attention_impl", "attention_block_q", "attention_block_kv",
                  "attention_interpret", "dtype", "param_dtype", "logits_chunk"}


def is_import(meta: dict) -> bool:
  """Whether a checkpoint's meta is `lm import hf`'s: params only, to train from in a new workdir."""
  return isinstance(meta.get("data"), dict) and "imported_from" in meta["data"]


def source_meta(src: str) -> dict:
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
  if convert.is_hf_dir(src):
    if not families.get(config.model.family).hf_decoder:
      raise ConfigError(f"config.init_from={src!r} is a Hugging Face decoder; train a token-family experiment "
                        f"from it (this one is model.family={config.model.family!r})")
    hf_cfg = convert.read_hf_config(src)
    fields = dict(hf.model_fields(hf_cfg), max_positions=hf.context_length(hf_cfg))
    convert.hf_tokenizer(src)
    config.data.tokenizer = str(src)
  else:
    saved = source_meta(src)["config"]
    if saved["model"]["family"] != config.model.family:
      raise ConfigError(f"config.init_from={src!r} is a {saved['model']['family']} run and this experiment is "
                        f"{config.model.family}; train an experiment of its family")
    fields = {k: v for k, v in saved["model"].items() if k not in RUNTIME_FIELDS and k in config.model}
  for key, value in fields.items():
    config.model[key] = value
  return config


def init_tokenizer(src: str):
  return convert.hf_tokenizer(src) if convert.is_hf_dir(src) else source_meta(src)["tokenizer"]


def _resize_vocab(x, shape):
  """A workdir's embedding or unembedding padded for another backend's vocab multiple (padding rows are zero)."""
  pads = [(0, max(t - s, 0)) for s, t in zip(x.shape, shape)]
  x = np.pad(np.asarray(parallel.to_host(x)), pads)
  return x[tuple(slice(0, t) for t in shape)]


def merge_params(run, source_params, fresh: dict) -> tuple[dict, list[str]]:
  """`run`'s params from a restored source run's, placed on `run`'s shardings, with what the source lacks (new
  heads) from `fresh`. Returns the params and the paths that stayed fresh."""
  src = run.config.init_from
  source = convert.flatten(source_params)
  targets, fresh_flat = convert.flatten(run.abstract_state.params), convert.flatten(fresh)
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
  return convert.unflatten(out), kept
