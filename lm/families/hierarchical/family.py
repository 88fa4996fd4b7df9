"""Byte-hierarchical family (HAT, Neitemeier et al. 2025): bytes -> words -> bytes.

A word (chunk) of at most L bytes is encoded by a small bidirectional transformer into one vector, read from
a slot prepended to its bytes; the causal backbone steps over words; a small causal decoder, conditioned on
the backbone's output for word c (which has seen words < c), emits the bytes of word c and then an
end-of-word event, or an end-of-document event after a document's last word. A document's first word is
predicted from a learned start vector.

Batch (`lm.families.chunked.data.ChunkData`): `units [B, C, L]` (bytes, pad 256), `unit_mask [B, C, L]`, `chunk_mask`,
`segment_ids`, `positions` `[B, C]`, and the decoder's `targets`, `loss_mask` `[B, C, L + 1]`. Logits are
`[B, C, L + 1, V]` over bytes, pad, bos, end-of-document (the byte tokenizer's eos) and end-of-word (one more
id), so the `ntp` objective scores them unchanged. Sampling goes word by word with KV caches.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.families.chunked.data import BYTE_PAD, ChunkData, word_chunks
from lm.errors import ConfigError
from lm.families.base import Family, no_extra_passes
from lm.families.chunked import model as chunked
from lm.families.chunked import sampler
from lm.families.chunked.family import check_chunked, chunked_flops, chunked_split_fields
from lm.models.base import ModelOutputs, transformer_config
from lm.models.layers import Array, TransformerConfig, constrain, dtype_of, make_norm
from lm.models.transformer import Transformer
from lm.objectives.base import Requirements


class HierarchicalLM(nn.Module):
  cfg: TransformerConfig          # the backbone over words; `vocab_size` includes end-of-word
  encoder_cfg: TransformerConfig
  decoder_cfg: TransformerConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    chunked.setup_encoder(self, self.encoder_cfg)
    self.encoder_to_backbone = chunked.dense(cfg, cfg.d_model, (None, "embed"))
    self.backbone_start = chunked.learned_vector(self, "backbone_start", cfg)
    self.backbone = Transformer(cfg, causal=True, decode=self.decode)
    self.backbone_norm = make_norm(cfg)
    self.backbone_to_decoder = chunked.dense(cfg, self.decoder_cfg.d_model, ("embed", None))
    chunked.setup_decoder(self, self.decoder_cfg, self.decode)

  def _words(self, units_BxCxL: Array, unit_mask_BxCxL: Array) -> Array:
    B, C, L = units_BxCxL.shape
    word_NxDe = chunked.encode_chunks(self, self.encoder_cfg, units_BxCxL.reshape(B * C, L),
                                      unit_mask_BxCxL.reshape(B * C, L))
    return self.encoder_to_backbone(word_NxDe).reshape(B, C, self.cfg.d_model)

  def __call__(self, batch: dict[str, Array], with_heads: bool = True) -> ModelOutputs:  # pylint: disable=unused-argument
    cfg = self.cfg
    units_BxCxL, unit_mask_BxCxL = batch["units"], batch["unit_mask"]
    B, C, L = units_BxCxL.shape
    word_BxCxD = self._words(units_BxCxL, unit_mask_BxCxL)
    # Backbone: position c reads word c - 1 (a learned start vector where a document's row segment begins)
    # and predicts word c.
    start_D = self.backbone_start.astype(dtype_of(cfg.dtype))
    x_BxCxD = jnp.where((batch["positions"] > 0)[..., None], chunked.shift_right_chunks(word_BxCxD), start_D)
    x_BxCxD = constrain(x_BxCxD, ("batch", "length", "embed"))
    x_BxCxD = self.backbone(x_BxCxD, batch["positions"], batch["segment_ids"])
    context_BxCxD = self.backbone_norm(x_BxCxD)
    # Decoder: [context of word c, bytes of word c] -> [bytes of word c, end of word / document].
    ctx_NxDd = self.backbone_to_decoder(context_BxCxD.reshape(B * C, cfg.d_model))
    logits = chunked.decode_chunks(self, self.decoder_cfg, ctx_NxDd, units_BxCxL.reshape(B * C, L),
                                   unit_mask_BxCxL.reshape(B * C, L))
    return ModelOutputs(head_logits=logits.reshape(B, C, L + 1, -1), aux={"words": word_BxCxD, "context": context_BxCxD})

  def backbone_step(self, chunk: dict[str, Array]) -> dict[str, Array]:
    """Decoding: read one word (`units`, `unit_mask` [B, 1, L]) at `positions` [B, 1] (the start vector at 0)
    into the backbone's KV cache; returns the decoder context [B, Dd] for the next word."""
    x_BxCxD = jnp.where((chunk["positions"] > 0)[..., None], self._words(chunk["units"], chunk["unit_mask"]),
                        self.backbone_start.astype(dtype_of(self.cfg.dtype)))
    x_BxCxD = self.backbone(x_BxCxD, chunk["positions"], None)
    return {"context": self.backbone_to_decoder(self.backbone_norm(x_BxCxD)[:, -1])}

  def decoder_step(self, context_BxDd: Array, inputs_Bx1: Array, positions_Bx1: Array) -> Array:
    """Decoding: one byte with the decoder's KV cache; logits [B, 1, V]."""
    return chunked.decode_one(self, self.decoder_cfg, context_BxDd, inputs_Bx1, positions_Bx1)

  @nn.nowrap
  def init_cache(self, batch_size: int, max_chunks: int, chunk_len: int):
    """Zeroed (backbone, decoder) KV caches: `max_chunks` words, one of up to `chunk_len` units."""
    return chunked.init_caches(self, batch_size, max_chunks, chunk_len)


