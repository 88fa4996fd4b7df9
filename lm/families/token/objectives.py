"""Token-family objectives: `ntp` (next unit), `mtp` (Gloeckle et al.), `dsmtp` (DeepSeek-V3 sequential MTP),
`top` (token order prediction), `ftp` (future token prediction), `rho` (reference-weighted next unit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.errors import ConfigError
from lm.models.base import ModelOutputs
from lm.objectives.base import (Batch, Head, LossContext, LossTerms, at_least, masked_nll, next_unit_nll, register,
                                token_nll)

from . import heads
from .heads import shift_left


@register("ntp")
def ntp(z_loss: float = 0.0, label_smoothing: float = 0.0):
  """Next-token prediction. z-loss (PaLM, Chowdhery et al. 2022 §5): z * log(Z)^2; label smoothing eps
  mixes in the uniform target: (1 - eps) * nll + eps * (log Z - mean logit)."""

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    targets_BxT = batch["targets"]
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    stats = next_unit_nll(outputs, targets_BxT)  # tile by tile when the model's outputs are lazy
    nll_BxT, objective_BxT = stats.nll, stats.nll
    if label_smoothing:
      objective_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * (stats.logz - stats.mean_logit)
    if z_loss:
      objective_BxT = objective_BxT + z_loss * jnp.square(stats.logz)
    correct_BxT = stats.correct
    n_bytes = jnp.sum(ctx.unit_bytes[targets_BxT] * mask_BxT)
    count = jnp.sum(mask_BxT)
    return LossTerms(
        total=jnp.sum(objective_BxT * mask_BxT), count=count,
        metrics=dict(nll_sum=jnp.sum(nll_BxT * mask_BxT), accuracy_sum=jnp.sum(correct_BxT * mask_BxT),
                     n_bytes=n_bytes))

  return loss


# ---------------------------------------------------------------------------------------------------------
# Beyond the next token. Shifted targets never cross a packed-document boundary: the unit k steps ahead of
# position t counts only when it is in t's segment and is itself a scored unit.


def future_targets(batch: Batch, k: int) -> tuple[jax.Array, jax.Array]:
  """(targets [B, T], mask [B, T] float32) of the unit k steps ahead of each position's input: k = 1 is the
  next-unit target itself, k = 2 the one after, and so on."""
  targets_BxT, mask_BxT, seg_BxT = batch["targets"], batch["loss_mask"], batch["segment_ids"]
  if k == 1:
    return targets_BxT, mask_BxT.astype(jnp.float32)
  shift = k - 1
  ahead_BxT = shift_left(targets_BxT, shift)
  same_BxT = shift_left(seg_BxT, shift, fill=-1) == seg_BxT
  valid_BxT = (mask_BxT > 0) & (shift_left(mask_BxT, shift) > 0) & same_BxT
  return ahead_BxT, valid_BxT.astype(jnp.float32)


def _next_unit_metrics(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> tuple[jax.Array, dict]:
  """The next-unit head's summed NLL and its metrics (bits per byte comes from these)."""
  mask_BxT = batch["loss_mask"].astype(jnp.float32)
  nll, correct, count = masked_nll(outputs, batch["targets"], mask_BxT)
  n_bytes = jnp.sum(ctx.unit_bytes[batch["targets"]] * mask_BxT)
  return nll, dict(nll_sum=nll, accuracy_sum=correct, n_bytes=n_bytes, nll_count=count, accuracy_count=count)


def _mtp_head(n: int = 4, equal_params: bool = False) -> Head:
  return Head("mtp", heads.MTPHead, (("n", int(n)),), give_up_layers=int(n) - 1 if equal_params else 0)


