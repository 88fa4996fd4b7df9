"""Byte-level probabilities of token models by cover sets (`lm/decoding/bytes.py`): against brute-force sums
over token sequences of a toy model whose non-canonical tokenizations carry real mass."""

import functools
import itertools

import numpy as np
import pytest

from lm.decoding import bytes as bytes_lib

VOCAB = [b"a", b"b", b" ", b"ab", b"ba", b"a b", b"abb", b"", b""]  # 7 = eos, 8 = bos (masked)
EOS, BOS = 7, 8
BYTE_IDS = [v for v, u in enumerate(VOCAB) if u]


def toy_model(vocab_size, salt, scale=2.0):
  """next_log_probs with deterministic pseudo-random logits that depend on the whole prefix."""
  @functools.lru_cache(maxsize=None)
  def row(prefix):
    logits = scale * np.random.default_rng([salt, len(prefix), *prefix]).normal(size=vocab_size)
    return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()

  calls = []

  def next_log_probs(prefixes):
    calls.append(len(prefixes))
    return np.stack([row(tuple(p)) for p in prefixes])
  next_log_probs.calls = calls
  return next_log_probs


def greedy_encode(vocab, eos):
  units = sorted(((u, v) for v, u in enumerate(vocab) if u and v != eos), key=lambda x: -len(x[0]))

  def encode(text):
    ids, i = [], 0
    while i < len(text):
      u, v = next((u, v) for u, v in units if text.startswith(u, i))
      ids.append(v)
      i += len(u)
    return ids
  return encode


def masked(row):
  """Reference masking: drop bos, renormalise over byte ids + eos."""
  p = np.exp(row[: len(VOCAB)].astype(np.float64))
  p[BOS] = 0.0
  with np.errstate(divide="ignore"):
    return np.log(p / p.sum())


@pytest.fixture(scope="module")
def model_fn():
  return toy_model(len(VOCAB), salt=1)


@pytest.fixture(scope="module")
def sequences(model_fn):
  """Every token sequence of at most 5 non-eos tokens: {tuple: (log P(tuple as a prefix), log p(eos | tuple))}."""
  out, frontier = {}, [((), 0.0)]
  for depth in range(6):
    nxt = []
    for t, lp in frontier:
      row = masked(model_fn([t])[0])
      out[t] = (lp, lp + row[EOS])
      if depth < 5:
        nxt += [(t + (v,), lp + row[v]) for v in BYTE_IDS]
    frontier = nxt
  return out


def decode(t, vocab=VOCAB):
  return b"".join(vocab[v] for v in t)


STRINGS = [bytes(s) for n in range(6) for s in itertools.product(b"ab ", repeat=n)]


def test_prefix_and_string_probabilities_match_brute_force(model_fn, sequences):
  omega = {m: {} for m in range(6)}  # Ω_m as {bytes: [log mass]}: m non-eos tokens, or fewer then eos
  ends = {}  # {bytes: [log P(seq) p(eos | seq)]} over sequences of at most 5 tokens
  for t, (lp, lp_eos) in sequences.items():
    s = decode(t)
    ends.setdefault(s, []).append(lp_eos)
    omega[len(t)].setdefault(s, []).append(lp)
    for m in range(len(t) + 1, 6):
      omega[m].setdefault(s, []).append(lp_eos)
  model = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  for b in STRINGS:
    ref = np.logaddexp.reduce([lp for s, lps in omega[len(b)].items() if s.startswith(b) for lp in lps])
    np.testing.assert_allclose(model.prefix_log_prob(b), ref, rtol=0, atol=1e-10)
    ref = np.logaddexp.reduce(ends.get(b, [-np.inf]))
    np.testing.assert_allclose(model.log_prob(b), ref, rtol=0, atol=1e-10)
  assert model.prefix_log_prob(b"") == 0.0 and len(STRINGS) == 364


