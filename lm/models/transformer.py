"""The pre-norm decoder stack every family reuses (`nn.scan` over layers, named remat policies)."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name

from lm.models.base import RNG_STREAMS
from lm.models.layers import MLP, Array, Attention, TransformerConfig, constrain, make_norm

ACTIVATION_AXES = ("batch", "length", "embed")


class Block(nn.Module):
  """x + attn(norm(x)), then + mlp(norm(.))."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, segment_ids_BxT: Array | None) -> Array:
    cfg = self.cfg
    norm = lambda name: make_norm(cfg, name)  # noqa: E731
    x_BxTxD = constrain(x_BxTxD, ACTIVATION_AXES)
    h_BxTxD = x_BxTxD + Attention(cfg, self.causal, self.decode, name="attn")(
        norm("attn_norm")(x_BxTxD), positions_BxT, segment_ids_BxT)
    h_BxTxD = checkpoint_name(h_BxTxD, "attn_residual")
    out_BxTxD = h_BxTxD + MLP(cfg, name="mlp")(norm("mlp_norm")(h_BxTxD))
    return constrain(checkpoint_name(out_BxTxD, "block_out"), ACTIVATION_AXES)


class _ScannedBlock(Block):
  """Block with the (carry, xs) -> (carry, ys) signature that `nn.scan` wants."""

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT):  # pytype: disable=signature-mismatch
    return super().__call__(x_BxTxD, positions_BxT, segment_ids_BxT), None


def remat_policy(name: str):
  """`none` (no remat), `full` (save nothing), `dots`, or a comma-separated list of checkpoint names."""
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  names = [n.strip() for n in name.split(",") if n.strip()]
  return jax.checkpoint_policies.save_only_these_names(*names)


REMAT_NAMES = ("attn_out", "attn_residual", "mlp_hidden", "block_out")


class Transformer(nn.Module):
  """`num_layers` blocks; returns the last hidden state before the final norm."""
  cfg: TransformerConfig
  causal: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, segment_ids_BxT: Array | None) -> Array:
    cfg = self.cfg
    block_cls = _ScannedBlock if cfg.scan_layers else Block
    if cfg.remat_policy != "none":
      block_cls = nn.remat(block_cls, policy=remat_policy(cfg.remat_policy),
                           prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      unroll = True if cfg.scan_unroll >= cfg.num_layers else max(cfg.scan_unroll, 1)
      stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, **{k: True for k in RNG_STREAMS}},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers, unroll=unroll,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxTxD, _ = stack(cfg, self.causal, self.decode, name="layers")(
          x_BxTxD, positions_BxT, segment_ids_BxT)
    else:
      for i in range(cfg.num_layers):
        x_BxTxD = block_cls(cfg, self.causal, self.decode, name=f"layers_{i}")(
            x_BxTxD, positions_BxT, segment_ids_BxT)
    return x_BxTxD
