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

from lm.objectives.concept import contrastive_scores
from lm.objectives.token import token_nll


def make_eval_step(model: nn.Module) -> Callable:
  """(params, batch) -> sums: `nll_sum`, `count` of the main next-unit head; for concept models also the
  decoder NLL given the true concepts (`oracle_nll_sum`), the L2 distance of predicted to true concepts
  (`l2_sum`), in-batch contrastive hits (`contrastive_correct`) and `chunks`."""
  concept = getattr(model, "concept_dim", None) is not None

  def eval_step(params, batch):
    outputs = model.apply({"params": params}, batch, with_heads=False, **({"oracle": True} if concept else {}))
    mask = batch["loss_mask"].astype(jnp.float32)
    nll, _ = token_nll(outputs.logits, batch["targets"])
    sums = dict(nll_sum=jnp.sum(nll * mask), count=jnp.sum(mask))
    if concept:
      oracle, _ = token_nll(outputs.aux["recon_logits"], batch["targets"])
      pred, true = outputs.aux["concept_pred"], outputs.aux["concept_target"]
      chunk_mask = batch["chunk_mask"].astype(jnp.float32)
      _, correct, chunks = contrastive_scores(pred, true, chunk_mask, 1.0, "batch")
      sums.update(oracle_nll_sum=jnp.sum(oracle * mask), contrastive_correct=correct, chunks=chunks,
                  l2_sum=jnp.sum(jnp.sqrt(jnp.sum(jnp.square(pred - true), axis=-1)) * chunk_mask))
    return sums

  return eval_step


def evaluate(eval_step: Callable, params, batches: Iterable, put: Callable = lambda b: b) -> dict:
  """`batches` yields (host batch, n_bytes); `put` places a host batch on the mesh."""
  n_bytes, pending = 0, []
  for batch, nb in batches:
    pending.append(eval_step(params, put(batch)))  # dispatch all before reading any back
    n_bytes += int(nb)
  sums: dict[str, float] = {}
  for step_sums in jax.device_get(pending):
    for k, v in step_sums.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  nll_sum, units = sums.get("nll_sum", 0.0), sums.get("count", 0.0)
  out = dict(bpb=nll_sum / (math.log(2) * max(n_bytes, 1)), nll_sum=nll_sum, n_bytes=n_bytes,
             n_units=int(units), nll_per_unit=nll_sum / max(units, 1.0))
  if "oracle_nll_sum" in sums:
    chunks = max(sums["chunks"], 1.0)
    out.update(oracle_bpb=sums["oracle_nll_sum"] / (math.log(2) * max(n_bytes, 1)), l2=sums["l2_sum"] / chunks,
               contrastive_accuracy=sums["contrastive_correct"] / chunks, n_chunks=int(sums["chunks"]))
  return out


