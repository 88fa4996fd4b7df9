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
