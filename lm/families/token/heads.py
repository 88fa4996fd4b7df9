"""Auxiliary prediction heads on a decoder trunk: MTP (parallel and sequential), TOP and FTP.

Each head is a module that reads the trunk's outputs and returns entries for `ModelOutputs.aux`; it lives in
its own parameter subtree (`mtp_head`, `dsmtp_head`, `top_head`, `ftp_head`), so evaluation, which uses the
next-unit head only, and export can drop it. Heads that predict units reuse the model's unembedding.

A head is requested by the objective that trains it (`lm.objectives.Head`: module class and options). Each
module here also gives its forward FLOPs per unit (`flops_per_unit(cfg, seq_len, **options)`), which the
token family adds to the training FLOPs.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models import flops
from lm.models.layers import Array, TransformerConfig, _init, constrain, dtype_of, make_norm, mask_padded_vocab
from lm.models.transformer import Block
from lm.objectives.base import TrunkOutputs  # noqa: F401  (what a head reads; re-exported)


def shift_left(x_BxT: Array, k: int, fill=0) -> Array:
  """x[:, t + k] at position t, `fill` past the end."""
  if k == 0:
    return x_BxT
  pad = jnp.full(x_BxT.shape[:1] + (k,) + x_BxT.shape[2:], fill, x_BxT.dtype)
  return jnp.concatenate([x_BxT[:, k:], pad], axis=1)


class MTPHead(nn.Module):
  """Multi-token prediction (Gloeckle et al. 2024, eq. 1): head k = 2..n is one transformer block on the
  shared trunk output, its own norm, and the shared unembedding, predicting the unit k steps ahead.
  Head 1 is the model's own next-unit head. `aux["mtp_logits"]`: [n - 1, B, T, V]."""
  cfg: TransformerConfig
  n: int = 4
  decode: bool = False

  @nn.compact
  def __call__(self, trunk: TrunkOutputs) -> dict[str, Array]:
    out = []
    for k in range(2, self.n + 1):
      y_BxTxD = Block(self.cfg, causal=True, decode=self.decode, name=f"block_{k}")(
          trunk.x_BxTxD, trunk.positions_BxT, trunk.segment_ids_BxT)
      out.append(trunk.unembed(make_norm(self.cfg, f"norm_{k}")(y_BxTxD)))
    return {"mtp_logits": jnp.stack(out)}

  @staticmethod
  def flops_per_unit(cfg: TransformerConfig, seq_len: int, n: int = 4) -> float:
    return (n - 1) * (flops.block_per_position(cfg, seq_len / 2) + flops.unembed_per_position(cfg))


class DSMTPHead(nn.Module):
  """Sequential MTP modules (DeepSeek-V3 report §2.2, eqs. 21-23): depth k combines RMSNorm(h^{k-1}_t) with
  RMSNorm(Emb(unit t+k)) through a projection M_k, runs one transformer block, and predicts unit t+k+1
  through the shared unembedding. h^0 is the trunk output. `aux["dsmtp_logits"]`: [depth, B, T, V]."""
  cfg: TransformerConfig
  depth: int = 1
  decode: bool = False

  @nn.compact
  def __call__(self, trunk: TrunkOutputs) -> dict[str, Array]:
    cfg = self.cfg
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h_BxTxD = trunk.x_BxTxD
    out = []
    for k in range(1, self.depth + 1):
      ahead_BxT = trunk.next_inputs_BxT if k == 1 and trunk.next_inputs_BxT is not None else \
          shift_left(trunk.inputs_BxT, k)
      e_BxTxD = trunk.embed(ahead_BxT)
      both_BxTx2D = jnp.concatenate([make_norm(cfg, f"h_norm_{k}")(h_BxTxD), make_norm(cfg, f"e_norm_{k}")(e_BxTxD)], -1)
      proj = nn.Dense(cfg.d_model, use_bias=False, dtype=dtype, param_dtype=pdtype, name=f"proj_{k}",
                      kernel_init=_init(nn.initializers.normal(cfg.init_std), None, "embed"))
      h_BxTxD = Block(cfg, causal=True, decode=self.decode, name=f"block_{k}")(
          proj(both_BxTx2D), trunk.positions_BxT, trunk.segment_ids_BxT)
      out.append(trunk.unembed(make_norm(cfg, f"out_norm_{k}")(h_BxTxD)))
    return {"dsmtp_logits": jnp.stack(out)}

  @staticmethod
  def flops_per_unit(cfg: TransformerConfig, seq_len: int, depth: int = 1) -> float:
    D = cfg.d_model
    return depth * (flops.block_per_position(cfg, seq_len / 2) + 2 * 2 * D * D + flops.unembed_per_position(cfg))


class TOPHead(nn.Module):
  """Token order prediction (Zuhri et al. 2025): one extra unembedding of the final hidden state whose
  scores rank the vocabulary by how soon each unit occurs next. `aux["top_logits"]`: [B, T, V]."""
  cfg: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, trunk: TrunkOutputs) -> dict[str, Array]:
    cfg = self.cfg
    kernel_DxV = self.param("kernel", _init(nn.initializers.normal(cfg.init_std), "embed", "vocab"),
                            (cfg.d_model, cfg.padded_vocab), dtype_of(cfg.param_dtype))
    h_BxTxD = trunk.h_BxTxD
    logits_BxTxV = jnp.einsum("btd,dv->btv", h_BxTxD, kernel_DxV.astype(h_BxTxD.dtype))
    logits_BxTxV = mask_padded_vocab(logits_BxTxV.astype(jnp.float32), cfg.vocab_size)
    return {"top_logits": constrain(logits_BxTxV, ("batch", "length", "vocab"))}

  @staticmethod
  def flops_per_unit(cfg: TransformerConfig, seq_len: int) -> float:  # pylint: disable=unused-argument
    return flops.unembed_per_position(cfg)


