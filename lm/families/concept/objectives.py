"""Concept-family objectives (`family.py` beside this file), composable like every other:

- `concept_decode`: decoder NLL of each sentence given the *predicted* concept; the language-model loss, and
  what bits per byte measures.
- `concept_recon`: decoder NLL given the *true* concept (the autoencoder; asks the model for a second decoder
  pass).
- `concept_mse`: Base-LCM regression of the predicted concept onto the true next one (mean squared error per
  dimension), with the target under a stop-gradient by default.
- `concept_contrastive`: InfoNCE of predicted against true concepts, the other sentences of the batch (or of
  the row) as negatives, on cosine similarities.

Chunks are scored where `chunk_mask` is 1; sums and counts as the loss protocol asks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.errors import ConfigError
from lm.models.base import ModelOutputs
from lm.objectives.base import Batch, LossContext, LossTerms, masked_nll, register


def decoder_terms(logits, batch: Batch, ctx: LossContext) -> LossTerms:
  """Summed unit NLL of chunk-decoder logits [B, C, L + 1, V] against the batch's targets."""
  targets, mask = batch["targets"], batch["loss_mask"]
  nll_sum, correct, count = masked_nll(logits, targets, mask)
  return LossTerms(total=nll_sum, count=count,
                   metrics=dict(nll_sum=nll_sum, accuracy_sum=correct,
                                n_bytes=jnp.sum(ctx.unit_bytes[targets] * mask.astype(jnp.float32))))


def _concepts(outputs: ModelOutputs, name: str):
  if "concept_pred" not in outputs.aux:
    raise ConfigError(f"objective {name!r} needs a concept model; set model.family='concept'")
  return outputs.aux["concept_pred"], outputs.aux["concept_target"]


@register("concept_decode")
def concept_decode():
  """p(units of sentence c | predicted concept of c): the family's language-model loss."""

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    _concepts(outputs, "concept_decode")
    return decoder_terms(outputs.logits, batch, ctx)

  return loss


@register("concept_recon", decoder_passes=1)
def concept_recon():
  """p(units of sentence c | true concept of c): the sentence autoencoder (SentenceVAE without the KL)."""

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    _concepts(outputs, "concept_recon")
    return decoder_terms(outputs.aux["recon_logits"], batch, ctx)

  return loss


@register("concept_mse")
def concept_mse(stop_gradient: bool = True):
  """Base-LCM: mean over dimensions of (predicted - true)^2 per sentence, summed over sentences. Without the
  stop-gradient a trained encoder can shrink the loss by collapsing its concepts (not when RMS-normalised,
  but it still pulls targets toward predictions)."""

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:  # pylint: disable=unused-argument
    pred_BxCxK, true_BxCxK = _concepts(outputs, "concept_mse")
    if stop_gradient:
      true_BxCxK = jax.lax.stop_gradient(true_BxCxK)
    mask_BxC = batch["chunk_mask"].astype(jnp.float32)
    sq_BxCxK = jnp.square(pred_BxCxK.astype(jnp.float32) - true_BxCxK.astype(jnp.float32))
    mse_BxC = jnp.mean(sq_BxCxK, axis=-1)
    l2_BxC = jnp.sqrt(jnp.sum(sq_BxCxK, axis=-1))
    total = jnp.sum(mse_BxC * mask_BxC)
    return LossTerms(total=total, count=jnp.sum(mask_BxC),
                     metrics=dict(mse_sum=total, l2_sum=jnp.sum(l2_BxC * mask_BxC)))

  return loss


def contrastive_scores(pred_BxCxK, true_BxCxK, chunk_mask_BxC, temperature: float, negatives: str):
  """(summed InfoNCE loss, number of correct argmaxes, count) of predicted vs true concepts on cosine
  similarity / temperature; candidates are every valid sentence of the batch or of the same row."""
  unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)  # noqa: E731
  p, t = unit(pred_BxCxK.astype(jnp.float32)), unit(true_BxCxK.astype(jnp.float32))
  B, C, K = p.shape
  valid_BxC = chunk_mask_BxC > 0
  if negatives == "batch":
    p, t, valid = p.reshape(1, B * C, K), t.reshape(1, B * C, K), valid_BxC.reshape(1, B * C)
  else:
    valid = valid_BxC
  scores_GxNxN = jnp.einsum("gik,gjk->gij", p, t) / temperature
  scores_GxNxN = jnp.where(valid[:, None, :], scores_GxNxN, -1e30)
  logz_GxN = jax.nn.logsumexp(scores_GxNxN, axis=-1)
  diag_GxN = jnp.diagonal(scores_GxNxN, axis1=1, axis2=2)
  w = valid.astype(jnp.float32)
  correct = (jnp.argmax(scores_GxNxN, axis=-1) == jnp.arange(scores_GxNxN.shape[1])[None]).astype(jnp.float32)
  return jnp.sum((logz_GxN - diag_GxN) * w), jnp.sum(correct * w), jnp.sum(w)


@register("concept_contrastive")
def concept_contrastive(temperature: float = 0.1, negatives: str = "batch", stop_gradient: bool = False):
  """InfoNCE (van den Oord et al. 2018): each predicted concept should pick its own true concept among the
  batch's (`negatives='batch'`, a [B*C, B*C] score matrix) or its row's (`'row'`, [B, C, C]: cheaper, and
  per device under data parallelism). With gradient accumulation the candidates are the microbatch's."""
  if negatives not in ("batch", "row"):
    raise ConfigError(f"concept_contrastive: negatives={negatives!r}; choose 'batch' or 'row'")
  if temperature <= 0:
    raise ConfigError(f"concept_contrastive: temperature={temperature} must be positive")

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:  # pylint: disable=unused-argument
    pred_BxCxK, true_BxCxK = _concepts(outputs, "concept_contrastive")
    if stop_gradient:
      true_BxCxK = jax.lax.stop_gradient(true_BxCxK)
    total, correct, count = contrastive_scores(pred_BxCxK, true_BxCxK, batch["chunk_mask"], temperature, negatives)
    return LossTerms(total=total, count=count, metrics=dict(infonce_sum=total, accuracy_sum=correct))

  return loss
