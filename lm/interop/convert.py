"""Hugging Face model directories as `lm` sees them: their config as a token-family config (`config_for`), their
tensors as a run's params (`hf_params`), our tokenizers in their form (`hf_tokenizer_files`). Nothing here reads
or writes a workdir: `lm import hf` / `lm export hf` are `lm.interop.workdirs`, `init_from` and reference models
are the training side's (`lm.train.init_from`, `lm.train.run`). Tensors are converted one at a time and placed
straight onto the run's shardings (`jax.make_array_from_callback`), so a model is never held twice.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import ml_collections
import numpy as np

from lm import config as config_lib
from lm import families
from lm.data import tokenizers as tokenizers_lib
from lm.data.hf_tokenizer import HFTokenizer
from lm.errors import CheckpointError, ConfigError
from lm.interop import hf, safetensors

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


# ---------------------------------------------------------------------------------------------------------
# Export.

def hf_tokenizer_files(tokenizer) -> dict[str, bytes]:
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