def _heads_attention(q_NxJxD: Array, kv_NxSxD: Array, mask_JxS: Array | None, num_heads: int, names: str,
                     module: nn.Module, init) -> Array:
  """Plain multi-head attention over tiny sequences (FTP's decoder); no RoPE, no cache."""
  D = q_NxJxD.shape[-1]
  E = D // num_heads
  dtype = q_NxJxD.dtype

  def proj(name, x, eq, shape, axes):
    return jnp.einsum(eq, x, module.param(f"{names}_{name}", _init(init, *axes), shape).astype(dtype))
  q = proj("query", q_NxJxD, "njd,dhe->njhe", (D, num_heads, E), ("embed", "heads", "head_dim"))
  k = proj("key", kv_NxSxD, "nsd,dhe->nshe", (D, num_heads, E), ("embed", "heads", "head_dim"))
  v = proj("value", kv_NxSxD, "nsd,dhe->nshe", (D, num_heads, E), ("embed", "heads", "head_dim"))
  scores = jnp.einsum("njhe,nshe->nhjs", q, k).astype(jnp.float32) / jnp.sqrt(E).astype(jnp.float32)
  if mask_JxS is not None:
    scores = jnp.where(mask_JxS[None, None], scores, -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("nhjs,nshe->njhe", probs, v)
  return proj("out", out, "njhe,hed->njd", (num_heads, E, D), ("heads", "head_dim", "embed"))


class FTPHead(nn.Module):
  """Future token prediction (Walker 2024): the final hidden state at t is projected into a pseudo-sequence
  of `pseudo` vectors; a small decoder of `layers` blocks (causal self-attention over its own steps,
  cross-attention to the pseudo-sequence, MLP), fed a start vector then the true units t+1..t+n-1, predicts
  units t+1..t+n through the shared unembedding. `aux["ftp_logits"]`: [n, B, T, V]."""
  cfg: TransformerConfig
  n: int = 4
  pseudo: int = 4
  layers: int = 1
  num_heads: int = 4
  decode: bool = False

  @nn.compact
  def __call__(self, trunk: TrunkOutputs) -> dict[str, Array]:
    cfg = self.cfg
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    B, T, D = trunk.h_BxTxD.shape
    J, P = self.n, self.pseudo
    heads = self.num_heads if D % self.num_heads == 0 else 1
    dense = lambda features, name, axes: nn.Dense(  # noqa: E731
        features, use_bias=False, dtype=dtype, param_dtype=pdtype, name=name, kernel_init=_init(init, *axes))
    pseudo_NxPxD = dense(P * D, "to_pseudo", ("embed", "mlp"))(trunk.h_BxTxD.reshape(B * T, D))
    pseudo_NxPxD = pseudo_NxPxD.reshape(B * T, P, D)
    # Decoder inputs at step j: a learned start vector (j = 0), else the embedding of unit t + j.
    future_BxTxJm1 = jnp.stack([shift_left(trunk.inputs_BxT, j) for j in range(1, J)], axis=-1) \
        if J > 1 else jnp.zeros((B, T, 0), jnp.int32)
    emb_NxJm1xD = trunk.embed(future_BxTxJm1.reshape(B * T, J - 1)) if J > 1 else jnp.zeros((B * T, 0, D), dtype)
    start_D = self.param("start", _init(init, "embed"), (D,), pdtype).astype(dtype)
    step_JxD = self.param("step_embedding", _init(init, None, "embed"), (J, D), pdtype).astype(dtype)
    y_NxJxD = jnp.concatenate([jnp.broadcast_to(start_D, (B * T, 1, D)), emb_NxJm1xD.astype(dtype)], axis=1)
    y_NxJxD = y_NxJxD + step_JxD[None]
    causal_JxJ = jnp.tril(jnp.ones((J, J), bool))
    for i in range(self.layers):
      y_NxJxD = y_NxJxD + _heads_attention(make_norm(cfg, f"self_norm_{i}")(y_NxJxD), make_norm(cfg, f"self_kv_norm_{i}")(y_NxJxD),
                                           causal_JxJ, heads, f"self_{i}", self, init)
      y_NxJxD = y_NxJxD + _heads_attention(make_norm(cfg, f"cross_norm_{i}")(y_NxJxD), pseudo_NxPxD, None, heads,
                                           f"cross_{i}", self, init)
      h = make_norm(cfg, f"mlp_norm_{i}")(y_NxJxD)
      h = dense(cfg.d_ff, f"mlp_in_{i}", ("embed", "mlp"))(h)
      y_NxJxD = y_NxJxD + dense(D, f"mlp_out_{i}", ("mlp", "embed"))(jax.nn.gelu(h))
    logits_NxJxV = trunk.unembed(make_norm(cfg, "out_norm")(y_NxJxD))
    return {"ftp_logits": jnp.moveaxis(logits_NxJxV.reshape(B, T, J, -1), 2, 0)}

  @staticmethod
  def flops_per_unit(cfg: TransformerConfig, seq_len: int, n: int = 4, pseudo: int = 4,  # pylint: disable=unused-argument
                     layers: int = 1, num_heads: int = 4) -> float:
    D, J, P = cfg.d_model, n, pseudo
    per_layer = (2 * 4 * D * D * J + 2 * D * J * J              # self-attention: projections, QK^T + AV (causal)
                 + 2 * 2 * D * D * (J + P) + 2 * 2 * D * J * P    # cross-attention to the pseudo-sequence
                 + 2 * 2 * D * cfg.d_ff * J)                      # MLP
    return 2 * D * P * D + layers * per_layer + J * flops.unembed_per_position(cfg)
