"""Sequence-level objectives checked exactly on a space small enough to enumerate: every sequence of 2 units
over a vocabulary of 3 (9 sequences) under a tabular autoregressive policy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import ConfigError
from lm.objectives import sequence

V, L = 3, 2
SEQS = np.array(list(itertools.product(range(V), repeat=L)))  # [9, 2]
MASK = jnp.ones(SEQS.shape, jnp.float32)


def token_logp(theta):
  """[9, 2] log-probabilities of each sequence's units; theta[0] is the first unit's table, theta[1 + u] the
  second's after unit u."""
  first = jax.nn.log_softmax(theta[0])[SEQS[:, 0]]
  second = jax.nn.log_softmax(theta[1 + SEQS[:, 0]], axis=-1)[np.arange(len(SEQS)), SEQS[:, 1]]
  return jnp.stack([first, second], axis=1)


THETA = jnp.asarray(np.random.default_rng(0).normal(size=(V + 1, V)), jnp.float32)
OLD = jnp.asarray(np.random.default_rng(1).normal(size=(V + 1, V)), jnp.float32) * 0.3 + THETA
REF = jnp.asarray(np.random.default_rng(2).normal(size=(V + 1, V)), jnp.float32)
REWARD = jnp.asarray(np.random.default_rng(3).normal(size=len(SEQS)), jnp.float32)


def loss(theta, old, adv, **options):
  terms = sequence.policy_gradient(token_logp(theta), token_logp(old), adv, MASK, **options)
  return terms.total / terms.count


@pytest.mark.parametrize("ratio", ["token", "sequence", "sequence_token"])
def test_with_old_equal_current_the_clipped_gradient_is_the_policy_gradient(ratio):
  adv = REWARD - REWARD.mean()
  got = jax.grad(loss)(THETA, THETA, adv, ratio=ratio, aggregation="sequence_mean", clip_low=0.1, clip_high=0.3)

  def plain(theta):  # -1/B sum_seq A_seq mean_t log p_t: REINFORCE with GRPO's per-sequence token mean
    return -jnp.mean(adv * token_logp(theta).mean(axis=1))
  np.testing.assert_allclose(got, jax.grad(plain)(THETA), atol=1e-6)


def test_gspo_token_equals_gspo_in_value_and_gradient():
  adv = sequence.advantages(REWARD, group=3)
  for options in (dict(), dict(clip_low=0.05, clip_high=0.05)):  # also where clipping binds
    a = loss(THETA, OLD, adv, ratio="sequence", **options)
    b = loss(THETA, OLD, adv, ratio="sequence_token", **options)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(THETA, OLD, adv, ratio="sequence", **options),
                               jax.grad(loss)(THETA, OLD, adv, ratio="sequence_token", **options), atol=1e-6)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_sum", "constant"])
def test_sums_and_counts_of_four_microbatches_equal_one_batch(aggregation):
  rng = np.random.default_rng(4)
  mask = jnp.asarray(rng.random((8, 5)) < 0.7, jnp.float32).at[:, 0].set(1.0)
  logp, old = (jnp.asarray(rng.normal(size=(8, 5)) * 0.1 - 1, jnp.float32) for _ in range(2))
  adv = jnp.asarray(rng.normal(size=8), jnp.float32)
  whole = sequence.policy_gradient(logp, old, adv, mask, aggregation=aggregation, max_len=5)
  parts = [sequence.policy_gradient(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2],
                                    aggregation=aggregation, max_len=5) for i in range(0, 8, 2)]
  np.testing.assert_allclose(sum(p.total for p in parts), whole.total, rtol=1e-6)
  np.testing.assert_allclose(sum(p.count for p in parts), whole.count, rtol=1e-6)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_sum", "constant"])
