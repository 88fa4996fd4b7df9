"""Model families, one folder each, found by module name.

`config.model.family = "token"` is the package `lm.families.token`; any other name (`mypkg.spacebyte`, a module
or a folder on sys.path) is imported as given. A family's module defines `FAMILY`, an instance of a
`lm.families.base.Family` subclass, which answers everything the rest of the code asks about the family: its
config section and checks, its model (train and decode modes), its data, its batch spec, FLOPs per byte,
evaluation extras and sampler; what only some families can do (sequence-level decoding, speculative decoding,
sentence listing) is a protocol in `base.py` that a family implements or not. Nothing outside this package asks
which family a run is. To fork a family, copy its folder: the copy's family name is its package's.

This module: lookup (`get`), the config a family extends (`base_config`, `load_config`, `apply_overrides`) and
what a saved config may import (`check_saved_code`, `--trust-code`).
"""

from __future__ import annotations

import importlib
import json
import sys
import jax
import jax.numpy as jnp
import ml_collections

from lm import config as config_lib
from lm.data import sources
from lm.errors import ConfigError, did_you_mean
from lm.families.base import (Family, SentenceLister, Speculative, UnitDecoder, no_extra_passes,  # noqa: F401
                              require)  # re-exported: lm.families.Family, ...
from lm.objectives import base as objectives_base

BUILTIN = ("token", "hierarchical", "concept")


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
  formats = {part.strip().partition(":")[0] for part in str(config.data.source).split(",") if ":" in part}
  return {config.model.family, *(o["name"] for o in config.objectives), *formats}


def foreign_code(saved: dict) -> list[str]:
  """What loading a saved config would import beyond lm itself: `model.family` unless built in, objective
  names unless registered, either unless this process has imported its module already (then loading runs no
  new code). Nothing is imported to find out."""
  family = str(saved.get("model", {}).get("family", "token"))
  names = [] if family in BUILTIN or family in sys.modules else [f"model.family={family!r}"]
  known = set(objectives_base.registered())
  data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
  names += [f"data.source={name!r}" for name in sources.foreign_formats(data.get("source", ""))]
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
