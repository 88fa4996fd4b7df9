"""Fused attention kernels for packed rows: Pallas splash attention on TPU, Pallas (Triton) flash attention on
GPU. Model code never calls these directly: `lm.models.layers.attention` picks one per backend.

Both take segment ids, so documents packed into one row never attend to each other, and both apply causality
by index within the row. That equals the XLA reference's causality by position because every family packs
each document's units contiguously with positions increasing along it. Padding (segment 0) queries return
zeros, as in the reference, so the outputs and gradients match it everywhere, not only on real units.

Under a mesh the kernels run per shard (`shard_map`): rows split over `data` x `fsdp`, heads over `tensor`,
the whole sequence on each device (no context parallelism). With `interpret=True` they run in Pallas'
interpreter on any backend: how the tests prove their numerics on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Array = jax.Array

SPLASH_MIN_BLOCK = 128  # TPU lanes: splash blocks and the sequence must be multiples of this


def splash_fits(T: int, S: int) -> bool:
  return T % SPLASH_MIN_BLOCK == 0 and S % SPLASH_MIN_BLOCK == 0


def _block(size: int, want: int) -> int:
  """The largest block <= `want` that divides `size` in steps of the TPU lane width (or `size` itself)."""
  b = min(want, size)
  while b > SPLASH_MIN_BLOCK and size % b:
    b -= SPLASH_MIN_BLOCK
  return b if size % b == 0 else size


def _splash_local(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, seg_q_BxT, seg_kv_BxS, *, causal, block_q, block_kv,
                  interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  B, T, H, E = q_BxTxHxE.shape
  S = k_BxSxKxE.shape[1]
  bq, bkv = _block(T, block_q), _block(S, block_kv)
  one = sm.CausalMask((T, S)) if causal else sm.FullMask((T, S))
  kernel = sk.make_splash_mha(
      sm.MultiHeadMask([one] * H), head_shards=1, q_seq_shards=1, interpret=interpret,
      block_sizes=sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv))
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, T, H, E] -> [B, H, T, E]
  out_BxHxTxE = jax.vmap(lambda q, k, v, sq, skv: kernel(q, k, v, segment_ids=sk.SegmentIds(sq, skv)))(
      heads_first(q_BxTxHxE), heads_first(k_BxSxKxE), heads_first(v_BxSxKxE), seg_q_BxT, seg_kv_BxS)
  return heads_first(out_BxHxTxE)


def _gpu_local(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, seg_q_BxT, seg_kv_BxS, *, causal, block_q, block_kv,
               interpret):
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  del seg_kv_BxS  # self-attention: the kernel takes one segment array for queries and keys
  H, K = q_BxTxHxE.shape[2], k_BxSxKxE.shape[2]
  if K != H:  # the kernel has no grouped heads: repeat key/value heads (only on this device's shard)
    k_BxSxKxE = jnp.repeat(k_BxSxKxE, H // K, axis=2)
    v_BxSxKxE = jnp.repeat(v_BxSxKxE, H // K, axis=2)
  T = q_BxTxHxE.shape[1]
  bq, bk = min(block_q, T), min(block_kv, T)
  sizes = gpu_attention.BlockSizes(block_q=bq, block_k=bk, block_q_dkv=min(32, bq), block_kv_dkv=min(32, bk),
                                   block_q_dq=min(32, bq), block_kv_dq=min(32, bk))
  return gpu_attention.mha(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, seg_q_BxT, sm_scale=1.0, causal=causal,
                           block_sizes=sizes, interpret=interpret)


_LOCAL = {"splash": _splash_local, "pallas_gpu": _gpu_local}


def fused_attention(kind: str, q_BxTxHxE: Array, k_BxSxKxE: Array, v_BxSxKxE: Array, seg_q_BxT: Array | None,
                    seg_kv_BxS: Array | None, causal: bool, block_q: int = 512, block_kv: int = 512,
                    interpret: bool = False) -> Array:
  """softmax(q k^T / sqrt(E)) v over same-segment keys (and, if causal, keys not after the query) by kernel
  `kind` ("splash" | "pallas_gpu"); zeros for padding queries (segment 0). Scores in float32 inside."""
  B, T, H, E = q_BxTxHxE.shape
  S = k_BxSxKxE.shape[1]
  if seg_q_BxT is None:
    seg_q_BxT = jnp.ones((B, T), jnp.int32)
    seg_kv_BxS = jnp.ones((B, S), jnp.int32)
  seg_q_BxT, seg_kv_BxS = seg_q_BxT.astype(jnp.int32), seg_kv_BxS.astype(jnp.int32)
  q_BxTxHxE = q_BxTxHxE * jnp.asarray(E ** -0.5, q_BxTxHxE.dtype)
  local = functools.partial(_LOCAL[kind], causal=causal, block_q=block_q, block_kv=block_kv, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    rows = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names) or None
    heads = "tensor" if "tensor" in mesh.axis_names else None
    qkv, seg = P(rows, None, heads, None), P(rows, None)
    local = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv, check_vma=False)
  out_BxTxHxE = local(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, seg_q_BxT, seg_kv_BxS)
  return jnp.where((seg_q_BxT != 0)[:, :, None, None], out_BxTxHxE, 0).astype(q_BxTxHxE.dtype)
