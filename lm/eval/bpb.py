"""Bits per byte on fixed held-out segments, the metric every family is compared by (DESIGN.md).

Token family: each held-out segment (a document cut at sentence boundaries) is scored from a fresh state by
the next-unit head only, on its canonical tokenization, with the end-of-segment event counted as one byte.
Byte counts come from the source text on the host, so a lossy tokenizer cannot change the denominator.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.objectives.token import token_nll


def make_eval_step(model: nn.Module) -> Callable:
  """(params, batch) -> (nll_sum, count) of the main next-unit head."""

  def eval_step(params, batch):
    outputs = model.apply({"params": params}, batch, with_heads=False)
    nll_BxT, _ = token_nll(outputs.logits, batch["targets"])
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)

  return eval_step


def evaluate(eval_step: Callable, params, batches: Iterable, put: Callable = lambda b: b) -> dict:
  """`batches` yields (host batch, n_bytes); `put` places a host batch on the mesh."""
  nll_sum, units, n_bytes = 0.0, 0.0, 0
  pending = []
  for batch, nb in batches:
    pending.append(eval_step(params, put(batch)))  # dispatch all before reading any back
    n_bytes += int(nb)
  for nll, count in jax.device_get(pending):
    nll_sum += float(nll)
    units += float(count)
  return dict(bpb=nll_sum / (math.log(2) * max(n_bytes, 1)), nll_sum=nll_sum, n_bytes=n_bytes,
              n_units=int(units), nll_per_unit=nll_sum / max(units, 1.0))


def token_flops_per_unit(model_cfg, vocab_size: int, seq_len: int) -> dict[str, float]:
  """Matmul FLOPs per predicted unit of a token decoder (forward = 2 per multiply-add; training = 3x forward).

  Causal attention is counted at half: on average a query sees seq_len / 2 keys.
  """
  m = model_cfg
  E = m.head_dim or m.d_model // m.num_heads
  per_layer = m.d_model * E * (2 * m.num_heads + 2 * m.num_kv_heads) + 3 * m.d_model * m.d_ff
  vocab = -(-vocab_size // max(m.vocab_multiple, 1)) * max(m.vocab_multiple, 1)  # padded, as the model
  matmul_params = m.num_layers * per_layer + m.d_model * vocab  # the embedding lookup is free
  attention = m.num_layers * 2 * m.num_heads * E * (seq_len / 2)      # QK^T and AV, per query
  forward = 2 * (matmul_params + attention)
  return dict(forward=forward, train=3 * forward)


def transformer_flops_per_position(d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, d_ff: int,
                                   keys: float, head_dim: int = 0) -> float:
  """Forward matmul FLOPs (2 per multiply-add) of one position through a stack, attending to `keys` keys."""
  E = head_dim or d_model // num_heads
  per_layer = d_model * E * (2 * num_heads + 2 * num_kv_heads) + 3 * d_model * d_ff
  return 2 * num_layers * (per_layer + 2 * num_heads * E * keys)


def hierarchical_flops_per_byte(model_cfg, vocab_size: int, chunk_len: int, num_chunks: int, n_bytes: int,
                                n_chunks: int) -> dict[str, float]:
  """FLOPs per byte of the byte-hierarchical family by component, counting the positions that hold data:
  the encoder runs once per byte plus one slot per word, the backbone once per word, the decoder once per
  byte plus one context position per word (and unembeds each); attention at its average key count."""
  m, enc, dec = model_cfg, model_cfg.encoder, model_cfg.decoder
  L1 = chunk_len + 1
  positions = n_bytes + n_chunks
  encoder = positions * transformer_flops_per_position(enc.d_model, enc.num_layers, enc.num_heads, enc.num_heads,
                                                       enc.d_ff, keys=L1)
  backbone = n_chunks * (transformer_flops_per_position(m.d_model, m.num_layers, m.num_heads, m.num_kv_heads,
                                                        m.d_ff, keys=num_chunks / 2, head_dim=m.head_dim)
                         + 2 * enc.d_model * m.d_model + 2 * m.d_model * dec.d_model)
  decoder = positions * (transformer_flops_per_position(dec.d_model, dec.num_layers, dec.num_heads, dec.num_heads,
                                                        dec.d_ff, keys=L1 / 2) + 2 * dec.d_model * (vocab_size + 1))
  per_byte = {k: v / max(n_bytes, 1) for k, v in dict(encoder=encoder, backbone=backbone, decoder=decoder).items()}
  forward = sum(per_byte.values())
  return dict(forward=forward, train=3 * forward, **{f"{k}_forward": v for k, v in per_byte.items()})
