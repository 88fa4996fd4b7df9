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

from lm.models import kernels
from lm.models.rope import inverse_frequencies, rope  # noqa: F401  (rope: part of this module's API)

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
  use_bias: bool = False  # + a learned shift (GPT-2's LayerNorm)
  axis_name: str = "embed"  # logical axis of the normalised dimension (`head_dim` for Qwen3's QK-norm)
  centre = False  # LayerNorm subtracts the mean first

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    scale_D = self.param("scale", _init(nn.initializers.ones, self.axis_name), (x_BxTxD.shape[-1],),
                         self.param_dtype)
    x = x_BxTxD.astype(jnp.float32)
    if self.centre:
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    lead = (1,) * (x.ndim - 1)
    x = x * scale_D.astype(jnp.float32).reshape(lead + (-1,))
    if self.use_bias:
      bias_D = self.param("bias", _init(nn.initializers.zeros, self.axis_name), (x.shape[-1],), self.param_dtype)
      x = x + bias_D.astype(jnp.float32).reshape(lead + (-1,))
    return x.astype(self.dtype)


class LayerNorm(RMSNorm):
  """LayerNorm: (x - mean) / std * scale (+ bias with `use_bias`, GPT-2's), in float32."""
  centre = True


def make_norm(cfg: "TransformerConfig", name: str | None = None) -> nn.Module:
  """The configured normalisation (`cfg.norm`: rms | layer), with a `scale` (and, with `cfg.norm_bias`, a `bias`)."""
  cls = LayerNorm if cfg.norm == "layer" else RMSNorm
  return cls(cfg.norm_eps, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), cfg.norm_bias, name=name)


def attention_mask(q_segment_BxT: Array | None, kv_segment_BxS: Array | None,
                   q_pos_BxT: Array, kv_pos_BxS: Array, causal: bool, window: int = 0) -> Array:
  """Boolean [B, 1, T, S]: same packed segment (segment 0 is padding), if causal key not after query, and with
  `window` > 0 key less than `window` positions before the query (Mistral's sliding window)."""
  mask = jnp.ones((q_pos_BxT.shape[0], q_pos_BxT.shape[1], kv_pos_BxS.shape[1]), dtype=bool)
  if q_segment_BxT is not None:
    mask &= q_segment_BxT[:, :, None] == kv_segment_BxS[:, None, :]
    mask &= kv_segment_BxS[:, None, :] != 0
  if causal:
    mask &= kv_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None]
  if window > 0:
    mask &= q_pos_BxT[:, :, None] - kv_pos_BxS[:, None, :] < window
  return mask[:, None, :, :]


