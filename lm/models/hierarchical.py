"""Byte-hierarchical LM (family "hierarchical"): bytes -> words -> bytes (HAT, Neitemeier et al. 2025).

A word (chunk) of at most L bytes is encoded by a small bidirectional transformer into one vector, read from
a slot prepended to its bytes; the causal backbone (`models/transformer.py`) steps over words; a small causal
decoder, conditioned on the backbone's output for word c (which has seen words < c), emits the bytes of word c
and then an end-of-word event, or an end-of-document event after a document's last word. A document's first
word is predicted from a learned start vector.

Batch (from `lm.data.pipeline.ChunkData`): `units [B, C, L]` (bytes, pad 256), `unit_mask [B, C, L]`,
`chunk_mask`, `segment_ids`, `positions` `[B, C]`, and the decoder's `targets`, `loss_mask` `[B, C, L + 1]`.
Logits are `[B, C, L + 1, V]` over bytes, pad, bos, end-of-document (the byte tokenizer's eos) and
end-of-word (one more id), so the `ntp` objective scores them unchanged.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lm.models.base import ModelOutputs, register_family, transformer_config
from lm.models.layers import (Array, Embedding, RMSNorm, TransformerConfig, _init, constrain, dtype_of,
                              mask_padded_vocab)
from lm.models.transformer import Transformer


def shift_right_chunks(x_BxCxD: Array) -> Array:
  """x[:, c - 1] at chunk c (zeros at c = 0)."""
  return jnp.concatenate([jnp.zeros_like(x_BxCxD[:, :1]), x_BxCxD[:, :-1]], axis=1)


class HierarchicalLM(nn.Module):
  cfg: TransformerConfig        # the backbone over words; `vocab_size` includes end-of-word
  encoder: TransformerConfig
  decoder: TransformerConfig
  decode: bool = False

  def _norm(self, cfg: TransformerConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name=name)

  @nn.compact
  def __call__(self, batch: dict[str, Array], with_heads: bool = True, step: str | None = None) -> ModelOutputs:  # pylint: disable=unused-argument
    """Training/evaluation forward; with `decode=True`, `step="backbone"` or `step="decoder"` advances one
    word or one byte with KV caches (see `lm.eval.generate.generate_words`)."""
    cfg, enc, dec = self.cfg, self.encoder, self.decoder
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    dense = lambda features, name, axes: nn.Dense(  # noqa: E731
        features, use_bias=False, dtype=dtype, param_dtype=pdtype, name=name, kernel_init=_init(init, *axes))
    if step == "decoder":  # one byte: position 0 holds the word's context vector, later ones byte embeddings
      dec_embed = Embedding(dec, name="decoder_embed")
      pos_Bx1 = batch["positions"]
      y_Bx1xDd = jnp.where((pos_Bx1 == 0)[..., None], batch["context"][:, None].astype(dtype),
                           dec_embed(batch["inputs"]))
      y_Bx1xDd = Transformer(dec, causal=True, decode=True, name="decoder")(y_Bx1xDd, pos_Bx1, None)
      logits = dec_embed.attend(self._norm(dec, "decoder_norm")(y_Bx1xDd))
      return ModelOutputs(logits=mask_padded_vocab(logits.astype(jnp.float32), dec.vocab_size))
    units_BxCxL, unit_mask_BxCxL = batch["units"], batch["unit_mask"]
    B, C, L = units_BxCxL.shape

    # Encoder: each word's bytes after a learned slot, bidirectional; the slot's output is the word vector.
    enc_embed = Embedding(enc, name="encoder_embed")
    bytes_NxLxDe = enc_embed(units_BxCxL.reshape(B * C, L))
    slot_De = self.param("encoder_slot", _init(init, "embed"), (enc.d_model,), pdtype).astype(dtype)
    x_NxL1xDe = jnp.concatenate([jnp.broadcast_to(slot_De, (B * C, 1, enc.d_model)), bytes_NxLxDe], axis=1)
    seg_NxL1 = jnp.concatenate([jnp.ones((B * C, 1), jnp.int32), unit_mask_BxCxL.reshape(B * C, L)], axis=1)
    pos_NxL1 = jnp.broadcast_to(jnp.arange(L + 1, dtype=jnp.int32), (B * C, L + 1))
    x_NxL1xDe = Transformer(enc, causal=False, name="encoder")(x_NxL1xDe, pos_NxL1, seg_NxL1)
    word_NxDe = self._norm(enc, "encoder_norm")(x_NxL1xDe[:, 0])
    word_BxCxD = dense(cfg.d_model, "encoder_to_backbone", (None, "embed"))(word_NxDe).reshape(B, C, cfg.d_model)

    # Backbone: position c reads word c - 1 (a learned start vector where a document's row segment begins)
    # and predicts word c.
    start_D = self.param("backbone_start", _init(init, "embed"), (cfg.d_model,), pdtype).astype(dtype)
    positions_BxC = batch["positions"]
    if step == "backbone":  # one word: position c reads the word it is given (the start vector at c = 0)
      x_BxCxD = jnp.where((positions_BxC > 0)[..., None], word_BxCxD, start_D)
      x_BxCxD = Transformer(cfg, causal=True, decode=True, name="backbone")(x_BxCxD, positions_BxC, None)
      context_BxCxD = self._norm(cfg, "backbone_norm")(x_BxCxD)
      ctx_BxDd = dense(dec.d_model, "backbone_to_decoder", ("embed", None))(context_BxCxD[:, -1])
      return ModelOutputs(logits=ctx_BxDd, aux={"context": ctx_BxDd})
    x_BxCxD = jnp.where((positions_BxC > 0)[..., None], shift_right_chunks(word_BxCxD), start_D)
    x_BxCxD = constrain(x_BxCxD, ("batch", "length", "embed"))
    x_BxCxD = Transformer(cfg, causal=True, name="backbone")(x_BxCxD, positions_BxC, batch["segment_ids"])
    context_BxCxD = self._norm(cfg, "backbone_norm")(x_BxCxD)

    # Decoder: [context of word c, bytes of word c] -> [bytes of word c, end of word / document].
    dec_embed = Embedding(dec, name="decoder_embed")
    ctx_NxDd = dense(dec.d_model, "backbone_to_decoder", ("embed", None))(context_BxCxD.reshape(B * C, cfg.d_model))
    y_NxL1xDd = jnp.concatenate([ctx_NxDd[:, None].astype(dtype), dec_embed(units_BxCxL.reshape(B * C, L))], axis=1)
    y_NxL1xDd = Transformer(dec, causal=True, name="decoder")(y_NxL1xDd, pos_NxL1, seg_NxL1)
    h_NxL1xDd = self._norm(dec, "decoder_norm")(y_NxL1xDd)
    logits = mask_padded_vocab(dec_embed.attend(h_NxL1xDd).astype(jnp.float32), dec.vocab_size)
    logits_BxCxL1xV = logits.reshape(B, C, L + 1, -1)
    return ModelOutputs(logits=logits_BxCxL1xV, aux={"words": word_BxCxD, "context": context_BxCxD})


def _sub_config(backbone: TransformerConfig, section) -> TransformerConfig:
  """An encoder/decoder config: its own sizes, the backbone's numerics and scan/remat settings."""
  return dataclasses.replace(backbone, d_model=int(section["d_model"]), num_layers=int(section["num_layers"]),
                             num_heads=int(section["num_heads"]), num_kv_heads=int(section["num_heads"]),
                             d_ff=int(section["d_ff"]), head_dim=0,
                             scan_unroll=min(backbone.scan_unroll, int(section["num_layers"])) or 1)


@register_family("hierarchical")
def _build(model_cfg, vocab_size: int, decode: bool = False, heads: tuple = ()) -> HierarchicalLM:
  """`vocab_size` is the byte tokenizer's; one more id is the end-of-word event."""
  if heads:
    from lm.errors import ConfigError
    raise ConfigError(f"model.family='hierarchical' has no auxiliary heads; objectives asked for {[h[0] for h in heads]}")
  backbone = transformer_config(model_cfg, vocab_size + 1)
  return HierarchicalLM(backbone, _sub_config(backbone, model_cfg.encoder), _sub_config(backbone, model_cfg.decoder),
                        decode=decode)