@pytest.mark.parametrize("ratio", ["token", "sequence", "sequence_token"])
def test_packed_rows_equal_one_sequence_per_row(ratio, aggregation):
  """Six sequences of 2-5 units, one per row or packed three to a row (segment ids 1..3, per-unit advantages,
  prompt-like masked units between them): the same loss, count, metrics and gradient, with KL in the loss."""
  rng = np.random.default_rng(5)
  lengths = [2, 5, 3, 4, 2, 3]
  rows_logp, rows_old, rows_ref = (rng.normal(size=(6, 5)).astype(np.float32) * 0.2 - 1 for _ in range(3))
  adv = rng.normal(size=6).astype(np.float32)
  mask = np.zeros((6, 5), np.float32)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
  # Packed: row r holds sequences 3r..3r+2, each after one masked (prompt) unit, then padding.
  P = 2 * 16
  index = np.zeros((2, P), np.int64)  # where each packed unit comes from in the [6, 5] layout (flat)
  packed_mask, segments, packed_adv = np.zeros((2, P), np.float32), np.zeros((2, P), np.int32), np.zeros((2, P),
                                                                                                    np.float32)
  for r in range(2):
    at = 0
    for k in range(3):
      i = 3 * r + k
      segments[r, at:at + 1 + lengths[i]] = k + 1
      packed_adv[r, at:at + 1 + lengths[i]] = adv[i]
      at += 1  # the masked prompt unit
      index[r, at:at + lengths[i]] = i * 5 + np.arange(lengths[i])
      packed_mask[r, at:at + lengths[i]] = 1
      at += lengths[i]
  options = dict(ratio=ratio, aggregation=aggregation, max_len=5, clip_low=0.1, clip_high=0.15, kl_coef=0.3)

  def unpacked(logp):
    t = sequence.policy_gradient(logp, rows_old, adv, mask, ref_logp_BxN=rows_ref, **options)
    return t.total, t
  def packed(logp):
    pick = lambda x: jnp.where(packed_mask > 0, jnp.asarray(x).reshape(-1)[index], 0.0)  # noqa: E731
    t = sequence.policy_gradient(pick(logp), pick(rows_old), packed_adv, packed_mask, ref_logp_BxN=pick(rows_ref),
                                 segments_BxN=segments, **options)
    return t.total, t
  (a, ta), ga = jax.value_and_grad(unpacked, has_aux=True)(jnp.asarray(rows_logp))
  (b, tb), gb = jax.value_and_grad(packed, has_aux=True)(jnp.asarray(rows_logp))
  np.testing.assert_allclose(b, a, rtol=1e-5)
  np.testing.assert_allclose(tb.count, ta.count, rtol=1e-6)
  for key in ta.metrics:
    np.testing.assert_allclose(tb.metrics[key], ta.metrics[key], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gb, ga, atol=1e-6)
  assert float(jnp.abs(ga).max()) > 0


def _exact_kl(p_logp, q_logp):
  return jnp.sum(jnp.exp(p_logp) * (p_logp - q_logp))


