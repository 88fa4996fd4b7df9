"""Sequence-level objectives: one policy-gradient loss whose published variants are options, and DPO.

Everything returns the framework's sums and counts (`LossTerms`), so a policy-gradient term composes with
`ntp`, and microbatches, devices and hosts combine exactly. Inputs are per completion unit, [B, N] (B rows:
prompts x G samples; N completion units), with `mask_BxN` marking real units:
  logp       log-probabilities of the completion under the current policy (with gradient)
  old_logp   the same under the policy that sampled it (`rollout.sample`'s, no gradient)
  ref_logp   under a frozen reference (for a KL term), optional
  adv_B      one advantage per sequence (`advantages(rewards, group, kind)`)

Variants (anchors: tunix `rl/algo_core.py`; TRL's GRPOTrainer documentation; the papers named):
  advantage    grpo (group z-score; Shao et al. 2024), drgrpo (group mean only; Liu et al. 2025),
               rloo (leave-one-out mean; Ahmadian et al. 2024), reinforce_pp (batch whitening; Hu 2025)
  ratio        token (PPO/GRPO), sequence (GSPO: exp of the mean token log-ratio; Zheng et al. 2025),
               sequence_token (GSPO-token: the sequence ratio's value, each token's gradient)
  clipping     [1 - clip_low, 1 + clip_high] (DAPO's clip-higher when they differ; Yu et al. 2025), and
               dual_clip c > 1 bounding the loss of negative advantages at -c A (Ye et al. 2020)
  aggregation  sequence_mean (GRPO: each sequence's token mean, summed over sequences, counted per
               sequence), token_sum (DAPO: every token of the global batch counts once), constant (Dr. GRPO:
               token sums / max_len, counted per sequence: the G x L_max normaliser)
  KL           k1, k2 or k3 estimator of KL(policy || reference) per token (Schulman 2020), weighted by
               kl_coef in the loss (`kl_in="loss"`), or `kl_penalised_rewards` before the advantages
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.errors import ConfigError
from lm.objectives.base import LossTerms, register

Array = jax.Array
ADVANTAGES = ("grpo", "drgrpo", "rloo", "reinforce_pp")
RATIOS = ("token", "sequence", "sequence_token")
AGGREGATIONS = ("sequence_mean", "token_sum", "constant")
KL_ESTIMATORS = ("k1", "k2", "k3")


def _choose(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"policy gradient option {name}={value!r}; choose {', '.join(choices)}")


def advantages(rewards_B: Array, group: int, kind: str = "grpo", eps: float = 1e-6) -> Array:
  """One advantage per row; rows b*group .. b*group+group-1 are one prompt's samples."""
  _choose("advantage", kind, ADVANTAGES)
  r = rewards_B.astype(jnp.float32)
  if kind == "reinforce_pp":
    return (r - r.mean()) / (r.std() + eps)
  r_PxG = r.reshape(-1, group)
  mean_Px1 = r_PxG.mean(axis=1, keepdims=True)
  if kind == "grpo":
    out = (r_PxG - mean_Px1) / (r_PxG.std(axis=1, keepdims=True) + eps)
  elif kind == "drgrpo":
    out = r_PxG - mean_Px1
  else:  # rloo: the mean of the other group - 1 samples as the baseline
    if group < 2:
      raise ConfigError("advantage='rloo' needs a group of at least 2 samples per prompt")
    out = r_PxG - (r_PxG.sum(axis=1, keepdims=True) - r_PxG) / (group - 1)
  return out.reshape(-1)


def kl_estimate(logp_BxN: Array, ref_logp_BxN: Array, estimator: str = "k3") -> Array:
  """Per-unit estimate of KL(policy || reference) from units sampled from the policy (Schulman 2020):
  k1 = log p - log q (unbiased, high variance), k2 = (log p - log q)^2 / 2, k3 = q/p - 1 - log(q/p)
  (unbiased, non-negative)."""
  _choose("kl_estimator", estimator, KL_ESTIMATORS)
  d = logp_BxN - ref_logp_BxN
  if estimator == "k1":
    return d
  if estimator == "k2":
    return 0.5 * d * d
  return jnp.exp(-d) - 1.0 + d


def kl_penalised_rewards(rewards_B: Array, logp_BxN: Array, ref_logp_BxN: Array, mask_BxN: Array,
                         kl_coef: float, estimator: str = "k1") -> Array:
  """Rewards minus kl_coef x the sequence's summed KL estimate (no gradient): the KL "in the reward"."""
  kl_B = jnp.sum(kl_estimate(logp_BxN, ref_logp_BxN, estimator) * mask_BxN, axis=1)
  return rewards_B - kl_coef * jax.lax.stop_gradient(kl_B)


def _sequence_ids(segments_BxN: Array) -> Array:
  """[B * N] ids of each unit's sequence, distinct across rows (segment ids of a row lie in 0..N-1)."""
  B, N = segments_BxN.shape
  return (jnp.arange(B)[:, None] * N + jnp.clip(segments_BxN, 0, N - 1)).reshape(-1)


