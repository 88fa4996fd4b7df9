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


# Blocks shared by the chunked families (byte-hierarchical here, concept in `models/concept.py`). Each is called
# inside its parent's compact `__call__` and creates its submodules there, so the parameter names
# (`encoder_embed`, `encoder_slot`, `encoder`, `encoder_norm`, `decoder_embed`, `decoder`, `decoder_norm`) are
# the parent's.

def norm(cfg: TransformerConfig, name: str) -> RMSNorm:
  return RMSNorm(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name=name)


def dense(cfg: TransformerConfig, features: int, name: str, axes: tuple) -> nn.Dense:
  init = nn.initializers.normal(cfg.init_std)
  return nn.Dense(features, use_bias=False, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  name=name, kernel_init=_init(init, *axes))


def encode_chunks(parent: nn.Module, enc: TransformerConfig, units_NxL: Array, unit_mask_NxL: Array) -> Array:
  """Chunk encoder: each chunk's units after a learned slot, bidirectional; returns the slot outputs [N, De]."""
  N, L = units_NxL.shape
  dtype = dtype_of(enc.dtype)
  x_NxLxDe = Embedding(enc, name="encoder_embed")(units_NxL)
  slot_De = parent.param("encoder_slot", _init(nn.initializers.normal(enc.init_std), "embed"), (enc.d_model,),
                         dtype_of(enc.param_dtype)).astype(dtype)
  x_NxL1xDe = jnp.concatenate([jnp.broadcast_to(slot_De, (N, 1, enc.d_model)), x_NxLxDe], axis=1)
  seg_NxL1 = jnp.concatenate([jnp.ones((N, 1), jnp.int32), unit_mask_NxL], axis=1)
  pos_NxL1 = jnp.broadcast_to(jnp.arange(L + 1, dtype=jnp.int32), (N, L + 1))
  x_NxL1xDe = Transformer(enc, causal=False, name="encoder")(x_NxL1xDe, pos_NxL1, seg_NxL1)
  return norm(enc, "encoder_norm")(x_NxL1xDe[:, 0])


def decode_chunks(dec: TransformerConfig, ctx_NxDd: Array, units_NxL: Array, unit_mask_NxL: Array) -> Array:
  """Chunk decoder, training/scoring: [context, units of the chunk] -> logits [N, L + 1, V] of [units, end]."""
  N, L = units_NxL.shape
  dec_embed = Embedding(dec, name="decoder_embed")
  y_NxL1xDd = jnp.concatenate([ctx_NxDd[:, None].astype(dtype_of(dec.dtype)), dec_embed(units_NxL)], axis=1)
  seg_NxL1 = jnp.concatenate([jnp.ones((N, 1), jnp.int32), unit_mask_NxL], axis=1)
  pos_NxL1 = jnp.broadcast_to(jnp.arange(L + 1, dtype=jnp.int32), (N, L + 1))
  y_NxL1xDd = Transformer(dec, causal=True, name="decoder")(y_NxL1xDd, pos_NxL1, seg_NxL1)
  logits = dec_embed.attend(norm(dec, "decoder_norm")(y_NxL1xDd))
  return mask_padded_vocab(logits.astype(jnp.float32), dec.vocab_size)


def decode_step(dec: TransformerConfig, batch: dict[str, Array]) -> Array:
  """Chunk decoder, one unit with a KV cache: position 0 reads `context`, later ones `inputs`; logits [B, 1, V]."""
  dec_embed = Embedding(dec, name="decoder_embed")
  pos_Bx1 = batch["positions"]
  y_Bx1xDd = jnp.where((pos_Bx1 == 0)[..., None], batch["context"][:, None].astype(dtype_of(dec.dtype)),
                       dec_embed(batch["inputs"]))
  y_Bx1xDd = Transformer(dec, causal=True, decode=True, name="decoder")(y_Bx1xDd, pos_Bx1, None)
  logits = dec_embed.attend(norm(dec, "decoder_norm")(y_Bx1xDd))
  return mask_padded_vocab(logits.astype(jnp.float32), dec.vocab_size)


class HierarchicalLM(nn.Module):
  cfg: TransformerConfig        # the backbone over words; `vocab_size` includes end-of-word
  encoder: TransformerConfig
  decoder: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, batch: dict[str, Array], with_heads: bool = True, step: str | None = None) -> ModelOutputs:  # pylint: disable=unused-argument
    """Training/evaluation forward; with `decode=True`, `step="backbone"` or `step="decoder"` advances one
    word or one byte with KV caches (see `lm.eval.generate.generate_chunks`)."""
    cfg, enc, dec = self.cfg, self.encoder, self.decoder
    if step == "decoder":
      return ModelOutputs(logits=decode_step(dec, batch))
    units_BxCxL, unit_mask_BxCxL = batch["units"], batch["unit_mask"]
    B, C, L = units_BxCxL.shape
    word_NxDe = encode_chunks(self, enc, units_BxCxL.reshape(B * C, L), unit_mask_BxCxL.reshape(B * C, L))
    word_BxCxD = dense(cfg, cfg.d_model, "encoder_to_backbone", (None, "embed"))(word_NxDe).reshape(B, C, cfg.d_model)

    # Backbone: position c reads word c - 1 (a learned start vector where a document's row segment begins)
    # and predicts word c.
    start_D = self.param("backbone_start", _init(nn.initializers.normal(cfg.init_std), "embed"), (cfg.d_model,),
                         dtype_of(cfg.param_dtype)).astype(dtype_of(cfg.dtype))
    positions_BxC = batch["positions"]
    to_decoder = dense(cfg, dec.d_model, "backbone_to_decoder", ("embed", None))
    if step == "backbone":  # one word: position c reads the word it is given (the start vector at c = 0)
      x_BxCxD = jnp.where((positions_BxC > 0)[..., None], word_BxCxD, start_D)
      x_BxCxD = Transformer(cfg, causal=True, decode=True, name="backbone")(x_BxCxD, positions_BxC, None)
      ctx_BxDd = to_decoder(norm(cfg, "backbone_norm")(x_BxCxD)[:, -1])
      return ModelOutputs(logits=ctx_BxDd, aux={"context": ctx_BxDd})
    x_BxCxD = jnp.where((positions_BxC > 0)[..., None], shift_right_chunks(word_BxCxD), start_D)
    x_BxCxD = constrain(x_BxCxD, ("batch", "length", "embed"))
    x_BxCxD = Transformer(cfg, causal=True, name="backbone")(x_BxCxD, positions_BxC, batch["segment_ids"])
    context_BxCxD = norm(cfg, "backbone_norm")(x_BxCxD)

    # Decoder: [context of word c, bytes of word c] -> [bytes of word c, end of word / document].
    ctx_NxDd = to_decoder(context_BxCxD.reshape(B * C, cfg.d_model))
    logits = decode_chunks(dec, ctx_NxDd, units_BxCxL.reshape(B * C, L), unit_mask_BxCxL.reshape(B * C, L))
    return ModelOutputs(logits=logits.reshape(B, C, L + 1, -1), aux={"words": word_BxCxD, "context": context_BxCxD})


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
