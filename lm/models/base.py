"""What every model returns, and the backbone's hyper-parameters from `config.model`."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct

from lm.models.layers import TransformerConfig


@struct.dataclass
class ModelOutputs:
  """`logits` of the main next-unit head (float32) and auxiliary outputs by name (heads, hidden states)."""
  logits: jax.Array
  aux: dict[str, Any] = struct.field(default_factory=dict)


def transformer_config(model_cfg, vocab_size: int) -> TransformerConfig:
  """`config.model` fields that the backbone understands, as a hashable dataclass."""
  fields = {f for f in TransformerConfig.__dataclass_fields__ if f != "vocab_size"}
  kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
  return TransformerConfig(vocab_size=vocab_size, **kwargs)
