"""What every model family returns, and the family registry."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
from flax import struct

from lm.errors import ConfigError
from lm.models.layers import TransformerConfig


@struct.dataclass
class ModelOutputs:
  """`logits` of the main next-unit head (float32) and auxiliary outputs by name (heads, hidden states)."""
  logits: jax.Array
  aux: dict[str, Any] = struct.field(default_factory=dict)


# family -> builder(model_cfg, vocab_size, decode, heads) -> module
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def register_family(name: str):
  def wrap(builder):
    _FAMILIES[name] = builder
    return builder
  return wrap


def transformer_config(model_cfg, vocab_size: int) -> TransformerConfig:
  """`config.model` fields that the backbone understands, as a hashable dataclass."""
  fields = {f for f in TransformerConfig.__dataclass_fields__ if f != "vocab_size"}
  kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
  return TransformerConfig(vocab_size=vocab_size, **kwargs)


def build_model(model_cfg, vocab_size: int, decode: bool = False, heads: tuple = ()) -> nn.Module:
  """The family's module; `heads` are the auxiliary heads the objectives train (`objectives.heads`)."""
  import lm.models.concept  # noqa: F401  (registers the families)
  import lm.models.hierarchical  # noqa: F401
  import lm.models.token  # noqa: F401
  family = model_cfg.family
  if family not in _FAMILIES:
    raise ConfigError(f"model.family={family!r} is unknown; choose one of {sorted(_FAMILIES)}")
  return _FAMILIES[family](model_cfg, vocab_size, decode=decode, heads=tuple(heads))