def _sequence_sum(x_BxN: Array, segments_BxN: Array) -> Array:
  """Each unit's sum of `x` over its sequence (the units of its row with the same segment id)."""
  ids = _sequence_ids(segments_BxN)
  return jax.ops.segment_sum(x_BxN.reshape(-1), ids, num_segments=x_BxN.size)[ids].reshape(x_BxN.shape)


def _ratios(logp_BxN, old_BxN, mask_BxN, segments_BxN, kind: str) -> Array:
  log_ratio = (logp_BxN - old_BxN) * mask_BxN
  if kind == "token":
    return jnp.exp(log_ratio)
  lengths = jnp.maximum(_sequence_sum(mask_BxN, segments_BxN), 1.0)
  seq_BxN = jnp.exp(_sequence_sum(log_ratio, segments_BxN) / lengths)
  if kind == "sequence":
    return seq_BxN
  # sequence_token: value sg(s), gradient s * d logp_t per token.
  return jax.lax.stop_gradient(seq_BxN) * jnp.exp(logp_BxN - jax.lax.stop_gradient(logp_BxN))


def _aggregate(per_unit_BxN: Array, mask_BxN: Array, segments_BxN: Array, aggregation: str,
               max_len: int) -> tuple[Array, Array]:
  if aggregation == "token_sum":
    return jnp.sum(per_unit_BxN * mask_BxN), jnp.sum(mask_BxN)
  share_BxN = mask_BxN / jnp.maximum(_sequence_sum(mask_BxN, segments_BxN), 1.0)  # sums to 1 per sequence
  units_per_sequence = jax.ops.segment_sum((mask_BxN > 0).astype(jnp.float32).reshape(-1),
                                           _sequence_ids(segments_BxN), num_segments=mask_BxN.size)
  sequences = jnp.sum(units_per_sequence > 0).astype(jnp.float32)  # those with any unit in the loss
  if aggregation == "constant":
    return jnp.sum(per_unit_BxN * mask_BxN) / max_len, sequences
  return jnp.sum(per_unit_BxN * share_BxN), sequences


def policy_gradient(logp_BxN: Array, old_logp_BxN: Array, adv_B: Array, mask_BxN: Array, *, ratio: str = "token",
                    clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float = 0.0,
                    aggregation: str = "sequence_mean", max_len: int | None = None, ref_logp_BxN: Array | None = None,
                    kl_coef: float = 0.0, kl_estimator: str = "k3", segments_BxN: Array | None = None) -> LossTerms:
  """The clipped surrogate -min(r A, clip(r) A) (+ kl_coef x KL estimate) per completion unit, aggregated as
  asked. Metrics (sums over `count`'s events, or `*_frac`/`*_units` pairs): clip fractions, KL, ratio.
  Packed rows: `segments_BxN` numbers the sequences within each row (one sequence per row when None) and
  the advantages are per unit, `adv_B` of shape [B, N]; `max_len` (constant aggregation) should then be the
  completion budget, not the row length."""
  _choose("ratio", ratio, RATIOS)
  _choose("aggregation", aggregation, AGGREGATIONS)
  if dual_clip and dual_clip <= 1.0:
    raise ConfigError(f"dual_clip={dual_clip} must be above 1 (or 0 to turn it off)")
  mask = mask_BxN.astype(jnp.float32)
  old = jax.lax.stop_gradient(old_logp_BxN)
  segments = jnp.ones(mask.shape, jnp.int32) if segments_BxN is None else segments_BxN.astype(jnp.int32)
  r_BxN = _ratios(logp_BxN, old, mask, segments, ratio)
  adv = jax.lax.stop_gradient(adv_B.astype(jnp.float32))
  adv_Bx1 = adv[:, None] if adv.ndim == 1 else adv  # [B, 1] or per unit [B, N]
  clipped_BxN = jnp.clip(r_BxN, 1.0 - clip_low, 1.0 + clip_high)
  surrogate_BxN = jnp.minimum(r_BxN * adv_Bx1, clipped_BxN * adv_Bx1)
  if dual_clip:
    surrogate_BxN = jnp.where(adv_Bx1 < 0, jnp.maximum(surrogate_BxN, dual_clip * adv_Bx1), surrogate_BxN)
  loss_BxN = -surrogate_BxN
  metrics = {}
  if ref_logp_BxN is not None and kl_coef:
    kl_BxN = kl_estimate(logp_BxN, jax.lax.stop_gradient(ref_logp_BxN), kl_estimator)
    loss_BxN = loss_BxN + kl_coef * kl_BxN
    metrics["kl_units"] = jnp.sum(jax.lax.stop_gradient(kl_BxN) * mask)
  total, count = _aggregate(loss_BxN, mask, segments, aggregation, max_len or mask_BxN.shape[1])
  r = jax.lax.stop_gradient(r_BxN)
  metrics.update(units=jnp.sum(mask), clip_low_units=jnp.sum((r < 1.0 - clip_low) * (adv_Bx1 < 0) * mask),
                 clip_high_units=jnp.sum((r > 1.0 + clip_high) * (adv_Bx1 > 0) * mask),
                 ratio_units=jnp.sum(r * mask))
  return LossTerms(total=total, count=count, metrics=metrics)


