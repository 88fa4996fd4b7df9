"""Model families, one file each, found by module name.

`config.model.family = "token"` is the module `lm.families.token`; any other dotted path (`mypkg.spacebyte`)
is imported as given. A family module defines `FAMILY`, an instance of a `Family` subclass, which answers
everything the rest of the code asks about the family: its config section and checks, its model (train and
decode modes), its data, its batch spec, FLOPs per byte, evaluation extras and sampler. Nothing outside this
package asks which family a run is. To fork a family, copy its file: the copy's family name is its module's.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import config as config_lib
from lm.errors import ConfigError, LMError, did_you_mean
from lm.models import flops
from lm.objectives.base import Requirements, masked_nll

BUILTIN = ("token", "hierarchical", "concept")


class Family:
  """What a family is asked. Subclass it in the family's module and set `FAMILY = MyFamily()`."""

  # The family's own config fields, merged into the base config when a run names this family:
  # {"model": {...}, "data": {...}}. Experiments and overrides then set them like any other field.
  config: dict[str, dict[str, Any]] = {}
  # Whether the model is the plain decoder Hugging Face causal LMs map onto (`lm.interop`: import, export,
  # init_from a Hugging Face directory): embed -> decoder -> final norm -> unembed, params named as token.py's.
  hf_decoder = False
  # Whether the model predicts tokenizer units one at a time from a start-of-document id, so that a text's
  # byte-level probability is the sum over its tokenizations (`lm.eval.byte_exact`, `lm.decoding.bytes`).
  unit_decoder = False

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """One-line `ConfigError`s for values of the family's fields that cannot work (no devices, no data)."""

  def tensor_split_fields(self, config: ml_collections.ConfigDict) -> dict[str, int]:
    """Extra `config` fields (dotted name -> value) that `mesh.tensor` must divide."""
    return {}

  def build_model(self, config: ml_collections.ConfigDict, vocab_size: int, decode: bool = False,
                  needs: Requirements = Requirements()) -> nn.Module:
    raise NotImplementedError

  def load_data(self, config: ml_collections.ConfigDict, tokenizer=None):
    """The run's data (splits, tokenizer, train iterator, eval batches); `tokenizer` reuses a trained one."""
    raise NotImplementedError

  def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a batch of `rows` rows: what `init` traces the model with."""
    raise NotImplementedError

  def units_per_row(self, config: ml_collections.ConfigDict) -> int:
    """What the progress line's tokens/s counts per row (units for the token family, chunks otherwise)."""
    return int(config.data.seq_len)

  def flops_per_byte(self, config: ml_collections.ConfigDict, vocab_size: int, n_bytes: float,
                     rows: list[dict[str, np.ndarray]], needs: Requirements) -> dict[str, float]:
    """`flops_per_byte_train`, `flops_per_byte_inference` (and per component) of text holding `n_bytes` bytes
    packed into `rows` (host batches), counted over every slot the compiled step computes (padding included),
    with `flops_per_byte_data` / `flops_per_byte_inference_data` over the positions holding data
    (`flops.per_byte_entries`); training counts the objectives' heads and extra passes."""
    raise NotImplementedError

  def eval_step(self, model: nn.Module):
    """(params, batch) -> sums: `nll_sum` and `count` of the main next-unit head, plus any extras."""
    def step(params, batch):
      outputs = model.apply({"params": params}, batch, with_heads=False)
      nll, _, count = masked_nll(outputs, batch["targets"], batch["loss_mask"])
      return dict(nll_sum=nll, count=count)
    return step

  def eval_summary(self, sums: dict[str, float], n_bytes: int) -> dict[str, float]:  # pylint: disable=unused-argument
    """Extra entries of the evaluation result from the extra sums of `eval_step`."""
    return {}

  def sample(self, run, params, prompt: str, *, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """Continue `prompt` (text) by up to `max_new` units with a trained run's params."""
    raise NotImplementedError

  def speculative(self, run, params, prompt: str, max_new: int) -> tuple[str, dict]:  # pylint: disable=unused-argument
    raise LMError(f"{run.config.experiment!r} ({run.config.model.family} family) has no speculative decoding; "
                  "drop --speculative")

  def decode(self, run, params, prompt: str, method: str, options) -> dict:  # pylint: disable=unused-argument
    """A sequence-level method (`lm.decoding.methods`) on `prompt`: its report."""
    raise LMError(f"--method {method} decodes token models, and {run.config.experiment!r} is a "
                  f"{run.config.model.family} model; sample it without --method")

  def sentences(self, config: ml_collections.ConfigDict, split: str) -> list[bytes]:  # pylint: disable=unused-argument
    raise LMError(f"{config.experiment} is a {config.model.family!r} model; `lm sentences` lists the sentences of "
                  "a concept-family experiment")


def no_extra_passes(config, needs: Requirements) -> None:
  """For families without a chunk decoder to run twice: objectives asking for extra passes are an error."""
  if needs.decoder_passes:
    raise ConfigError(f"model.family={config.model.family!r} has no chunk decoder for the {needs.decoder_passes} "
                      "extra decoder pass(es) the objectives ask for (concept_recon); use a concept-family experiment")


def check_chunked(config) -> None:
  """The encoder/decoder sizes and chunk grid of a chunked family (hierarchical, concept) are positive."""
  sizes = {f"model.{part}.{k}": config.model[part][k] for part in ("encoder", "decoder")
           for k in ("d_model", "num_layers", "num_heads", "d_ff")}
  sizes.update({f"data.{k}": config.data[k] for k in ("num_chunks", "chunk_len")})
  if config.data.completion_after:
    raise ConfigError(f"data.completion_after={config.data.completion_after!r} is read by the token family only; "
                      f"set it to '' for model.family={config.model.family!r}")
  for key, value in sizes.items():
    if value <= 0:
      raise ConfigError(f"config.{key}={value} must be positive")
  if config.model.positions != "rope":
    raise ConfigError(f"model.positions={config.model.positions!r}: chunked families place units and chunks "
                      "with RoPE only; set model.positions=rope")


def chunked_split_fields(config) -> dict[str, int]:
  """A chunked family's encoder and decoder split over `mesh.tensor` by the backbone's rules."""
  return {f"model.{part}.{k}": config.model[part][k] for part in ("encoder", "decoder") for k in ("num_heads", "d_ff")}


def chunked_flops(config, vocab_size: int, n_bytes: float, rows, needs: Requirements, concept_dim: int = 0,
                  with_encoder: bool = True) -> dict[str, float]:
  """`Family.flops_per_byte` of a chunked family: executed over every slot of the rows' `[C, L]` grids (the
  compiled step computes padding too), data-position over the units and chunks their masks hold."""
  d = config.data

  def count(n_units, n_chunks):
    return flops.chunked_per_byte(config.model, vocab_size, d.chunk_len, d.num_chunks, n_bytes, n_units, n_chunks,
                                  concept_dim=concept_dim, decoder_passes=1 + needs.decoder_passes,
                                  with_encoder=with_encoder)

  n_chunks = sum(float(r["chunk_mask"].sum()) for r in rows)
  executed = count(sum(float(r["unit_mask"].size) for r in rows), sum(float(r["chunk_mask"].size) for r in rows))
  data = count(sum(float(r["unit_mask"].sum()) for r in rows), n_chunks)
  return dict(flops.per_byte_entries(executed, data), bytes_per_chunk=n_bytes / max(n_chunks, 1))


def get(name: str) -> Family:
  """The family of `config.model.family`: the module `lm.families.NAME` if there is one, else the module NAME
  (a user's module on sys.path, dotted or not)."""
  candidates = [f"lm.families.{name}", name] if "." not in name else [name]
  module = None
  for path in candidates:
    try:
      module = importlib.import_module(path)
      break
    except ModuleNotFoundError as e:
      if e.name is None or not path.startswith(e.name):
        raise  # the family's module exists but imports something that does not
  if module is None:
    raise ConfigError(f"model.family={name!r} is unknown: no module {' or '.join(map(repr, candidates))}; choose "
                      f"one of {list(BUILTIN)} or the name of a module on sys.path that defines FAMILY")
  family = getattr(module, "FAMILY", None)
  if not isinstance(family, Family):
    raise ConfigError(f"module {module.__name__!r} (model.family={name!r}) defines no FAMILY = a "
                      "lm.families.Family instance; add one at the end of the module")
  return family


def _merge_missing(node: ml_collections.ConfigDict, section: dict) -> None:
  for key, value in section.items():
    if key not in node:
      node[key] = value
    elif isinstance(value, dict) and isinstance(node[key], ml_collections.ConfigDict):
      _merge_missing(node[key], value)


def extend_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Add the fields of the run's family (its `Family.config`) that `config` does not have yet."""
  family = get(config.model.family)
  for section, fields in family.config.items():
    _merge_missing(config[section], fields)
  return config


def base_config(family: str = "token") -> ml_collections.ConfigDict:
  """The base config with `family`'s section: what an experiment of that family starts from."""
  config = config_lib.base_config()
  config.model.family = family
  return extend_config(config)


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """Dotted overrides, `model.family` first so that the new family's fields exist for the others: strings
  `["a.b=VALUE", ...]` (parsed by the field's type, as on the command line) or a dict `{"a.b": value}`."""
  if isinstance(overrides, dict):
    items = [(k.removeprefix("config."), v) for k, v in overrides.items()]
  else:
    items = []
    for item in overrides:
      key, sep, value = item.partition("=")
      if not sep:
        raise ConfigError(f"override {item!r} has no value; write --config.{key}=VALUE")
      items.append((key.removeprefix("config."), value))
  family = [(k, v) for k, v in items if k == "model.family"]
  for key, value in family:
    config_lib.set_value(config, key, value)
  with config.unlocked():  # a new family brings its own fields
    extend_config(config)
  for key, value in items:
    if key != "model.family":
      config_lib.set_value(config, key, value, parse=isinstance(value, str))
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """The base checks, then the family's own."""
  config_lib.validate(config)
  get(config.model.family).validate(config)


def check_experiment_keys(config: ml_collections.ConfigDict) -> None:
  """An experiment changes values and never adds keys: a key its `get_config` made up (a typo such as
  `config.model.d_modle = 64`) is an error naming the nearest real key."""
  known = set(config_lib.all_keys(base_config(config.model.family)))
  for key in config_lib.all_keys(config):
    if key not in known:
      hint = did_you_mean(key, sorted(known), prefix="config.")
      raise ConfigError(f"experiment {config.experiment!r} sets config.{key}, which no config has; "
                        + (hint.rstrip() or "experiments change existing fields, never add new ones"))


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """`NAME[:ARG]` (or a file path) with dotted overrides (`apply_overrides`) applied and validated: what every
  command and `lm.build` run."""
  config = config_lib.load_experiment(spec)
  check_experiment_keys(config)
  extend_config(config)
  config.lock()  # from here on a misspelt key is an error, never a new field
  apply_overrides(config, overrides if isinstance(overrides, dict) else list(overrides))
  validate(config)
  return config


# Whether every module a saved config names may be imported (`--trust-code`, set once per process by the CLI).
_TRUST_ALL = False


def trust_code(on: bool = True) -> None:
  """Let every saved config this process loads import the modules it names (`lm ... --trust-code`)."""
  global _TRUST_ALL
  _TRUST_ALL = bool(on)


def own_code(config) -> set[str]:
  """The modules a config the user wrote (an experiment, command-line overrides) names: trusted as theirs."""
  return {config.model.family, *(o["name"] for o in config.objectives)}


def foreign_code(saved: dict) -> list[str]:
  """What loading a saved config would import beyond lm itself: `model.family` unless built in, objective
  names unless registered, either unless this process has imported its module already (then loading runs no
  new code). Nothing is imported to find out."""
  from lm.objectives import base as objectives_base
  family = str(saved.get("model", {}).get("family", "token"))
  names = [] if family in BUILTIN or family in sys.modules else [f"model.family={family!r}"]
  known = set(objectives_base.registered())
  for i, o in enumerate(saved.get("objectives") or []):
    name = str(o.get("name", "")) if isinstance(o, dict) else str(o)
    if name not in known and name.rpartition(".")[0] not in sys.modules:
      names.append(f"objectives.{i}.name={name!r}")
  return names


def check_saved_code(saved: dict, where: str, trusted=()) -> None:
  """Refuse, in one line, a saved config (a workdir someone else may have made) that names a module outside
  lm, before anything is imported: loading it would run that module's code. `trusted`: True for everything
  (`trust_code=True`), or the names the user gave themselves (their own experiment's family and objectives)."""
  if trusted is True or _TRUST_ALL:
    return
  allowed = set(trusted or ())
  foreign = [n for n in foreign_code(saved) if n.split("=", 1)[1].strip("'") not in allowed]
  if foreign:
    raise ConfigError(f"{where} names code outside lm ({', '.join(foreign)}): loading it would import and run "
                      "that module; if you trust whoever made it, pass --trust-code (lm.load(DIR, "
                      "trust_code=True))")


def from_json(text: str, where: str = "a saved config", trusted=()) -> ml_collections.ConfigDict:
  """A saved run config on top of the base config and its family's section (later-added fields default). It
  may name only built-in families and registered objectives unless `trusted` (`check_saved_code`)."""
  check_saved_code(json.loads(text), where, trusted)
  return config_lib.from_json(text, extend=extend_config)


def zeros(spec: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
  """A batch of zeros of a `batch_spec` (what `init` traces with)."""
  return {k: jnp.zeros(s.shape, s.dtype) for k, s in spec.items()}