class HierarchicalFamily(Family):
  config = dict(
      model=dict(encoder=dict(d_model=64, num_layers=1, num_heads=4, d_ff=192),   # word encoder
                 decoder=dict(d_model=64, num_layers=2, num_heads=4, d_ff=192)),  # byte decoder
      data=dict(num_chunks=64, chunk_len=16),  # C words per row, at most L bytes each (longer words split)
  )

  def validate(self, config) -> None:
    if config.data.tokenizer != "bytes":
      raise ConfigError(f"model.family={config.model.family!r} reads raw bytes; set data.tokenizer='bytes' "
                        f"(got {config.data.tokenizer!r})")
    check_chunked(config)

  def tensor_split_fields(self, config) -> dict[str, int]:
    return chunked_split_fields(config)

  def build_model(self, config, vocab_size: int, decode: bool = False,
                  needs: Requirements = Requirements()) -> HierarchicalLM:
    """`vocab_size` is the byte tokenizer's; one more id is the end-of-word event."""
    if needs.heads:
      raise ConfigError(f"model.family={config.model.family!r} has no auxiliary heads; objectives asked for "
                        f"{[h.kind for h in needs.heads]}")
    no_extra_passes(config, needs)
    backbone = transformer_config(config.model, vocab_size + 1)
    return HierarchicalLM(backbone, chunked.sub_config(backbone, config.model.encoder),
                          chunked.sub_config(backbone, config.model.decoder), decode=decode)

  def load_data(self, config, tokenizer=None) -> ChunkData:  # pylint: disable=unused-argument
    d = config.data  # raw bytes in word grids: the tokenizer is always bytes
    return ChunkData.build(d.source, d.num_chunks, d.chunk_len, val_fraction=d.val_fraction,
                           test_fraction=d.test_fraction, split_seed=d.split_seed,
                           eval_max_bytes=d.eval_max_bytes or None)

  def batch_spec(self, config, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    return chunked.batch_spec(rows, config.data.num_chunks, config.data.chunk_len)

  def units_per_row(self, config) -> int:
    return int(config.data.num_chunks)

  def flops_per_byte(self, config, vocab_size: int, n_bytes: float, rows, needs: Requirements) -> dict[str, float]:
    return chunked_flops(config, vocab_size, n_bytes, rows, needs)

  def sample(self, run, params, prompt: str, *, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """Word by word: the prompt's last word is a prefix the model may extend."""
    d, tok, model = run.config.data, run.tokenizer, run.decode_model()
    text = prompt.encode("utf-8")
    chunks = [ids.tolist() for _, ids in word_chunks(text, d.chunk_len)] if text else []
    out = sampler.generate_chunks(
        model, params, chunks, max_new=max_new, chunk_len=d.chunk_len,
        max_chunks=max(d.num_chunks, len(text) + max_new + 2), rng=jax.random.PRNGKey(seed), eod_id=tok.eos_id,
        end_id=tok.vocab_size, pad_id=BYTE_PAD, stop_ids=range(256, model.decoder_cfg.padded_vocab),
        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    return bytes(out).decode("utf-8", errors="replace")


FAMILY = HierarchicalFamily()