def dot_product_attention(q_BxTxHxE: Array, k_BxSxKxE: Array, v_BxSxKxE: Array, mask_Bx1xTxS: Array,
                          implementation: str | None = None) -> Array:
  """Masked attention in XLA ops (GQA when K < H): the reference the fused kernels are tested against.

  `implementation="cudnn"` goes through `jax.nn.dot_product_attention` (cuDNN on GPU, with the mask as a
  dense bias: no causal block skipping). Otherwise it is written out: scores and softmax in float32, masked probabilities set to exactly zero,
  so a row with no allowed key (padding) returns zeros. On XLA:CPU this form's forward + backward ran
  1.6x faster than `jax.nn.dot_product_attention`'s XLA path at T=64 (which adds a bias, a second `where`
  over the output for empty rows, and a grouped layout even without GQA).
  """
  if implementation == "cudnn":
    out = jax.nn.dot_product_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask=mask_Bx1xTxS,
                                       implementation=implementation)
    any_key_BxTx1x1 = jnp.any(mask_Bx1xTxS, axis=-1)[:, 0, :, None, None]
    return jnp.where(any_key_BxTx1x1, out, 0).astype(q_BxTxHxE.dtype)
  B, T, H, E = q_BxTxHxE.shape
  K = k_BxSxKxE.shape[2]
  q_BxTxHxE = q_BxTxHxE * jnp.asarray(E ** -0.5, q_BxTxHxE.dtype)
  if K == H:
    s_BxHxTxS = jnp.einsum("bthe,bshe->bhts", q_BxTxHxE, k_BxSxKxE, preferred_element_type=jnp.float32)
  else:  # grouped: query head h reads key/value head h // G, without repeating keys in memory
    q_BxTxKxGxE = q_BxTxHxE.reshape(B, T, K, H // K, E)
    s_BxHxTxS = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE, k_BxSxKxE,
                           preferred_element_type=jnp.float32).reshape(B, H, T, -1)
  s_BxHxTxS = jnp.where(mask_Bx1xTxS, s_BxHxTxS, jnp.float32(-1e30))
  p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1)
  p_BxHxTxS = jnp.where(mask_Bx1xTxS, p_BxHxTxS, 0.0).astype(v_BxSxKxE.dtype)
  if K == H:
    return jnp.einsum("bhts,bshe->bthe", p_BxHxTxS, v_BxSxKxE)
  p_BxKxGxTxS = p_BxHxTxS.reshape(B, K, H // K, T, -1)
  return jnp.einsum("bkgts,bske->btkge", p_BxKxGxTxS, v_BxSxKxE).reshape(B, T, H, E)


FUSED_KERNELS = ("splash", "pallas_gpu")


def attention(q_BxTxHxE: Array, k_BxSxKxE: Array, v_BxSxKxE: Array, q_segment_BxT: Array | None,
              kv_segment_BxS: Array | None, q_pos_BxT: Array, kv_pos_BxS: Array, causal: bool,
              cfg: "TransformerConfig") -> Array:
  """The one attention entry point of every family: `cfg.attention_impl` picks the kernel.

  `xla` (and `cudnn`) build the [B, 1, T, S] mask and go through `dot_product_attention`; `splash` (TPU)
  and `pallas_gpu` (GPU) are fused kernels taking segment ids (`lm.models.kernels`), never materialising the
  scores; `auto` was resolved per backend before the model was built. A fused kernel falls back to `xla`
  for shapes it cannot tile (splash: lengths not a multiple of 128, e.g. a HAT encoder's short chunks), and
  is never used with a KV cache (decoding attends one query to the cache: no scores to fuse) nor with a sliding
  window (`cfg.sliding_window`: the XLA path masks it).
  """
  impl = cfg.attention_impl
  T, S = q_BxTxHxE.shape[1], k_BxSxKxE.shape[1]
  if (impl in FUSED_KERNELS and T == S and not cfg.sliding_window
      and (impl != "splash" or kernels.splash_fits(T, S))):
    return kernels.fused_attention(impl, q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_segment_BxT, kv_segment_BxS,
                                   causal, cfg.attention_block_q, cfg.attention_block_kv, cfg.attention_interpret)
  mask = attention_mask(q_segment_BxT, kv_segment_BxS, q_pos_BxT, kv_pos_BxS, causal, cfg.sliding_window)
  return dot_product_attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask, "cudnn" if impl == "cudnn" else None)


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
  attention_impl: str = "xla"  # xla | cudnn | splash | pallas_gpu (`attention` above)
  attention_block_q: int = 512   # fused kernels' query / key block lengths (capped at the sequence)
  attention_block_kv: int = 512
  attention_interpret: bool = False  # fused kernels in Pallas' interpreter (any backend; for tests)
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02
  vocab_multiple: int = 8      # so `tensor` can split the vocabulary; padded logits are masked out
  logits_chunk: int = 0        # > 0: the main head's loss runs over tiles of this many positions (lazy logits)
  mlp: str = "swiglu"          # swiglu | gelu | gelu_tanh (GPT-2's: wo(gelu(wi x)), d_ff wide)
  positions: str = "rope"      # rope | learned (GPT-2's absolute table, max_positions rows)
  norm: str = "rms"            # rms | layer (LayerNorm)
  max_positions: int = 0       # rows of the learned table (the family sets it from data.seq_len)
  # Options real checkpoints need (docs/interop.md); all off by default.
  norm_bias: bool = False      # LayerNorm with a bias (GPT-2)
  qkv_bias: bool = False       # biases on the query/key/value projections (Qwen2, GPT-2)
  out_bias: bool = False       # bias on the attention output projection (GPT-2)
  mlp_bias: bool = False       # biases on the MLP's matrices (GPT-2)
  qk_norm: bool = False        # RMSNorm of each query and key head before RoPE (Qwen3)
  sliding_window: int = 0      # > 0: a query sees keys less than this many positions back (Mistral)
  rope_scaling: str = "none"   # none | llama3 | linear (`rope.inverse_frequencies`)
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_positions: int = 8192

  @property
  def padded_vocab(self) -> int:
    m = max(self.vocab_multiple, 1)
    return -(-self.vocab_size // m) * m

  @property
  def head_width(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def inverse_frequencies(self):
    """RoPE's per-pair frequencies; None for unscaled RoPE (computed from `rope_base` in the graph)."""
    if self.rope_scaling == "none":
      return None
    return inverse_frequencies(self.head_width, self.rope_base, self.rope_scaling, self.rope_factor,
                               self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_positions)


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

    *lead, D = x_BxTxD.shape
    x_NxD = x_BxTxD.reshape(-1, D)

    def proj(name, shape, names):
      # Explicit params (DenseGeneral's init reshapes and drops the logical axes), applied as one 2-D
      # matmul on row-major [B*T, D] rows: its output reshapes to heads for free, where the 3-D einsum's
      # output needed a copy before RoPE on XLA:CPU. Merging heads with head_dim keeps a "heads" sharding.
      kernel = self.param(name, _init(init, *names), shape, pdtype)
      out = jnp.dot(x_NxD, kernel.reshape(D, -1).astype(dtype)).reshape(*lead, shape[1], shape[2])
      if cfg.qkv_bias:
        bias = self.param(f"{name}_bias", _init(nn.initializers.zeros, *names[1:]), shape[1:], pdtype)
        out = out + bias.astype(dtype).reshape((1,) * len(lead) + shape[1:])
      return out

    q_BxTxHxE = proj("query", (D, H, E), ("embed", "heads", "head_dim"))
    k_BxTxKxE = proj("key", (D, K, E), ("embed", "kv_heads", "head_dim"))
    v_BxTxKxE = proj("value", (D, K, E), ("embed", "kv_heads", "head_dim"))
    if cfg.qk_norm:
      head_norm = lambda name: RMSNorm(cfg.norm_eps, dtype, pdtype, axis_name="head_dim", name=name)  # noqa: E731
      q_BxTxHxE, k_BxTxKxE = head_norm("query_norm")(q_BxTxHxE), head_norm("key_norm")(k_BxTxKxE)
    if cfg.positions == "rope":
      inv_freq = cfg.inverse_frequencies()
      q_BxTxHxE = rope(q_BxTxHxE, positions_BxT, cfg.rope_base, inv_freq)
      k_BxTxKxE = rope(k_BxTxKxE, positions_BxT, cfg.rope_base, inv_freq)

    q_pos_BxT = positions_BxT
    if self.decode:  # masks in cache slots: a row's padding (segment 0, e.g. left-padded prompts) stays out
      q_seg_BxT = jnp.ones_like(positions_BxT) if segment_ids_BxT is None else segment_ids_BxT
      k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_seg_BxS = self._update_cache(k_BxTxKxE, v_BxTxKxE, q_seg_BxT)
    else:
      k_BxSxKxE, v_BxSxKxE, kv_pos_BxS = k_BxTxKxE, v_BxTxKxE, positions_BxT
      q_seg_BxT = kv_seg_BxS = segment_ids_BxT
    out_BxTxHxE = attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_seg_BxT, kv_seg_BxS, q_pos_BxT, kv_pos_BxS,
                            self.causal, cfg)
    out_BxTxHxE = checkpoint_name(out_BxTxHxE, "attn_out")
    kernel = self.param("out", _init(init, "heads", "head_dim", "embed"), (H, E, cfg.d_model), pdtype)
    out_NxD = jnp.dot(out_BxTxHxE.astype(dtype).reshape(-1, H * E), kernel.reshape(H * E, -1).astype(dtype))
    if cfg.out_bias:
      bias_D = self.param("out_bias", _init(nn.initializers.zeros, "embed"), (cfg.d_model,), pdtype)
      out_NxD = out_NxD + bias_D.astype(dtype)[None, :]
    return out_NxD.reshape(*lead, cfg.d_model)

  def _update_cache(self, k_BxTxKxE: Array, v_BxTxKxE: Array, segment_BxT: Array):
    """Write this call's keys/values (and segment ids: 0 marks a padded slot) at the cache index; the cache
    length S is fixed at init. Returns the cache and the query's and keys' slots (what causality is in)."""
    is_init = not self.has_variable("cache", "key")
    key = self.variable("cache", "key", jnp.zeros, k_BxTxKxE.shape, k_BxTxKxE.dtype)
    value = self.variable("cache", "value", jnp.zeros, v_BxTxKxE.shape, v_BxTxKxE.dtype)
    segment = self.variable("cache", "segment", jnp.zeros, segment_BxT.shape, jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    B, T = k_BxTxKxE.shape[:2]
    S = key.value.shape[1]
    start = index.value
    if not is_init:
      key.value = jax.lax.dynamic_update_slice(key.value, k_BxTxKxE, (0, start, 0, 0))
      value.value = jax.lax.dynamic_update_slice(value.value, v_BxTxKxE, (0, start, 0, 0))
      segment.value = jax.lax.dynamic_update_slice(segment.value, segment_BxT.astype(jnp.int32), (0, start))
      index.value = start + T
    kv_slot_BxS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    kv_seg_BxS = jnp.where(kv_slot_BxS < index.value, segment.value, 0)  # unwritten slots act as padding
    q_slot_BxT = start + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return key.value, value.value, q_slot_BxT, kv_slot_BxS, kv_seg_BxS


@jax.custom_vjp
def swish_gate(gate: Array, up: Array) -> Array:
  """silu(gate) * up, with a hand-written backward that recomputes the sigmoid.

  One elementwise pass each way: autodiff saves sigmoid(gate) and silu(gate) and XLA:CPU then runs the
  forward as three passes over [N, F] (sigmoid, x * sigmoid, * up) and the backward as several more.
  """
  return gate * jax.nn.sigmoid(gate) * up


def _swish_gate_fwd(gate, up):
  return swish_gate(gate, up), (gate, up)


def _swish_gate_bwd(res, g):
  gate, up = res
  sig = jax.nn.sigmoid(gate.astype(jnp.float32))
  gf, uf, g32 = gate.astype(jnp.float32), up.astype(jnp.float32), g.astype(jnp.float32)
  d_gate = g32 * uf * sig * (1.0 + gf * (1.0 - sig))
  d_up = g32 * gf * sig
  return d_gate.astype(gate.dtype), d_up.astype(up.dtype)


swish_gate.defvjp(_swish_gate_fwd, _swish_gate_bwd)


class MLP(nn.Module):
  """`cfg.mlp="swiglu"`: the gated MLP (Shazeer 2020), wo(silu(wi_0 x) * wi_1 x); `"gelu"`: wo(gelu(wi x))
  with exact (erf) GELU, as nanoGPT's `nn.GELU()`; `"gelu_tanh"`: the same with GPT-2's tanh approximation."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    cfg = self.cfg
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    dense = lambda features, axes, name: nn.Dense(  # noqa: E731
        features, use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=pdtype, kernel_init=_init(init, *axes),
        bias_init=_init(nn.initializers.zeros, axes[1]), name=name)
    # Rows flattened to [B*T, D]: with 2-D matmuls XLA:CPU takes the weight gradients straight from the
    # row-major activations instead of first transposing [B, T, F] ones (~5% of a CPU step); on TPU/GPU
    # the reshape is free. Rows stay batch-major, so the "batch" sharding of B carries over to B*T.
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])  # any leading axes ([B, T], [B, C, L]) -> N rows
    if cfg.mlp in ("gelu", "gelu_tanh"):
      h_NxF = jax.nn.gelu(dense(cfg.d_ff, ("embed", "mlp"), "wi")(x_NxD), approximate=cfg.mlp == "gelu_tanh")
    else:
      h_NxF = swish_gate(dense(cfg.d_ff, ("embed", "mlp"), "wi_0")(x_NxD),
                         dense(cfg.d_ff, ("embed", "mlp"), "wi_1")(x_NxD))
    h_NxF = constrain(checkpoint_name(h_NxF, "mlp_hidden"), ("batch", "mlp"))
    out_NxD = dense(cfg.d_model, ("mlp", "embed"), "wo")(h_NxF)
    return out_NxD.reshape(*x_BxTxD.shape[:-1], cfg.d_model)


class Embedding(nn.Module):
  """Token embedding; `attend` gives tied-unembedding logits."""
  cfg: TransformerConfig

  def setup(self):
    # GPT-2 style: small rows, used unscaled both ways. Unit-variance rows with a 1/sqrt(D) tied head
    # gave each unit's own logit sqrt(D) at init (loss ~11 instead of ~ln V).
    self.table_VxD = self.param("embedding", _init(nn.initializers.normal(self.cfg.init_std), "vocab", "embed"),
                                (self.cfg.padded_vocab, self.cfg.d_model), dtype_of(self.cfg.param_dtype))
    if self.cfg.positions == "learned":
      self.positions_PxD = self.param(
          "positions", _init(nn.initializers.normal(self.cfg.init_std), None, "embed"),
          (max(self.cfg.max_positions, 1), self.cfg.d_model), dtype_of(self.cfg.param_dtype))

  def __call__(self, ids_BxT: Array) -> Array:
    return jnp.take(self.table_VxD, ids_BxT, axis=0).astype(dtype_of(self.cfg.dtype))

  def add_positions(self, x_BxTxD: Array, positions_BxT: Array) -> Array:
    """+ the learned position vectors (`positions="learned"`); positions past the table reuse its last row."""
    if self.cfg.positions != "learned":
      return x_BxTxD
    return x_BxTxD + jnp.take(self.positions_PxD, positions_BxT, axis=0, mode="clip").astype(x_BxTxD.dtype)

  def attend(self, x_BxTxD: Array) -> Array:
    return jnp.einsum("btd,vd->btv", x_BxTxD, self.table_VxD.astype(x_BxTxD.dtype))

  def unembedding(self) -> Array:
    """The tied unembedding as a [D, V] matrix (for a loss that applies it tile by tile)."""
    return self.table_VxD.T


class _Matrix(nn.Module):
  """One parameter named `kernel`, returned as is (keeps `nn.Dense`'s parameter path `kernel/kernel`)."""
  shape: tuple[int, ...]
  names: tuple[str, ...]
  std: float
  param_dtype: Dtype

  @nn.compact
  def __call__(self) -> Array:
    return self.param("kernel", _init(nn.initializers.normal(self.std), *self.names), self.shape, self.param_dtype)


class Unembed(nn.Module):
  """Untied output projection to the vocabulary; called without input it returns its [D, V] matrix."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array | None = None) -> Array:
    cfg = self.cfg
    w_DxV = _Matrix((cfg.d_model, cfg.padded_vocab), ("embed", "vocab"), cfg.init_std, dtype_of(cfg.param_dtype),
                    name="kernel")()
    if x_BxTxD is None:
      return w_DxV
    dtype = dtype_of(cfg.dtype)
    return jnp.einsum("btd,dv->btv", x_BxTxD.astype(dtype), w_DxV.astype(dtype))


def mask_padded_vocab(logits_BxTxV: Array, vocab_size: int) -> Array:
  """Padding entries of the vocabulary get a huge negative logit: zero probability, zero gradient."""
  if logits_BxTxV.shape[-1] == vocab_size:
    return logits_BxTxV
  real_V = jnp.arange(logits_BxTxV.shape[-1]) < vocab_size
  return jnp.where(real_V, logits_BxTxV, jnp.asarray(-1e9, logits_BxTxV.dtype))