def test_next_byte_normalised_and_telescopes(model_fn):
  model = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  for b in [b"", b"a", b"a ", b"ab", b"abb", b"b a", b"ba b", b"a ba", b"ab ab"]:  # "a " cuts "a b", "ab" cuts "abb"
    lp = model.next_byte_log_probs(b)
    assert lp.shape == (257,) and lp.dtype == np.float64
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=0, atol=1e-12)
    assert np.all(np.isneginf(np.delete(lp, [ord("a"), ord("b"), ord(" "), 256])))
    for c in b"ab ":  # P(c | b) = P(b + c) / P(b)
      np.testing.assert_allclose(lp[c], model.prefix_log_prob(b + bytes([c])) - model.prefix_log_prob(b), atol=1e-10)
  for text in [b"ab a", b"a b", b"bba"]:
    total = sum(model.next_byte_log_probs(text[:i])[text[i]] for i in range(len(text)))
    total += model.next_byte_log_probs(text)[256]
    np.testing.assert_allclose(total, model.log_prob(text), rtol=0, atol=1e-10)


def test_covers_are_disjoint_minimal_prefixes(model_fn):
  model = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  for b in [b"a", b"ab", b"a b", b"abba", b"ab ab"]:
    cover = model.covers(b)
    seqs = [t for t, _ in cover]
    assert len(set(seqs)) == len(seqs)
    for t in seqs:
      assert decode(t).startswith(b) and len(decode(t[:-1])) < len(b) and b.startswith(decode(t[:-1]))
      assert not any(s != t and s[: len(t)] == t for s in seqs)
    np.testing.assert_allclose(np.logaddexp.reduce([lp for _, lp in cover]), model.prefix_log_prob(b), atol=1e-12)
  assert model.covers(b"") == [((), 0.0)]


def test_baselines_at_boundaries_and_mid_token():
  vocab = [b"a", b"b", b" ", b"", b""]  # no token extends another: one tokenization per string
  fn = toy_model(len(vocab), salt=2)
  encode = greedy_encode(vocab, 3)
  model = bytes_lib.ByteModel(fn, vocab, 3)
  for b in [b"", b"a", b"ab ", b"b a"]:
    exact = model.next_byte_log_probs(b)
    np.testing.assert_allclose(bytes_lib.naive_next_byte_log_probs(fn, vocab, 3, encode, b), exact, atol=1e-12)
    np.testing.assert_allclose(bytes_lib.token_healing_next_byte_log_probs(fn, vocab, 3, encode, b), exact,
                               atol=1e-12)

  fn = toy_model(len(VOCAB), salt=1)
  encode = greedy_encode(VOCAB, EOS)
  model = bytes_lib.ByteModel(fn, VOCAB, EOS)
  exact = model.next_byte_log_probs(b"a ")  # cuts the token "a b"
  naive = bytes_lib.naive_next_byte_log_probs(fn, VOCAB, EOS, encode, b"a ")
  healing = bytes_lib.token_healing_next_byte_log_probs(fn, VOCAB, EOS, encode, b"a ")
  for lp in (naive, healing):
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, atol=1e-12)
  assert np.max(np.abs(np.exp(exact) - np.exp(naive))) > 1e-3
  # A one-token prefix: healing backs up to the start, where the only path is the canonical one -> exact.
  np.testing.assert_allclose(bytes_lib.token_healing_next_byte_log_probs(fn, VOCAB, EOS, encode, b"a"),
                             model.next_byte_log_probs(b"a"), atol=1e-12)


def test_beam_is_a_lower_bound(model_fn):
  exact = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  for b in [b"abab", b"a ba b", b"abba"]:
    ref = exact.prefix_log_prob(b)
    for k in (1, 2, 4):
      assert bytes_lib.ByteModel(model_fn, VOCAB, EOS, beam=k).prefix_log_prob(b) <= ref + 1e-12
    np.testing.assert_allclose(bytes_lib.ByteModel(model_fn, VOCAB, EOS, beam=10**6).prefix_log_prob(b), ref,
                               atol=1e-12)
    lp = bytes_lib.ByteModel(model_fn, VOCAB, EOS, beam=1).next_byte_log_probs(b)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, atol=1e-12)
  assert bytes_lib.ByteModel(model_fn, VOCAB, EOS, beam=1).prefix_log_prob(b"a ba b") < exact.prefix_log_prob(
      b"a ba b") - 1e-6