def dpo(chosen_logp_B: Array, rejected_logp_B: Array, ref_chosen_logp_B: Array, ref_rejected_logp_B: Array,
        beta: float = 0.1) -> LossTerms:
  """Direct preference optimisation (Rafailov et al. 2023) on summed sequence log-probabilities:
  -log sigmoid(beta ((c - c_ref) - (r - r_ref))), summed over pairs, counted per pair."""
  margin_B = beta * ((chosen_logp_B - jax.lax.stop_gradient(ref_chosen_logp_B))
                     - (rejected_logp_B - jax.lax.stop_gradient(ref_rejected_logp_B)))
  loss_B = -jax.nn.log_sigmoid(margin_B)
  return LossTerms(total=loss_B.sum(), count=jnp.asarray(loss_B.shape[0], jnp.float32),
                   metrics=dict(accuracy_sum=jnp.sum(margin_B > 0).astype(jnp.float32),
                                margin_sum=jax.lax.stop_gradient(margin_B).sum()))


# ---------------------------------------------------------------------------------------------------------
# As registered objectives (`lm rl` builds their batches): prompt + completion sequences, one per row or packed
# several to a row (`segment_ids` 1, 2, ... number them, 0 is padding), `loss_mask` on the units of the
# completions, `old_logp` [B, T] the sampler's log-probabilities at those positions, `advantages` [B, T] (each
# sequence's advantage on its units, 0 on padding).

def _pg_factory(with_reference: bool):
  def factory(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, ratio: str = "token",
              clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float = 0.0,
              aggregation: str = "sequence_mean", max_len: int = 0, kl_coef: float = 0.0, kl_estimator: str = "k3",
              reference: str = ""):  # pylint: disable=unused-argument  (the loop loads `reference`)
    """`max_len`: Dr. GRPO's constant L_max (`lm rl` passes rl.max_new; 0: the row length). Rows may be packed:
    `segment_ids` numbers the sequences of a row, `advantages` [B, T] is per unit."""
    _choose("ratio", ratio, RATIOS)
    _choose("aggregation", aggregation, AGGREGATIONS)
    _choose("kl_estimator", kl_estimator, KL_ESTIMATORS)
    from lm.decoding.rollout import processed_log_probs  # pylint: disable=import-outside-toplevel

    def unit_logp(logits_BxTxV, targets_BxT):
      logp_BxTxV = processed_log_probs(logits_BxTxV, temperature, top_k, top_p)
      return logp_BxTxV, jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]

    def loss(outputs, batch, ctx):
      mask = batch["loss_mask"].astype(jnp.float32)
      logp_BxTxV, logp_BxT = unit_logp(outputs.logits, batch["targets"])
      logp_BxT = jnp.where(mask > 0, logp_BxT, 0.0)
      ref = None
      if with_reference:
        if ctx.reference_logits is None:
          raise ConfigError("objective 'pg_kl' needs a reference model: set its `reference`")
        ref = jnp.where(mask > 0, unit_logp(ctx.reference_logits, batch["targets"])[1], 0.0)
      terms = policy_gradient(logp_BxT, batch["old_logp"], batch["advantages"], mask, ratio=ratio,
                              clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, aggregation=aggregation,
                              max_len=max_len or mask.shape[1], ref_logp_BxN=ref,
                              kl_coef=kl_coef if with_reference else 0.0, kl_estimator=kl_estimator,
                              segments_BxN=batch["segment_ids"])
      p = jnp.exp(logp_BxTxV)
      entropy_BxT = -jnp.sum(jnp.where(p > 0, p * logp_BxTxV, 0.0), axis=-1)
      return LossTerms(terms.total, terms.count,
                       dict(terms.metrics, entropy_units=jnp.sum(jax.lax.stop_gradient(entropy_BxT) * mask)))
    return loss
  return factory


register("pg")(_pg_factory(False))
register("pg_kl", reference=True)(_pg_factory(True))


@register("dpo", reference=True)
def dpo_objective(beta: float = 0.1, reference: str = ""):  # pylint: disable=unused-argument
  """DPO on preference pairs (`lm rl` with rl.algorithm=dpo builds the batch): rows 2i and 2i+1 are pair i's
  chosen and rejected completions after the same prompt, `loss_mask` on their units; the frozen `reference`
  scores them too. Counted per pair."""
  if beta <= 0:
    raise ConfigError(f"objective 'dpo': beta={beta} must be positive")

  def seq_logp(logits, batch):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    unit = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(unit * batch["loss_mask"], axis=1)

  def loss(outputs, batch, ctx):
    if ctx.reference_logits is None:
      raise ConfigError("objective 'dpo' needs a reference model: set its `reference`")
    policy, ref = seq_logp(outputs.logits, batch), seq_logp(ctx.reference_logits, batch)
    return dpo(policy[0::2], policy[1::2], ref[0::2], ref[1::2], beta)
  return loss
