"""Beam search, diverse beam search and MBR against every sequence of a tiny model, enumerated."""

import jax.numpy as jnp
import numpy as np
import pytest

from lm.decoding import exact, search

PROMPT = jnp.zeros((1, 1), jnp.int32)  # the context the enumeration uses: [0]
LENGTHS = jnp.ones((1,), jnp.int32)


def _ranked(seqs, length_penalty):
  return sorted(seqs, key=lambda s: -s[1] / len(s[0]) ** length_penalty)


def _as_tuples(ids_KxN, lengths_K):
  return [tuple(int(u) for u in ids[:n]) for ids, n in zip(np.asarray(ids_KxN), np.asarray(lengths_K))]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_wider_than_the_space_returns_the_exact_ranking(tiny_token_model, length_penalty):
  V, eos, N = 3, 2, 4
  _, decode_model, params, next_lp = tiny_token_model(V)
  seqs = exact.enumerate_sequences(next_lp, eos, N)
  assert abs(exact.logsumexp([lp for _, lp in seqs])) < 1e-5  # Ω(N) carries all the mass
  K = len(seqs) + 3  # wider than every level of the search tree
  ids, lengths, logp, score, passes = search.beam_search(decode_model, params, PROMPT, LENGTHS, beams=K, max_new=N,
                                                         eos_id=eos, length_penalty=length_penalty)
  want = _ranked(seqs, length_penalty)
  got = _as_tuples(ids[0], lengths[0])[:len(seqs)]
  assert got == [x for x, _ in want]
  np.testing.assert_allclose(np.asarray(logp[0, :len(seqs)]), [lp for _, lp in want], atol=1e-4)
  np.testing.assert_allclose(np.asarray(score[0, :len(seqs)]), [lp / len(x) ** length_penalty for x, lp in want],
                             atol=1e-4)
  assert np.all(np.isneginf(np.asarray(score[0, len(seqs):])))  # the pool's unused slots
  assert passes == N  # the prefill and N - 1 steps: the last selection needs no model call


def test_narrow_beam_keeps_the_best_of_what_it_explored_and_batches_prompts(tiny_token_model):
  V, eos, N = 4, 3, 5
  _, decode_model, params, next_lp = tiny_token_model(V, seed=1)
  seqs = exact.enumerate_sequences(next_lp, eos, N)
  best = max(seqs, key=lambda s: s[1])
  prompts = jnp.array([[1, 0], [0, 0]], jnp.int32)  # row 1 is the prompt [0] left-padded
  lengths = jnp.array([2, 1], jnp.int32)
  ids, lengths_out, logp, _, _ = search.beam_search(decode_model, params, prompts, lengths, beams=3, max_new=N,
                                                    eos_id=eos, length_penalty=0.0)
  top = _as_tuples(ids[1], lengths_out[1])
  assert logp[1, 0] <= best[1] + 1e-5
  lookup = dict(seqs)
  for x, lp in zip(top, np.asarray(logp[1])):  # every returned log p is the model's own
    assert abs(lookup[x] - lp) < 1e-4
  alone = search.beam_search(decode_model, params, PROMPT, LENGTHS, beams=3, max_new=N, eos_id=eos,
                             length_penalty=0.0)
  assert top == _as_tuples(alone[0][0], alone[1][0])  # a left-padded row decodes as the prompt alone
  np.testing.assert_allclose(np.asarray(logp[1]), np.asarray(alone[2][0]), atol=1e-5)


def test_diverse_beam_with_zero_strength_is_plain_beam_per_group(tiny_token_model):
  V, eos, N = 4, 3, 4
  _, decode_model, params, _ = tiny_token_model(V, seed=2)
  prompts, lengths = jnp.array([[0, 0], [2, 1]], jnp.int32), jnp.array([1, 2], jnp.int32)  # two prompts
  plain = search.beam_search(decode_model, params, prompts, lengths, beams=2, max_new=N, eos_id=eos)
  diverse = search.beam_search(decode_model, params, prompts, lengths, beams=6, groups=3, diversity=0.0,
                               max_new=N, eos_id=eos)
  for b in range(2):
    for g in range(3):
      np.testing.assert_array_equal(np.asarray(diverse[0][b, 2 * g:2 * g + 2]), np.asarray(plain[0][b]))
      np.testing.assert_allclose(np.asarray(diverse[2][b, 2 * g:2 * g + 2]), np.asarray(plain[2][b]), atol=1e-6)
  assert not np.array_equal(np.asarray(plain[0][0]), np.asarray(plain[0][1]))
  with pytest.raises(ValueError, match="equal groups"):
    search.beam_search(decode_model, params, prompts, lengths, beams=5, groups=2, max_new=N, eos_id=eos)


def test_diverse_beam_penalty_separates_the_groups(tiny_token_model):
  V, eos, N = 4, 3, 3
  _, decode_model, params, _ = tiny_token_model(V, seed=2)
  ids, lengths, _, _, _ = search.beam_search(decode_model, params, PROMPT, LENGTHS, beams=2, groups=2,
                                             diversity=100.0, max_new=N, eos_id=eos)
  first, second = _as_tuples(ids[0], lengths[0])
  assert first[0] != second[0]  # the second group may not open with the unit the first group chose


def test_mbr_exact_match_is_the_mode_and_over_the_support_the_map(tiny_token_model):
  _, _, _, next_lp = tiny_token_model(3)
  seqs = exact.enumerate_sequences(next_lp, 2, 3)
  texts = [str(x) for x, _ in seqs]
  weights = np.exp([lp for _, lp in seqs])
  index, expected = search.mbr(texts, texts, weights, "exact")
  assert index == int(np.argmax(weights))
  np.testing.assert_allclose(expected, weights)
  samples = ["a", "b", "a", "c", "b", "a"]
  assert samples[search.mbr(samples)[0]] == "a"


def test_chrf_bounds_and_order():
  assert search.chrf("the cat", "the cat") == 1.0
  assert search.chrf("xyz", "abc") == 0.0
  assert search.chrf("the cat sat", "the cat sits") > search.chrf("a dog ran", "the cat sits") >= 0.0


def test_mbr_takes_a_utility_by_module_path_or_function():
  samples = ["abc", "abd", "xyz"]
  assert search.mbr(["b", "a", "a"], utility="operator:eq")[0] == 1  # a function a module names
  with pytest.raises(Exception, match="must return a number"):  # checked as it is used, never probed
    search.mbr(["a", "b"], utility="difflib:SequenceMatcher")
  with pytest.raises(Exception, match=r"function of \(hypothesis, reference\)"):  # by signature
    search.utility_fn("os:getcwd")
  by_length = lambda h, r: -abs(len(h) - len(r)) - (h == "xyz")  # noqa: E731
  assert search.mbr(samples, utility=by_length)[0] == 0
  with pytest.raises(Exception, match="pkg.module:function"):
    search.utility_fn("nope")
  with pytest.raises(Exception, match="cannot import"):
    search.utility_fn("no_such_module:f")
