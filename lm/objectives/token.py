"""Token-family objectives. `ntp`: next-unit cross-entropy with optional z-loss and label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.models.base import ModelOutputs
from lm.objectives.base import Batch, LossContext, LossTerms, register


def token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array):
  """Per-position negative log-likelihood and log-partition, in float32."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logz_BxT - target_logit_BxT, logz_BxT


@register("ntp")
def ntp(z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Next-token prediction. z-loss (PaLM, Chowdhery et al. 2022 §5): z * log(Z)^2; label smoothing eps
  mixes in the uniform target: (1 - eps) * nll + eps * (log Z - mean logit)."""

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    logits_BxTxV, targets_BxT = outputs.logits, batch["targets"]
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    nll_BxT, logz_BxT = token_nll(logits_BxTxV, targets_BxT)
    objective_BxT = nll_BxT
    if label_smoothing:
      smooth_BxT = logz_BxT - jnp.mean(logits_BxTxV.astype(jnp.float32), axis=-1)
      objective_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * smooth_BxT
    if z_loss:
      objective_BxT = objective_BxT + z_loss * jnp.square(logz_BxT)
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    n_bytes = jnp.sum(ctx.unit_bytes[targets_BxT] * mask_BxT)
    count = jnp.sum(mask_BxT)
    return LossTerms(
        total=jnp.sum(objective_BxT * mask_BxT), count=count,
        metrics=dict(nll_sum=jnp.sum(nll_BxT * mask_BxT), accuracy_sum=jnp.sum(correct_BxT * mask_BxT),
                     n_bytes=n_bytes))

  return loss
