"""Shared building blocks: RMSNorm, RoPE, attention (GQA, packed segments, KV cache), SwiGLU, embeddings.

Shape letters used in names across `lm/models`:
  B batch, T query length, S key length, C chunks, L units per chunk, D model width,
  H query heads, K key/value heads, G = H // K, E head width, F MLP width, V vocabulary,
  N = B * T flattened rows.

Every parameter is declared with logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`,
`vocab`, `layers`); only `lm/parallel.py` maps them onto a device mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array
Dtype = Any

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Dtype:
  return DTYPES[name]


def _init(init: Callable, *names: str | None) -> Callable:
  return nn.with_logical_partitioning(init, names)


def constrain(x: Array, names: tuple[str | None, ...]) -> Array:
  """Activation sharding hint; a no-op outside a mesh with logical-axis rules."""
  return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019): x / rms(x) * scale, statistics in float32."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    scale_D = self.param("scale", _init(nn.initializers.ones, "embed"), (x_BxTxD.shape[-1],),
                         self.param_dtype)
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    scale = scale_D.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (x * scale).astype(self.dtype)


def rope(x_BxTxHxE: Array, positions_BxT: Array, base: float = 10_000.0) -> Array:
  """Rotary position embedding (Su et al. 2021), rotating the two halves of each head."""
  half = x_BxTxHxE.shape[-1] // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxTxE2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
  sin = jnp.sin(angle_BxTxE2)[:, :, None, :]
  cos = jnp.cos(angle_BxTxE2)[:, :, None, :]
  x = x_BxTxHxE.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxE.dtype)


def attention_mask(q_segment_BxT: Array | None, kv_segment_BxS: Array | None,
                   q_pos_BxT: Array, kv_pos_BxS: Array, causal: bool) -> Array:
  """Boolean [B, 1, T, S]: same packed segment (segment 0 is padding) and, if causal, key not after query."""
  mask = jnp.ones((q_pos_BxT.shape[0], q_pos_BxT.shape[1], kv_pos_BxS.shape[1]), dtype=bool)
  if q_segment_BxT is not None:
    mask &= q_segment_BxT[:, :, None] == kv_segment_BxS[:, None, :]
    mask &= kv_segment_BxS[:, None, :] != 0
  if causal:
    mask &= kv_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None]
  return mask[:, None, :, :]


def dot_product_attention(q_BxTxHxE: Array, k_BxSxKxE: Array, v_BxSxKxE: Array, mask_Bx1xTxS: Array,
                          implementation: str | None = None) -> Array:
  """The one attention kernel every family goes through (GQA when K < H).

  Built on `jax.nn.dot_product_attention`, so `implementation="cudnn"` selects the fused flash kernel on
  GPU without touching model code. Rows whose mask is all False (padding) return zeros.
  """
  out = jax.nn.dot_product_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask=mask_Bx1xTxS,
                                     implementation=implementation)
  any_key_BxTx1x1 = jnp.any(mask_Bx1xTxS, axis=-1)[:, 0, :, None, None]
  return jnp.where(any_key_BxTx1x1, out, 0).astype(q_BxTxHxE.dtype)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static, hashable model hyper-parameters (built from `config.model`)."""
  vocab_size: int              # the tokenizer's; tables are padded to a multiple of `vocab_multiple`
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  d_ff: int = 512
  head_dim: int = 0            # 0: d_model // num_heads
  rope_base: float = 10_000.0
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  scan_layers: bool = True
  scan_unroll: int = 1         # 1: rolled loop; >= num_layers: fully unrolled
  remat_policy: str = "none"   # none | full | dots | comma-separated checkpoint names to save
  attention_impl: str = "xla"  # xla | cudnn
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02
  vocab_multiple: int = 8      # so `tensor` can split the vocabulary; padded logits are masked out

  @property
  def padded_vocab(self) -> int:
    m = max(self.vocab_multiple, 1)
    return -(-self.vocab_size // m) * m

  @property
  def head_width(self) -> int:
    return self.head_dim or self.d_model // self.num_heads


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE; `decode=True` reads and appends to a KV cache."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, segment_ids_BxT: Array | None) -> Array:
    cfg = self.cfg
    H, K, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_width
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)

    def proj(name, shape, names, equation, x):
      # Explicit params + einsum (not DenseGeneral, whose init reshapes and drops the logical axes).
      kernel = self.param(name, _init(init, *names), shape, pdtype)
      return jnp.einsum(equation, x, kernel.astype(dtype))

    D = x_BxTxD.shape[-1]
    q_BxTxHxE = proj("query", (D, H, E), ("embed", "heads", "head_dim"), "btd,dhe->bthe", x_BxTxD)
    k_BxTxKxE = proj("key", (D, K, E), ("embed", "kv_heads", "head_dim"), "btd,dke->btke", x_BxTxD)
    v_BxTxKxE = proj("value", (D, K, E), ("embed", "kv_heads", "head_dim"), "btd,dke->btke", x_BxTxD)
    q_BxTxHxE = rope(q_BxTxHxE, positions_BxT, cfg.rope_base)
    k_BxTxKxE = rope(k_BxTxKxE, positions_BxT, cfg.rope_base)

    if self.decode:
      k_BxSxKxE, v_BxSxKxE, kv_pos_BxS, kv_seg_BxS = self._update_cache(k_BxTxKxE, v_BxTxKxE)
      q_seg_BxT = jnp.ones_like(positions_BxT)
    else:
      k_BxSxKxE, v_BxSxKxE, kv_pos_BxS = k_BxTxKxE, v_BxTxKxE, positions_BxT
      q_seg_BxT = kv_seg_BxS = segment_ids_BxT
    mask = attention_mask(q_seg_BxT, kv_seg_BxS, positions_BxT, kv_pos_BxS, self.causal)
    out_BxTxHxE = dot_product_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask, cfg.attention_impl)
    out_BxTxHxE = checkpoint_name(out_BxTxHxE, "attn_out")
    return proj("out", (H, E, cfg.d_model), ("heads", "head_dim", "embed"), "bthe,hed->btd",
                out_BxTxHxE.astype(dtype))

  def _update_cache(self, k_BxTxKxE: Array, v_BxTxKxE: Array):
    """Write this call's keys/values at the cache index; the cache length S is fixed at init."""
    is_init = not self.has_variable("cache", "key")
    key = self.variable("cache", "key", jnp.zeros, k_BxTxKxE.shape, k_BxTxKxE.dtype)
    value = self.variable("cache", "value", jnp.zeros, v_BxTxKxE.shape, v_BxTxKxE.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    B, T = k_BxTxKxE.shape[:2]
    S = key.value.shape[1]
    if not is_init:
      start = index.value
      key.value = jax.lax.dynamic_update_slice(key.value, k_BxTxKxE, (0, start, 0, 0))
      value.value = jax.lax.dynamic_update_slice(value.value, v_BxTxKxE, (0, start, 0, 0))
      index.value = start + T
    kv_pos_BxS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    kv_seg_BxS = (kv_pos_BxS < index.value).astype(jnp.int32)  # unwritten slots act as padding
    return key.value, value.value, kv_pos_BxS, kv_seg_BxS


class SwiGLU(nn.Module):
  """Gated MLP (Shazeer 2020): wo(silu(wi_0 x) * wi_1 x)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    # Rows flattened to [B*T, D]: with 2-D matmuls XLA:CPU takes the weight gradients straight from the
    # row-major activations instead of first transposing [B, T, F] ones (~5% of a CPU step); on TPU/GPU
    # the reshape is free. Rows stay batch-major, so the "batch" sharding of B carries over to B*T.
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])  # any leading axes ([B, T], [B, C, L]) -> N rows
    gate_NxF = nn.Dense(cfg.d_ff, use_bias=False, dtype=dtype, param_dtype=pdtype,
                        kernel_init=_init(init, "embed", "mlp"), name="wi_0")(x_NxD)
    up_NxF = nn.Dense(cfg.d_ff, use_bias=False, dtype=dtype, param_dtype=pdtype,
                      kernel_init=_init(init, "embed", "mlp"), name="wi_1")(x_NxD)
    # silu written out: jax.nn.silu's custom derivative fused with a transpose ran 5x slower on XLA:CPU.
    h_NxF = checkpoint_name(gate_NxF * jax.nn.sigmoid(gate_NxF) * up_NxF, "mlp_hidden")
    h_NxF = constrain(h_NxF, ("batch", "mlp"))
    out_NxD = nn.Dense(cfg.d_model, use_bias=False, dtype=dtype, param_dtype=pdtype,
                       kernel_init=_init(init, "mlp", "embed"), name="wo")(h_NxF)
    return out_NxD.reshape(*x_BxTxD.shape[:-1], cfg.d_model)


class Embedding(nn.Module):
  """Token embedding; `attend` gives tied-unembedding logits."""
  cfg: TransformerConfig

  def setup(self):
    # GPT-2 style: small rows, used unscaled both ways. Unit-variance rows with a 1/sqrt(D) tied head
    # gave each unit's own logit sqrt(D) at init (loss ~11 instead of ~ln V).
    self.table_VxD = self.param("embedding", _init(nn.initializers.normal(self.cfg.init_std), "vocab", "embed"),
                                (self.cfg.padded_vocab, self.cfg.d_model), dtype_of(self.cfg.param_dtype))

  def __call__(self, ids_BxT: Array) -> Array:
    return jnp.take(self.table_VxD, ids_BxT, axis=0).astype(dtype_of(self.cfg.dtype))

  def attend(self, x_BxTxD: Array) -> Array:
    return jnp.einsum("btd,vd->btv", x_BxTxD, self.table_VxD.astype(x_BxTxD.dtype))


class Unembed(nn.Module):
  """Untied output projection to the vocabulary."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    cfg = self.cfg
    return nn.Dense(cfg.padded_vocab, use_bias=False, dtype=dtype_of(cfg.dtype),
                    param_dtype=dtype_of(cfg.param_dtype),
                    kernel_init=_init(nn.initializers.normal(cfg.init_std), "embed", "vocab"),
                    name="kernel")(x_BxTxD)


def mask_padded_vocab(logits_BxTxV: Array, vocab_size: int) -> Array:
  """Padding entries of the vocabulary get a huge negative logit: zero probability, zero gradient."""
  if logits_BxTxV.shape[-1] == vocab_size:
    return logits_BxTxV
  real_V = jnp.arange(logits_BxTxV.shape[-1]) < vocab_size
  return jnp.where(real_V, logits_BxTxV, jnp.asarray(-1e9, logits_BxTxV.dtype))
