"""FLOP formulas: matmul FLOPs (2 per multiply-add) of the parts in `lm/models`, per position.

Causal attention is counted at its average key count (a query sees seq_len / 2 keys on average; XLA's dense
masked attention computes all of them, a few percent more at small widths); training is 3x forward (forward +
two backward matmuls). Families add these up per byte of text (`Family.flops_per_byte`) twice: over every
position the compiled step computes, padding included (*executed*, what budgets and `train_flops` use), and
over the positions that hold data (`_data`: an ideal padding-free implementation's cost).
"""

from __future__ import annotations


def padded(vocab_size: int, multiple: int) -> int:
  """The vocabulary rounded up the way the model pads its tables."""
  return -(-vocab_size // max(multiple, 1)) * max(multiple, 1)


def transformer_per_position(d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, d_ff: int,
                             keys: float, head_dim: int = 0, gated: bool = True) -> float:
  """Forward FLOPs of one position through a stack of pre-norm blocks attending to `keys` keys
  (`gated`: a SwiGLU MLP's three matrices, else GELU's two)."""
  E = head_dim or d_model // num_heads
  per_layer = d_model * E * (2 * num_heads + 2 * num_kv_heads) + (3 if gated else 2) * d_model * d_ff
  return 2 * num_layers * (per_layer + 2 * num_heads * E * keys)


def block_per_position(cfg, keys: float) -> float:
  """One transformer block of a `TransformerConfig`."""
  return transformer_per_position(cfg.d_model, 1, cfg.num_heads, cfg.num_kv_heads, cfg.d_ff, keys, cfg.head_dim,
                                  gated=cfg.mlp == "swiglu")


def unembed_per_position(cfg) -> float:
  return 2.0 * cfg.d_model * cfg.padded_vocab


def chunked_per_byte(model_cfg, vocab_size: int, chunk_len: int, num_chunks: int, n_bytes: float, n_units: float,
                     n_chunks: float, concept_dim: int = 0, decoder_passes: int = 1,
                     with_encoder: bool = True) -> dict[str, float]:
  """FLOPs per byte of `n_bytes` of a chunked family by component, over `n_units` unit slots and `n_chunks`
  chunks (the caller says which: every slot of the grid, or those holding data): the encoder runs once per
  unit plus one slot per chunk, the backbone once per chunk, the decoder once per unit plus one context
  position per chunk (and unembeds each over `vocab_size + 1` ids: the end event), attention at its average
  key count. `concept_dim` > 0: the projections go through a concept vector of that size (counted with the
  backbone). `decoder_passes` counts training's extra decoder passes (concept reconstruction)."""
  m, enc, dec = model_cfg, model_cfg.encoder, model_cfg.decoder
  L1 = chunk_len + 1
  positions = n_units + n_chunks
  gated = m.mlp == "swiglu"  # encoder and decoder take the backbone's MLP kind (`chunked.sub_config`)
  encoder = positions * transformer_per_position(enc.d_model, enc.num_layers, enc.num_heads, enc.num_heads,
                                                 enc.d_ff, keys=L1, gated=gated) if with_encoder else 0.0
  K = concept_dim
  # hierarchical: word -> backbone -> decoder context; concept: encoder -> K -> backbone -> K -> decoder context
  projections = (2 * enc.d_model * m.d_model + 2 * m.d_model * dec.d_model) if not K else \
      (2 * enc.d_model * K * with_encoder + 2 * K * m.d_model + 2 * m.d_model * K + 2 * K * dec.d_model)
  backbone = n_chunks * (transformer_per_position(m.d_model, m.num_layers, m.num_heads, m.num_kv_heads, m.d_ff,
                                                  keys=num_chunks / 2, head_dim=m.head_dim, gated=gated)
                         + projections)
  decoder = positions * (transformer_per_position(dec.d_model, dec.num_layers, dec.num_heads, dec.num_heads,
                                                  dec.d_ff, keys=L1 / 2, gated=gated)
                         + 2 * dec.d_model * padded(vocab_size + 1, m.vocab_multiple))
  per_byte = {k: v / max(n_bytes, 1) for k, v in dict(encoder=encoder, backbone=backbone, decoder=decoder).items()}
  forward = sum(per_byte.values())
  return dict(forward=forward, train=3 * (forward + (decoder_passes - 1) * per_byte["decoder"]),
              **{f"{k}_forward": v for k, v in per_byte.items()})


def per_byte_entries(executed: dict[str, float], data: dict[str, float]) -> dict[str, float]:
  """The entries evaluation and training logs carry from two `{forward, train, ...}` per-byte counts: executed
  ones as `flops_per_byte_train` / `_inference` (and per component), data-position ones as
  `flops_per_byte_data` (training) / `flops_per_byte_inference_data`."""
  return dict(flops_per_byte_inference=executed["forward"], flops_per_byte_train=executed["train"],
              flops_per_byte_data=data["train"], flops_per_byte_inference_data=data["forward"],
              **{f"flops_per_byte_{k}": v for k, v in executed.items() if k.endswith("_forward")})