def test_kl_estimators_and_their_gradients_in_the_loss_against_the_exact_kl():
  """By enumeration, weighting each sequence by its (stop-gradient) policy probability, as on-policy samples
  do in expectation: summed per unit, k1 and k3 estimate KL(p||ref) without bias; in the loss, k2's gradient
  is KL(p||ref)'s, k3's the reverse KL(ref||p)'s and k1's zero; k1 in the reward gives -grad KL(p||ref) by
  the score function."""
  def seq_logp(theta):
    return token_logp(theta).sum(axis=1)

  p = jnp.exp(seq_logp(THETA))
  exact = _exact_kl(seq_logp(THETA), seq_logp(REF))
  for est in ("k1", "k3"):
    per_seq = sequence.kl_estimate(token_logp(THETA), token_logp(REF), est).sum(axis=1)
    np.testing.assert_allclose(jnp.sum(p * per_seq), exact, rtol=1e-5)

  # Gradients in the loss, on one-unit sequences (per-unit estimators are the sequence's there; over longer
  # sequences an earlier unit's gradient misses the later units' KL, for every estimator, as in every
  # library that applies them per token).
  theta1, ref1 = THETA[0], REF[0]
  one = lambda t: jax.nn.log_softmax(t)[:, None]  # noqa: E731  [3 sequences, 1 unit]
  ones = jnp.ones((V, 1))

  def in_loss(theta, est):
    per_seq = sequence.kl_estimate(one(theta), one(ref1), est)[:, 0]
    return jnp.sum(jax.lax.stop_gradient(jnp.exp(one(theta)[:, 0])) * per_seq)
  forward = jax.grad(lambda t: _exact_kl(one(t)[:, 0], one(ref1)[:, 0]))(theta1)
  reverse = jax.grad(lambda t: _exact_kl(one(ref1)[:, 0], one(t)[:, 0]))(theta1)
  np.testing.assert_allclose(jax.grad(in_loss)(theta1, "k2"), forward, atol=1e-6)
  np.testing.assert_allclose(jax.grad(in_loss)(theta1, "k3"), reverse, atol=1e-6)
  np.testing.assert_allclose(jax.grad(in_loss)(theta1, "k1"), np.zeros_like(forward), atol=1e-6)

  # k1 in the reward: the score function gives -grad KL(p||ref) exactly, at any length.
  seq_forward = jax.grad(lambda t: _exact_kl(seq_logp(t), seq_logp(REF)))(THETA)
  rewards = sequence.kl_penalised_rewards(jnp.zeros(len(SEQS)), token_logp(THETA), token_logp(REF), MASK, 1.0)
  score = jax.grad(lambda t: jnp.sum(jax.lax.stop_gradient(p * rewards) * seq_logp(t)))(THETA)
  np.testing.assert_allclose(score, -seq_forward, atol=1e-5)

  def via_objective(theta):  # the objective's own KL-in-loss path: no advantage, p-weighted rows
    w = jax.lax.stop_gradient(jnp.exp(one(theta)))
    terms = sequence.policy_gradient(one(theta), one(theta), jnp.zeros(V), ones * w, aggregation="token_sum",
                                     ref_logp_BxN=one(ref1), kl_coef=1.0, kl_estimator="k2")
    return terms.total
  np.testing.assert_allclose(jax.grad(via_objective)(theta1), forward, atol=1e-6)


def test_rloo_gradient_is_unbiased_against_the_enumerated_gradient():
  """Groups of 4 drawn from the policy; the mean RLOO estimate (1/G) sum_i A_i grad log p(y_i) over many
  groups matches grad E_p[R] to within 4 standard errors per component."""
  seq_logp = lambda t: token_logp(t).sum(axis=1)  # noqa: E731
  exact = jax.grad(lambda t: jnp.sum(jnp.exp(seq_logp(t)) * REWARD))(THETA)
  scores = np.asarray(jax.jacobian(seq_logp)(THETA)).reshape(len(SEQS), -1)  # grad log p(y), per sequence
  p = np.exp(np.asarray(seq_logp(THETA)))
  G, M = 4, 40_000
  draws = np.random.default_rng(5).choice(len(SEQS), size=(M, G), p=p / p.sum())
  adv = np.asarray(sequence.advantages(jnp.asarray(np.asarray(REWARD)[draws].reshape(-1)), G, "rloo")).reshape(M, G)
  estimates = np.einsum("mg,mgk->mk", adv, scores[draws]) / G
  mean, se = estimates.mean(0), estimates.std(0) / np.sqrt(M)
  assert np.all(np.abs(mean - np.asarray(exact).reshape(-1)) < 4 * se + 1e-4), (mean, exact)
  # The GRPO z-score is biased in general; its group mean-centred form (drgrpo) is not: same check.
  adv = np.asarray(sequence.advantages(jnp.asarray(np.asarray(REWARD)[draws].reshape(-1)), G, "drgrpo"))
  estimates = np.einsum("mg,mgk->mk", adv.reshape(M, G), scores[draws]) / G * G / (G - 1)
  assert np.all(np.abs(estimates.mean(0) - np.asarray(exact).reshape(-1)) < 4 * estimates.std(0) / np.sqrt(M) + 1e-4)