def test_ensemble(model_fn):
  model = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  byte_vocab = [bytes([i]) for i in range(256)] + [b""]
  byte_model = bytes_lib.ByteModel(toy_model(len(byte_vocab), salt=3), byte_vocab, 256)
  for b in [b"", b"a ", b"ab b"]:
    np.testing.assert_allclose(bytes_lib.ensemble_next_byte_log_probs([model, model], b),
                               model.next_byte_log_probs(b), atol=1e-12)
    mix = bytes_lib.ensemble_next_byte_log_probs([model, byte_model], b, weights=[3.0, 1.0])
    np.testing.assert_allclose(np.exp(mix).sum(), 1.0, atol=1e-12)
    ref = 0.75 * np.exp(model.next_byte_log_probs(b)) + 0.25 * np.exp(byte_model.next_byte_log_probs(b))
    np.testing.assert_allclose(np.exp(mix), ref, atol=1e-12)


def test_forward_passes_and_batching():
  fn = toy_model(len(VOCAB), salt=4)
  model = bytes_lib.ByteModel(fn, VOCAB, EOS)
  assert model.prefix_log_prob(b"") == 0.0 and model.forward_passes() == 0
  model.prefix_log_prob(b"a")  # the root only: a, ab, a b, abb cover it
  assert model.forward_passes() == 1 and fn.calls == [1]
  model.prefix_log_prob(b"ab")  # root, then (a,) -> (a, b)
  assert model.forward_passes() == 3 and fn.calls == [1, 1, 1]
  before = len(fn.calls)
  model.prefix_log_prob(b"abab")  # one call per depth, every frontier prefix batched
  assert len(fn.calls) - before <= 4
  model.next_byte_log_probs(b"ab")  # the search, then one batched step for the covers ending on "ab"
  assert model.forward_passes() == sum(fn.calls)
  # Special rows: the bos column gets no mass and the rest is renormalised.
  lp = bytes_lib.renormalize_log_probs(fn([(), (0,)]), model.keep_V)
  assert lp.dtype == np.float64 and np.all(np.isneginf(lp[:, BOS]))
  np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-12)


def _tokenizations(text, vocab):
  """Every sequence of byte-carrying ids whose bytes are `text` (brute force)."""
  if not text:
    return [()]
  return [(v,) + rest for v, u in enumerate(vocab) if u and text.startswith(u)
          for rest in _tokenizations(text[len(u):], vocab)]


@pytest.mark.parametrize("text", [b"ab", b"abba", b"a bab", b"ba ab"])
def test_text_log_prob_sums_every_tokenization_position_by_position(model_fn, text):
  raw = lambda t: float(sum(model_fn([t[:i]])[0][t[i]] for i in range(len(t))) + model_fn([t])[0][EOS])  # noqa: E731
  tokenizations = _tokenizations(text, [u if v != EOS else b"" for v, u in enumerate(VOCAB)])
  want = np.logaddexp.reduce([raw(t) for t in tokenizations])
  model = bytes_lib.ByteModel(model_fn, VOCAB, EOS)
  assert abs(model.text_log_prob(text) - want) < 1e-10
  assert abs(model.text_log_prob(text, raw=False) - model.log_prob(text)) < 1e-10  # renormalised: the cover's
  canonical = tuple(greedy_encode(VOCAB, EOS)(text))
  for k in (1, 2):  # a beam keeps the canonical path: between it and the exact sum
    got = bytes_lib.ByteModel(model_fn, VOCAB, EOS).text_log_prob(text, beam=k, keep=canonical)
    assert raw(canonical) - 1e-12 <= got <= want + 1e-12
  assert len(tokenizations) > 1
