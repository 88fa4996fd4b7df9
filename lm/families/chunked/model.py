"""Blocks shared by the chunked families (byte-hierarchical words, concept sentences).

A chunk encoder turns each chunk of at most L units into one vector (a bidirectional transformer read at a
learned slot prepended to the units); a chunk decoder, causal over units and conditioned on a context vector
at its first position, gives the logits of the chunk's units and its end event. A family calls
`setup_encoder(self, cfg)` / `setup_decoder(self, cfg)` in its `setup`, which makes the parts attributes of
the family's module (`encoder_embed`, `encoder_slot`, `encoder`, `encoder_norm`; `decoder_embed`, `decoder`,
`decoder_norm`), so their parameters sit at the top of the family's tree, then calls the functions below.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.decoding.generate import zero_cache
from lm.models.layers import (Array, Embedding, TransformerConfig, _init, dtype_of, make_norm,
                              mask_padded_vocab)
from lm.models.transformer import Transformer


def sub_config(backbone: TransformerConfig, section) -> TransformerConfig:
  """An encoder/decoder config: its own sizes (`d_model, num_layers, num_heads, d_ff`), the backbone's
  numerics and scan/remat settings."""
  return dataclasses.replace(backbone, d_model=int(section["d_model"]), num_layers=int(section["num_layers"]),
                             num_heads=int(section["num_heads"]), num_kv_heads=int(section["num_heads"]),
                             d_ff=int(section["d_ff"]), head_dim=0,
                             scan_unroll=min(backbone.scan_unroll, int(section["num_layers"])) or 1)


def shift_right_chunks(x_BxCxD: Array) -> Array:
  """x[:, c - 1] at chunk c (zeros at c = 0)."""
  return jnp.concatenate([jnp.zeros_like(x_BxCxD[:, :1]), x_BxCxD[:, :-1]], axis=1)


def dense(cfg: TransformerConfig, features: int, axes: tuple) -> nn.Dense:
  init = nn.initializers.normal(cfg.init_std)
  return nn.Dense(features, use_bias=False, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                  kernel_init=_init(init, *axes))


def learned_vector(module: nn.Module, name: str, cfg: TransformerConfig) -> Array:
  """A [D] parameter of `module` (a start vector, an encoder slot), N(0, init_std)."""
  return module.param(name, _init(nn.initializers.normal(cfg.init_std), "embed"), (cfg.d_model,),
                      dtype_of(cfg.param_dtype))


def setup_encoder(module: nn.Module, enc: TransformerConfig) -> None:
  module.encoder_embed = Embedding(enc)
  module.encoder_slot = learned_vector(module, "encoder_slot", enc)
  module.encoder = Transformer(enc, causal=False)
  module.encoder_norm = make_norm(enc)


def setup_decoder(module: nn.Module, dec: TransformerConfig, decode: bool) -> None:
  module.decoder_embed = Embedding(dec)
  module.decoder = Transformer(dec, causal=True, decode=decode)
  module.decoder_norm = make_norm(dec)


def encode_chunks(module: nn.Module, enc: TransformerConfig, units_NxL: Array, unit_mask_NxL: Array) -> Array:
  """Chunk encoder: each chunk's units after the learned slot, bidirectional; the slot outputs [N, De]."""
  N, L = units_NxL.shape
  x_NxLxDe = module.encoder_embed(units_NxL)
  slot_De = module.encoder_slot.astype(dtype_of(enc.dtype))
  x_NxL1xDe = jnp.concatenate([jnp.broadcast_to(slot_De, (N, 1, enc.d_model)), x_NxLxDe], axis=1)
  seg_NxL1 = jnp.concatenate([jnp.ones((N, 1), jnp.int32), unit_mask_NxL], axis=1)
  pos_NxL1 = jnp.broadcast_to(jnp.arange(L + 1, dtype=jnp.int32), (N, L + 1))
  x_NxL1xDe = module.encoder(x_NxL1xDe, pos_NxL1, seg_NxL1)
  return module.encoder_norm(x_NxL1xDe[:, 0])