def test_advantages_by_enumeration_and_bad_options():
  r = jnp.asarray([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])
  np.testing.assert_allclose(sequence.advantages(r, 3, "drgrpo"), [-1, 0, 1, 4, -2, -2], atol=1e-6)
  np.testing.assert_allclose(sequence.advantages(r, 3, "rloo"), [-1.5, 0, 1.5, 6, -3, -3], atol=1e-6)
  z = np.asarray(sequence.advantages(r, 3, "grpo"))
  np.testing.assert_allclose(z[:3], np.array([-1, 0, 1]) / np.std([1, 2, 3]), rtol=1e-5)
  w = np.asarray(sequence.advantages(r, 3, "reinforce_pp"))
  np.testing.assert_allclose([w.mean(), w.std()], [0, 1], atol=1e-5)
  with pytest.raises(ConfigError, match="advantage='ppo'"):
    sequence.advantages(r, 3, "ppo")
  with pytest.raises(ConfigError, match="dual_clip=0.5"):
    sequence.policy_gradient(MASK, MASK, jnp.zeros(9), MASK, dual_clip=0.5)


def test_dual_clip_bounds_negative_advantage_losses_and_dpo_prefers_the_chosen():
  logp = jnp.asarray([[0.0]])
  old = jnp.asarray([[-3.0]])  # ratio e^3 ~ 20
  terms = sequence.policy_gradient(logp, old, jnp.asarray([-1.0]), jnp.ones((1, 1)), dual_clip=3.0)
  np.testing.assert_allclose(terms.total, 3.0, rtol=1e-6)  # -max(-20, -3) = 3 instead of 20
  d = sequence.dpo(jnp.asarray([-1.0]), jnp.asarray([-3.0]), jnp.asarray([-2.0]), jnp.asarray([-2.0]), beta=0.5)
  np.testing.assert_allclose(d.total, -np.log(1 / (1 + np.exp(-1.0))), rtol=1e-6)
  assert float(d.metrics["accuracy_sum"]) == 1.0


def test_reward_log_p_ref_with_a_kl_penalty_converges_to_the_tilted_reference():
  """Maximising E_p[log p_ref] - beta KL(p || p_ref) has its optimum at p_ref^(1 + 1/beta), normalised. The
  objective's own pieces (k1 KL in the reward, the clipped policy gradient on exact expectations over the 9
  sequences, each weighted by its probability) reach it by gradient descent."""
  q_logp = jax.nn.log_softmax(jnp.asarray(np.random.default_rng(6).normal(size=9) * 1.5, jnp.float32))
  beta = 0.5
  ones = jnp.ones((9, 1))

  def loss(phi):
    logp = jax.nn.log_softmax(phi)[:, None]
    p = jax.lax.stop_gradient(jnp.exp(logp[:, 0]))
    r = sequence.kl_penalised_rewards(q_logp, logp, q_logp[:, None], ones, beta, "k1")
    adv = p * (r - jnp.sum(p * r))  # the exact expectation: each sequence weighted by its probability
    return sequence.policy_gradient(logp, jax.lax.stop_gradient(logp), adv, ones).total

  step = jax.jit(lambda phi: phi - 2.0 * jax.grad(loss)(phi))
  phi = jnp.zeros(9)
  for _ in range(3000):
    phi = step(phi)
  want = jax.nn.softmax((1 + 1 / beta) * q_logp)
  np.testing.assert_allclose(jax.nn.softmax(phi), want, atol=1e-3)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "constant"])
def test_sequences_are_counted_once_whatever_their_mask(aggregation):
  """Counted per sequence with any unit in the loss: gaps in a mask and fractional weights do not change it."""
  logp = jnp.full((3, 4), -1.0)
  mask = jnp.asarray([[1, 0, 1, 0], [0, 0, 0, 0], [0.5, 0.5, 0, 0]], jnp.float32)
  adv = jnp.ones(3)
  assert float(sequence.policy_gradient(logp, logp, adv, mask, aggregation=aggregation).count) == 2.0
  segments = jnp.asarray([[1, 1, 2, 2], [0, 0, 0, 0], [1, 1, 1, 1]])
  packed_mask = jnp.asarray([[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], jnp.float32)
  terms = sequence.policy_gradient(logp, logp, jnp.ones((3, 4)), packed_mask, aggregation=aggregation,
                                   segments_BxN=segments)
  assert float(terms.count) == 3.0
