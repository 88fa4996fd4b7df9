"""What every model returns, and the backbone's hyper-parameters from `config.model`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lm.errors import ConfigError
from lm.models.layers import TransformerConfig, mask_padded_vocab

# The random streams a training step gives the model (`self.make_rng(name)` in a module; lm.train.step): dropout,
# and noise for models whose inputs are drawn (a diffusion model's mask). A stream no module reads costs nothing.
RNG_STREAMS = ("dropout", "noise")


@struct.dataclass
class ModelOutputs:
  """What a model returns: its main next-unit head and auxiliary outputs by name (heads, hidden states).

  The main head is either materialised (`head_logits`, float32 [..., V]) or lazy: the final hidden states
  `hidden` [..., D] and the unembedding matrix `unembedding` [D, V], so a loss can compute it tile by tile
  (`lm.objectives.base.next_unit_nll`) and [B, T, V] logits never exist at once. `logits` gives the full
  logits either way; under `jit` they are computed only where something reads them.
  """
  head_logits: jax.Array | None = None
  aux: dict[str, Any] = struct.field(default_factory=dict)
  hidden: jax.Array | None = None
  unembedding: jax.Array | None = None
  vocab_size: int = struct.field(pytree_node=False, default=0)  # real entries of the (padded) vocabulary
  logits_chunk: int = struct.field(pytree_node=False, default=0)  # positions per tile of a chunked loss; 0: dense

  @property
  def logits(self) -> jax.Array:
    if self.head_logits is not None:
      return self.head_logits
    logits = jnp.einsum("...d,dv->...v", self.hidden, self.unembedding.astype(self.hidden.dtype),
                        preferred_element_type=jnp.float32)
    return mask_padded_vocab(logits, self.vocab_size)


def transformer_config(model_cfg, vocab_size: int) -> TransformerConfig:
  """`config.model` fields that the backbone understands, as a hashable dataclass. The vocabulary is the
  tokenizer's `vocab_size`, or `model.vocab_size` where that is set (an imported model may have more rows)."""
  fields = {f for f in TransformerConfig.__dataclass_fields__ if f != "vocab_size"}
  kwargs = {k: model_cfg[k] for k in fields if k in model_cfg}
  rows = model_cfg.get("vocab_size", 0) or vocab_size
  if rows < vocab_size:
    raise ConfigError(f"model.vocab_size={rows} is smaller than the tokenizer's {vocab_size} ids; raise it or set 0")
  return TransformerConfig(vocab_size=rows, **kwargs)