def _unembed(module: nn.Module, dec: TransformerConfig, y: Array) -> Array:
  logits = module.decoder_embed.attend(module.decoder_norm(y))
  return mask_padded_vocab(logits.astype(jnp.float32), dec.vocab_size)


def decode_chunks(module: nn.Module, dec: TransformerConfig, ctx_NxDd: Array, units_NxL: Array,
                  unit_mask_NxL: Array) -> Array:
  """Chunk decoder, training/scoring: [context, units of the chunk] -> logits [N, L + 1, V] of [units, end]."""
  N, L = units_NxL.shape
  y_NxL1xDd = jnp.concatenate([ctx_NxDd[:, None].astype(dtype_of(dec.dtype)), module.decoder_embed(units_NxL)],
                              axis=1)
  seg_NxL1 = jnp.concatenate([jnp.ones((N, 1), jnp.int32), unit_mask_NxL], axis=1)
  pos_NxL1 = jnp.broadcast_to(jnp.arange(L + 1, dtype=jnp.int32), (N, L + 1))
  return _unembed(module, dec, module.decoder(y_NxL1xDd, pos_NxL1, seg_NxL1))


def decode_one(module: nn.Module, dec: TransformerConfig, context_BxDd: Array, inputs_Bx1: Array,
               positions_Bx1: Array) -> Array:
  """Chunk decoder, one unit with a KV cache: position 0 reads `context`, later ones `inputs`; logits [B, 1, V]."""
  y_Bx1xDd = jnp.where((positions_Bx1 == 0)[..., None], context_BxDd[:, None].astype(dtype_of(dec.dtype)),
                       module.decoder_embed(inputs_Bx1))
  return _unembed(module, dec, module.decoder(y_Bx1xDd, positions_Bx1, None))


def init_caches(module: nn.Module, batch_size: int, max_chunks: int, chunk_len: int, concept_dim: int = 0):
  """Zeroed (backbone, decoder) KV caches of a chunked family's module built with `decode=True`: its
  `backbone_step` over `max_chunks` chunks, its `decoder_step` over a chunk of up to `chunk_len` units."""
  z = jnp.zeros
  chunk = dict(units=z((batch_size, max_chunks, 1), jnp.int32), unit_mask=z((batch_size, max_chunks, 1), jnp.int32),
               positions=z((batch_size, max_chunks), jnp.int32))
  if concept_dim:
    chunk["concepts"] = z((batch_size, max_chunks, concept_dim))
  rng = jax.random.PRNGKey(0)
  backbone = zero_cache(lambda: module.init(rng, chunk, method=module.backbone_step))
  ids = z((batch_size, chunk_len + 1), jnp.int32)
  decoder = zero_cache(lambda: module.init(rng, z((batch_size, module.decoder_cfg.d_model)), ids, ids,
                                           method=module.decoder_step))
  return backbone, decoder


def batch_spec(rows: int, num_chunks: int, chunk_len: int, concept_dim: int = 0) -> dict:
  """Shapes of a chunked batch (`lm.families.chunked.data`): unit grids [B, C, L], chunk arrays [B, C], decoder
  targets [B, C, L + 1], and precomputed `concepts` [B, C, K] when `concept_dim` is given."""
  C, L = num_chunks, chunk_len
  grid, chunks, targets = ((rows, C, L), (rows, C), (rows, C, L + 1))
  spec = dict(units=grid, unit_mask=grid, chunk_mask=chunks, segment_ids=chunks, positions=chunks, doc_end=chunks,
              targets=targets, loss_mask=targets)
  spec = {k: jax.ShapeDtypeStruct(s, jnp.int32) for k, s in spec.items()}
  if concept_dim:
    spec["concepts"] = jax.ShapeDtypeStruct((rows, C, concept_dim), jnp.float32)
  return spec
