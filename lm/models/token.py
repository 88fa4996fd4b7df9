"""Token-level decoder LM (family "token"): embed -> Transformer -> RMSNorm -> unembed."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lm.models.base import ModelOutputs, register_family
from lm.models.layers import (Array, Embedding, RMSNorm, TransformerConfig, Unembed, constrain, dtype_of,
                              mask_padded_vocab)
from lm.models.transformer import Transformer


class TokenLM(nn.Module):
  """Batch arrays `inputs, positions, segment_ids` [B, T] -> next-unit logits [B, T, V]."""
  cfg: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, batch: dict[str, Array]) -> ModelOutputs:
    cfg = self.cfg
    ids_BxT = batch["inputs"]
    positions_BxT = batch.get("positions")
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(ids_BxT.shape[1], dtype=jnp.int32), ids_BxT.shape)
    embed = Embedding(cfg, name="embed")
    x_BxTxD = embed(ids_BxT)
    x_BxTxD = Transformer(cfg, causal=True, decode=self.decode, name="decoder")(
        x_BxTxD, positions_BxT, batch.get("segment_ids"))
    h_BxTxD = RMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name="final_norm")(x_BxTxD)
    if cfg.tie_embeddings:
      logits_BxTxV = embed.attend(h_BxTxD)
    else:
      logits_BxTxV = Unembed(cfg, name="unembed")(h_BxTxD)
    logits_BxTxV = mask_padded_vocab(logits_BxTxV.astype(jnp.float32), cfg.vocab_size)
    logits_BxTxV = constrain(logits_BxTxV, ("batch", "length", "vocab"))
    return ModelOutputs(logits=logits_BxTxV, aux={"hidden": h_BxTxD})


register_family("token")(TokenLM)