@register("mtp", head=_mtp_head)
def mtp(n: int = 4, equal_params: bool = False):  # pylint: disable=unused-argument
  """Multi-token prediction (Gloeckle et al. 2024, eq. 1): L = -sum_t sum_{k=1..n} log p_k(x_{t+k} | x_{<=t}),
  head 1 the next-unit head, heads 2..n one block each on the shared trunk. `equal_params` takes n - 1
  layers from the trunk so the parameter count matches next-unit training. Count: next-unit events."""
  at_least("mtp", 1, n=n)

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    total, metrics = _next_unit_metrics(outputs, batch, ctx)
    count = metrics["nll_count"]
    for k in range(2, n + 1):
      targets_BxT, mask_BxT = future_targets(batch, k)
      nll, correct, events = masked_nll(outputs.aux["mtp_logits"][k - 2], targets_BxT, mask_BxT)
      total = total + nll
      metrics.update({f"nll_{k}_sum": nll, f"nll_{k}_count": events, f"accuracy_{k}_sum": correct,
                      f"accuracy_{k}_count": events})
    return LossTerms(total=total, count=count, metrics=metrics)

  return loss


@register("dsmtp", head=lambda depth=1: Head("dsmtp", heads.DSMTPHead, (("depth", int(depth)),)), auxiliary=True)
def dsmtp(depth: int = 1):
  """Sequential MTP modules (DeepSeek-V3 report, eqs. 24-25): L = (1/D) sum_{k=1..D} CE_k, where module k
  predicts unit t+k+1. The paper's lambda (0.3, later 0.1) is this objective's `weight`, schedulable.
  Count: next-unit events, so lambda means what it means in the paper when listed after `ntp`."""
  at_least("dsmtp", 1, depth=depth)

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:  # pylint: disable=unused-argument
    total, metrics = 0.0, {}
    for k in range(1, depth + 1):
      targets_BxT, mask_BxT = future_targets(batch, k + 1)
      nll, correct, events = masked_nll(outputs.aux["dsmtp_logits"][k - 1], targets_BxT, mask_BxT)
      total = total + nll / depth
      metrics.update({f"nll_{k + 1}_sum": nll, f"nll_{k + 1}_count": events, f"accuracy_{k + 1}_sum": correct,
                      f"accuracy_{k + 1}_count": events})
    count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    return LossTerms(total=total, count=count, metrics=metrics)

  return loss


def top_targets(targets_BxT: jax.Array, mask_BxT: jax.Array, segment_ids_BxT: jax.Array, vocab: int,
                window: int) -> jax.Array:
  """Token-order targets [B, T, V] float32: `window - d` for each unit whose next occurrence among the scored
  targets of this segment is d steps ahead (d = 1 is the next unit), -inf if not within `window`.

  One reverse scan whose carry is the next position of every unit [B, V]; nothing but the output is
  [B, T, V].
  """
  B, T = targets_BxT.shape
  never = jnp.iinfo(jnp.int32).max // 2
  next_seg_BxT = shift_left(segment_ids_BxT, 1, fill=-1)

  def step(next_pos_BxV, xs):
    t, target_B, valid_B, seg_B, next_seg_B = xs
    next_pos_BxV = jnp.where((seg_B != next_seg_B)[:, None], never, next_pos_BxV)  # a new segment ahead
    hit_BxV = (jnp.arange(vocab)[None, :] == target_B[:, None]) & valid_B[:, None]
    next_pos_BxV = jnp.where(hit_BxV, t, next_pos_BxV)
    d_BxV = next_pos_BxV - t + 1
    scores_BxV = jnp.where(d_BxV <= window, (window - d_BxV).astype(jnp.float32), -jnp.inf)
    return next_pos_BxV, scores_BxV

  xs = (jnp.arange(T), targets_BxT.T, (mask_BxT > 0).T, segment_ids_BxT.T, next_seg_BxT.T)
  _, scores_TxBxV = jax.lax.scan(step, jnp.full((B, vocab), never, jnp.int32), xs, reverse=True)
  return jnp.swapaxes(scores_TxBxV, 0, 1)