def _padded(vocab_size: int, multiple: int) -> int:
  return -(-vocab_size // max(multiple, 1)) * max(multiple, 1)  # the model pads its vocabulary the same way


def transformer_flops_per_position(d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, d_ff: int,
                                   keys: float, head_dim: int = 0) -> float:
  """Forward matmul FLOPs (2 per multiply-add) of one position through a stack, attending to `keys` keys."""
  E = head_dim or d_model // num_heads
  per_layer = d_model * E * (2 * num_heads + 2 * num_kv_heads) + 3 * d_model * d_ff
  return 2 * num_layers * (per_layer + 2 * num_heads * E * keys)


def head_flops_per_unit(model_cfg, vocab_size: int, seq_len: int, heads: tuple) -> float:
  """Forward FLOPs per unit of the auxiliary heads (`lm/models/heads.py`), which run in training only."""
  m = model_cfg
  D, V = m.d_model, _padded(vocab_size, m.vocab_multiple)
  block = transformer_flops_per_position(D, 1, m.num_heads, m.num_kv_heads, m.d_ff, keys=seq_len / 2,
                                         head_dim=m.head_dim)
  unembed = 2 * D * V
  total = 0.0
  for kind, options in heads:
    o = dict(options)
    if kind == "mtp":
      total += (o.get("n", 4) - 1) * (block + unembed)
    elif kind == "dsmtp":
      total += o.get("depth", 1) * (block + 2 * 2 * D * D + unembed)
    elif kind == "top":
      total += unembed
    elif kind == "ftp":
      J, P, layers = o.get("n", 4), o.get("pseudo", 4), o.get("layers", 1)
      per_layer = (2 * 4 * D * D * J + 2 * D * J * J              # self-attention: projections, QK^T + AV (causal)
                   + 2 * 2 * D * D * (J + P) + 2 * 2 * D * J * P    # cross-attention to the pseudo-sequence
                   + 2 * 2 * D * m.d_ff * J)                        # MLP
      total += 2 * D * P * D + layers * per_layer + J * unembed
    else:
      raise ValueError(f"no FLOPs formula for head {kind!r}; add one to head_flops_per_unit")
  return total


def token_flops_per_unit(model_cfg, vocab_size: int, seq_len: int, heads: tuple = ()) -> dict[str, float]:
  """Matmul FLOPs per predicted unit of a token decoder (forward = 2 per multiply-add; training = 3x forward,
  counting the auxiliary heads' forward too). Causal attention is counted at half: on average a query sees
  seq_len / 2 keys. Heads that take layers from the trunk (`give_up_layers`) shorten it."""
  m = model_cfg
  trunk = m.num_layers - sum(dict(o).get("give_up_layers", 0) for _, o in heads)
  forward = transformer_flops_per_position(m.d_model, trunk, m.num_heads, m.num_kv_heads, m.d_ff,
                                           keys=seq_len / 2, head_dim=m.head_dim)
  forward += 2 * m.d_model * _padded(vocab_size, m.vocab_multiple)  # the embedding lookup is free
  return dict(forward=forward, train=3 * (forward + head_flops_per_unit(m, vocab_size, seq_len, heads)))


def chunk_flops_per_byte(model_cfg, vocab_size: int, chunk_len: int, num_chunks: int, n_bytes: float,
                         n_units: float, n_chunks: float, decoder_passes: int = 1,
                         with_encoder: bool = True) -> dict[str, float]:
  """FLOPs per byte of a chunked family (byte-hierarchical, concept) by component, counting the positions that
  hold data: the encoder runs once per unit plus one slot per chunk, the backbone once per chunk, the decoder
  once per unit plus one context position per chunk (and unembeds each), attention at its average key count.
  `decoder_passes` counts training's extra decoder pass (concept reconstruction); the concept family's small
  projections in and out of concept space are counted with the backbone."""
  m, enc, dec = model_cfg, model_cfg.encoder, model_cfg.decoder
  L1 = chunk_len + 1
  positions = n_units + n_chunks
  encoder = positions * transformer_flops_per_position(enc.d_model, enc.num_layers, enc.num_heads, enc.num_heads,
                                                       enc.d_ff, keys=L1) if with_encoder else 0.0
  K = (m.get("concept_dim", 0) or m.d_model) if m.family == "concept" else 0
  # hierarchical: word -> backbone -> decoder context; concept: encoder -> K -> backbone -> K -> decoder context
  projections = (2 * enc.d_model * m.d_model + 2 * m.d_model * dec.d_model) if not K else \
      (2 * enc.d_model * K * with_encoder + 2 * K * m.d_model + 2 * m.d_model * K + 2 * K * dec.d_model)
  backbone = n_chunks * (transformer_flops_per_position(m.d_model, m.num_layers, m.num_heads, m.num_kv_heads,
                                                        m.d_ff, keys=num_chunks / 2, head_dim=m.head_dim)
                         + projections)
  decoder = positions * (transformer_flops_per_position(dec.d_model, dec.num_layers, dec.num_heads, dec.num_heads,
                                                        dec.d_ff, keys=L1 / 2)
                         + 2 * dec.d_model * _padded(vocab_size + 1, m.vocab_multiple))
  per_byte = {k: v / max(n_bytes, 1) for k, v in dict(encoder=encoder, backbone=backbone, decoder=decoder).items()}
  forward = sum(per_byte.values())
  return dict(forward=forward, train=3 * (forward + (decoder_passes - 1) * per_byte["decoder"]),
              **{f"{k}_forward": v for k, v in per_byte.items()})
