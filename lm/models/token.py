"""Token-level decoder LM (family "token"): embed -> Transformer -> RMSNorm -> unembed, plus any auxiliary
heads the objectives ask for (`lm/models/heads.py`), each in its own parameter subtree."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lm.errors import ConfigError
from lm.models.base import ModelOutputs, register_family
from lm.models.heads import HEADS, TrunkOutputs
from lm.models.layers import (Array, Embedding, RMSNorm, TransformerConfig, Unembed, constrain, dtype_of,
                              mask_padded_vocab)
from lm.models.transformer import Transformer


def trunk_layers(cfg: TransformerConfig, heads: tuple) -> int:
  """Layers left in the trunk once heads that keep the parameter count equal took theirs."""
  given = sum(dict(options).get("give_up_layers", 0) for _, options in heads)
  if given >= cfg.num_layers:
    raise ConfigError(f"heads take {given} of model.num_layers={cfg.num_layers} layers from the trunk, which needs at "
                      f"least one; raise model.num_layers above {given} or drop equal_params")
  return cfg.num_layers - given


class TokenLM(nn.Module):
  """Batch arrays `inputs, positions, segment_ids` [B, T] -> next-unit logits [B, T, V] (+ head outputs).

  `with_heads=False` skips the auxiliary heads (evaluation and plain decoding). `heads_only=True` runs just
  the heads on a given trunk output `batch["trunk_out"]` (with `batch["next_inputs"]`, unit t+1 at each
  position, where known): speculative decoding drafts this way with the sequential `dsmtp` modules.
  """
  cfg: TransformerConfig
  decode: bool = False
  heads: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

  @nn.compact
  def __call__(self, batch: dict[str, Array], with_heads: bool = True, heads_only: bool = False) -> ModelOutputs:
    cfg = self.cfg
    ids_BxT = batch["inputs"]
    positions_BxT = batch.get("positions")
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(ids_BxT.shape[1], dtype=jnp.int32), ids_BxT.shape)
    segment_ids_BxT = batch.get("segment_ids")
    embed = Embedding(cfg, name="embed")
    unembed_module = None if cfg.tie_embeddings else Unembed(cfg, name="unembed")

    def unembed(h):
      logits = embed.attend(h) if cfg.tie_embeddings else unembed_module(h)
      return mask_padded_vocab(logits.astype(jnp.float32), cfg.vocab_size)

    if heads_only:
      x_BxTxD = batch["trunk_out"]
    else:
      trunk_cfg = dataclasses.replace(cfg, num_layers=trunk_layers(cfg, self.heads))
      x_BxTxD = Transformer(trunk_cfg, causal=True, decode=self.decode, name="decoder")(
          embed(ids_BxT), positions_BxT, segment_ids_BxT)
    h_BxTxD = RMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name="final_norm")(x_BxTxD)
    logits_BxTxV = constrain(unembed(h_BxTxD), ("batch", "length", "vocab"))
    aux = {"hidden": h_BxTxD, "trunk_out": x_BxTxD}
    if with_heads or heads_only:
      trunk = TrunkOutputs(x_BxTxD, h_BxTxD, ids_BxT, positions_BxT, segment_ids_BxT, embed, unembed,
                           batch.get("next_inputs"))
      for kind, options in self.heads:
        kwargs = {k: v for k, v in options if k != "give_up_layers"}
        aux.update(HEADS[kind](cfg, decode=self.decode, name=f"{kind}_head", **kwargs)(trunk))
    return ModelOutputs(logits=logits_BxTxV, aux=aux)


@register_family("token")
def _build(model_cfg, vocab_size: int, decode: bool = False, heads: tuple = ()) -> TokenLM:
  from lm.models.base import transformer_config
  cfg = transformer_config(model_cfg, vocab_size)
  unknown = [kind for kind, _ in heads if kind not in HEADS]
  if unknown:
    from lm.errors import ConfigError
    raise ConfigError(f"model.family='token' has no {unknown} head (an objective of another family asked for "
                      f"it); choose the family the objective belongs to")
  return TokenLM(cfg, decode=decode, heads=heads) if heads else TokenLM(cfg, decode=decode)