@register("top", head=lambda window=16: Head("top", heads.TOPHead), auxiliary=True)
def top(window: int = 16):
  """Token order prediction (Zuhri et al. 2025, eq. 3): ListNet top-one loss
  -sum_v softmax(y_t)_v log softmax(top_logits_t)_v with y_t(v) = window - d_t(v) for units occurring d <= window
  steps ahead (else -inf). Count: next-unit events."""
  at_least("top", 1, window=window)

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:  # pylint: disable=unused-argument
    logits_BxTxV = outputs.aux["top_logits"]
    V = logits_BxTxV.shape[-1]
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    scores_BxTxV = top_targets(batch["targets"], mask_BxT, batch["segment_ids"], V, window)
    scores_BxTxV = jnp.where(mask_BxT[..., None] > 0, scores_BxTxV, 0.0)  # unscored rows: any finite value
    target_p_BxTxV = jax.nn.softmax(scores_BxTxV, axis=-1)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    ce_BxT = -jnp.sum(jnp.where(target_p_BxTxV > 0, target_p_BxTxV * logp_BxTxV, 0.0), axis=-1)
    total = jnp.sum(ce_BxT * mask_BxT)
    return LossTerms(total=total, count=jnp.sum(mask_BxT), metrics=dict(listnet_sum=total))

  return loss


@register("ftp", head=lambda n=4, gamma=0.8, pseudo=4, layers=1: Head(
    "ftp", heads.FTPHead, (("n", int(n)), ("pseudo", int(pseudo)), ("layers", int(layers)))), auxiliary=True)
def ftp(n: int = 4, gamma: float = 0.8, pseudo: int = 4, layers: int = 1):  # pylint: disable=unused-argument
  """Future token prediction (Walker 2024): L = sum_t sum_{j=1..n} gamma^(j-1) CE(ftp_j(t), x_{t+j}), the
  decoder's step j predicting the unit j ahead. Count: next-unit events."""
  at_least("ftp", 1, n=n, pseudo=pseudo, layers=layers)
  if gamma <= 0:
    raise ConfigError(f"objective 'ftp': gamma={gamma!r} must be positive")

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:  # pylint: disable=unused-argument
    total, metrics = 0.0, {}
    for j in range(1, n + 1):
      targets_BxT, mask_BxT = future_targets(batch, j)
      nll, correct, events = masked_nll(outputs.aux["ftp_logits"][j - 1], targets_BxT, mask_BxT)
      total = total + gamma ** (j - 1) * nll
      metrics.update({f"nll_{j}_sum": nll, f"nll_{j}_count": events, f"accuracy_{j}_sum": correct,
                      f"accuracy_{j}_count": events})
    count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    return LossTerms(total=total, count=count, metrics=metrics)

  return loss


@register("rho", reference=True)
def rho(keep: float = 0.6, reference: str = ""):  # pylint: disable=unused-argument
  """Reference-weighted next-unit loss (Rho-1, Lin et al. 2024, eq. 3): train only on the `keep` fraction of
  the batch's scored units with the largest excess loss nll_model - nll_reference, the reference a frozen
  model from another run's workdir (`reference`, loaded by the training loop). Bits per byte and `nll`
  stay unweighted over every scored unit; count: the selected units."""
  if not 0.0 < keep <= 1.0:
    raise ConfigError(f"objective 'rho': keep={keep} must be in (0, 1]")

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    if ctx.reference_logits is None:
      raise ConfigError("objective 'rho' needs a reference model: set its `reference` to a trained workdir")
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    nll_BxT = next_unit_nll(outputs, batch["targets"]).nll
    ref_nll_BxT, _ = token_nll(jax.lax.stop_gradient(ctx.reference_logits), batch["targets"])
    excess_N = jax.lax.stop_gradient(nll_BxT - ref_nll_BxT).reshape(-1)
    valid_N = mask_BxT.reshape(-1) > 0
    n_valid = jnp.sum(valid_N)
    k = jnp.clip(jnp.ceil(keep * n_valid).astype(jnp.int32), 1, excess_N.shape[0])
    ranked_N = jnp.sort(jnp.where(valid_N, excess_N, -jnp.inf))[::-1]
    threshold = ranked_N[k - 1]
    selected_BxT = ((excess_N >= threshold) & valid_N).reshape(mask_BxT.shape).astype(jnp.float32)
    _, metrics = _next_unit_metrics(outputs, batch, ctx)
    metrics.update(reference_nll_sum=jnp.sum(ref_nll_BxT * mask_BxT), reference_nll_count=n_valid,
                   selected_sum=jnp.sum(selected_BxT), selected_count=n_valid)
    return LossTerms(total=jnp.sum(nll_BxT * selected_BxT), count=jnp.sum(selected_BxT), metrics=metrics)

  return loss
