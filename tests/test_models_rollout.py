"""The log-prob sampler: its log-probabilities equal teacher-forced ones under the same processing, left-padded
rows decode as unpadded ones, and it draws from the distribution it reports."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.families.token.family import TokenLM
from lm.decoding import rollout
from lm.decoding.generate import generate
from lm.models.layers import TransformerConfig

CFG = TransformerConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64, init_std=0.3)


@pytest.fixture(scope="module")
def model_params():
  model = TokenLM(CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), {"inputs": jnp.zeros((1, 4), jnp.int32)})["params"])
  return model, TokenLM(CFG, decode=True), params


PROMPTS = [np.array([3, 1, 4, 1, 5]), np.array([9]), np.array([2, 6, 5])]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 5, 1.0)])
def test_sampled_log_probs_equal_teacher_forced_ones(model_params, temperature, top_k, top_p):
  model, dec, params = model_params
  prompt, lengths = rollout.left_pad(PROMPTS, pad_id=0)
  ids, logp, n = rollout.sample(dec, params, jnp.asarray(prompt), jnp.asarray(lengths), jax.random.PRNGKey(3),
                                max_new=10, temperature=temperature, top_k=top_k, top_p=top_p,
                                stop_ids=jnp.asarray([7]), group=3)
  ids, logp, n = np.asarray(ids), np.asarray(logp), np.asarray(n)
  assert ids.shape == (9, 10) and np.all(np.isfinite(logp)) and np.all(logp <= 0)
  for row in range(9):  # a row ends at its first stop id, inclusive
    stops = np.flatnonzero(ids[row, :n[row]] == 7)
    assert (stops.size == 0 and n[row] == 10) or (stops.size == 1 and stops[0] == n[row] - 1)
    assert np.all(logp[row, n[row]:] == 0)
  forced = rollout.score(model, params, jnp.repeat(jnp.asarray(prompt), 3, 0), jnp.repeat(jnp.asarray(lengths), 3),
                         jnp.asarray(ids), jnp.asarray(n), temperature=temperature, top_k=top_k, top_p=top_p)
  np.testing.assert_allclose(np.asarray(forced), logp, atol=2e-5)
  assert len({tuple(r) for r in ids[:3]}) > 1  # a group's samples differ


def test_left_padded_rows_decode_as_unpadded_ones(model_params):
  _, dec, params = model_params
  prompt, lengths = rollout.left_pad(PROMPTS, pad_id=0)
  ids, logp, _ = rollout.sample(dec, params, jnp.asarray(prompt), jnp.asarray(lengths), jax.random.PRNGKey(0),
                                max_new=8, temperature=0.0)
  assert np.all(np.asarray(logp) == 0)  # greedy: the processed distribution is a point mass
  for row, p in enumerate(PROMPTS):
    alone, _ = generate(dec, params, jnp.asarray(p)[None], jax.random.PRNGKey(0), max_new=8, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(ids)[row], np.asarray(alone)[0])


def test_draws_follow_the_reported_distribution(model_params):
  _, dec, params = model_params
  prompt, lengths = rollout.left_pad([PROMPTS[0]], pad_id=0)
  ids, logp, _ = rollout.sample(dec, params, jnp.asarray(prompt), jnp.asarray(lengths), jax.random.PRNGKey(5),
                                max_new=1, temperature=0.8, top_p=0.8, group=4000)
  first, logp = np.asarray(ids)[:, 0], np.asarray(logp)[:, 0]
  probs = {int(u): float(np.exp(lp)) for u, lp in zip(first, logp)}
  assert abs(sum(probs.values()) - 1) < 1e-3 or sum(probs.values()) <= 1 + 1e-3  # support within the nucleus
  for unit, p in probs.items():  # each drawn unit's frequency within 4 standard errors of its probability
    freq = np.mean(first == unit)
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(first)) + 1e-3, (unit, freq, p)


def test_processed_log_probs_edge_cases():
  logits = jnp.asarray([[2.0, 1.0, 0.5, -1.0]])
  np.testing.assert_allclose(rollout.processed_log_probs(logits), jax.nn.log_softmax(logits), atol=1e-6)
  greedy = np.asarray(rollout.processed_log_probs(logits, temperature=0.0))
  assert greedy[0, 0] == 0 and np.all(np.isneginf(greedy[0, 1:]))
  top2 = np.asarray(rollout.processed_log_probs(logits, top_k=2))
  np.testing.assert_allclose(np.exp(top2[0, :2]).sum(), 1.0, atol=1e-6)
  assert np.all(np.isneginf(top2[0, 2:]))
  with pytest.raises(ValueError, match="at least one unit"):
    rollout.left_pad([np.array([1]), np.array([], np.int64)], 0)
