"""Loss protocol: sums and counts against numpy, composition, schedules."""

import dataclasses
import math

import flax.linen as nn
import jax

import jax.numpy as jnp
import numpy as np
import pytest

from lm import objectives
from lm.errors import ConfigError
from lm.models.base import ModelOutputs
from lm.objectives.base import LossContext


def _case(seed=0, B=2, T=5, V=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, T, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  mask = (rng.random((B, T)) > 0.3).astype(np.int32)
  unit_bytes = rng.integers(0, 4, size=V).astype(np.float32)
  batch = dict(targets=jnp.asarray(targets), loss_mask=jnp.asarray(mask))
  ctx = LossContext(step=jnp.asarray(0), unit_bytes=jnp.asarray(unit_bytes))
  return ModelOutputs(head_logits=jnp.asarray(logits)), batch, ctx, (logits, targets, mask, unit_bytes)


def _ref_nll(logits, targets):
  l = logits.astype(np.float64)
  logz = np.log(np.exp(l - l.max(-1, keepdims=True)).sum(-1)) + l.max(-1)
  return logz - np.take_along_axis(l, targets[..., None], -1)[..., 0], logz


def test_ntp_sums_and_counts_match_numpy():
  outputs, batch, ctx, (logits, targets, mask, unit_bytes) = _case()
  terms = objectives.build([dict(name="ntp")])(outputs, batch, ctx)
  nll, _ = _ref_nll(logits, targets)
  np.testing.assert_allclose(terms.total, (nll * mask).sum(), rtol=1e-5)
  assert float(terms.count) == mask.sum()
  np.testing.assert_allclose(terms.metrics["ntp/n_bytes"], (unit_bytes[targets] * mask).sum())
  acc = ((logits.argmax(-1) == targets) * mask).sum()
  assert float(terms.metrics["ntp/accuracy_sum"]) == acc
  summary = objectives.summarize({k: float(v) for k, v in terms.metrics.items()})
  np.testing.assert_allclose(summary["ntp/bpb"], (nll * mask).sum() / math.log(2) / (unit_bytes[targets] * mask).sum(),
                             rtol=1e-5)


def test_ntp_z_loss_and_label_smoothing():
  outputs, batch, ctx, (logits, targets, mask, _) = _case(1)
  terms = objectives.build([dict(name="ntp", z_loss=1e-2, label_smoothing=0.1)])(outputs, batch, ctx)
  nll, logz = _ref_nll(logits, targets)
  smooth = logz - logits.astype(np.float64).mean(-1)
  want = ((0.9 * nll + 0.1 * smooth + 1e-2 * logz ** 2) * mask).sum()
  np.testing.assert_allclose(terms.total, want, rtol=1e-5)
  np.testing.assert_allclose(terms.metrics["ntp/nll_sum"], (nll * mask).sum(), rtol=1e-5)  # nll stays pure


def test_sums_combine_exactly_across_splits():
  """Sum of the protocol over two halves of a batch == the protocol over the whole batch."""
  outputs, batch, ctx, _ = _case(2, B=4)
  loss = objectives.build([dict(name="ntp")])
  whole = loss(outputs, batch, ctx)
  halves = [loss(ModelOutputs(head_logits=outputs.logits[s]), {k: v[s] for k, v in batch.items()}, ctx)
            for s in (slice(0, 2), slice(2, 4))]
  np.testing.assert_allclose(whole.total, sum(h.total for h in halves), rtol=1e-6)
  assert float(whole.count) == sum(float(h.count) for h in halves)


def test_composition_weights_terms_and_keeps_metrics_per_label():
  outputs, batch, ctx, _ = _case(3)
  one = objectives.build([dict(name="ntp")])(outputs, batch, ctx)
  two = objectives.build([dict(name="ntp"), dict(name="ntp", label="aux", weight=0.5)])(outputs, batch, ctx)
  np.testing.assert_allclose(two.total, 1.5 * one.total, rtol=1e-6)
  assert float(two.count) == float(one.count)
  assert "aux/nll_sum" in two.metrics and "ntp/nll_sum" in two.metrics


def test_weight_schedules():
  lin = objectives.schedule(dict(kind="linear", start=0.0, end=1.0, steps=10))
  assert float(lin(jnp.asarray(5))) == pytest.approx(0.5) and float(lin(jnp.asarray(50))) == 1.0
  step = objectives.schedule(dict(kind="step", values=[0.3, 0.1], boundaries=[100]))
  assert float(step(jnp.asarray(99))) == pytest.approx(0.3) and float(step(jnp.asarray(100))) == pytest.approx(0.1)
  assert float(objectives.schedule(2)(jnp.asarray(0))) == 2.0


def test_unknown_objective_and_option_name_the_nearest():
  with pytest.raises(ConfigError, match="did you mean 'ntp'"):
    objectives.build([dict(name="ntpp")])
  with pytest.raises(ConfigError, match="did you mean 'z_loss'"):
    objectives.build([dict(name="ntp", zloss=1.0)])
  with pytest.raises(ConfigError, match="linear"):
    objectives.schedule(dict(kind="cosine"))


@pytest.mark.parametrize("tied,vocab,z_loss,smoothing", [(True, 37, 0.0, 0.0), (False, 40, 1e-3, 0.1)])
def test_chunked_loss_equals_direct_loss_and_gradient(tied, vocab, z_loss, smoothing):
  """The token model with `logits_chunk` (tiles of positions, lazy logits) against the same params dense:
  loss, metrics and every gradient to 1e-6 in float32, the padded vocabulary masked in both."""
  from lm.families.token.family import TokenLM
  from lm.models.layers import TransformerConfig
  cfg = TransformerConfig(vocab_size=vocab, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, d_ff=32,
                          tie_embeddings=tied, vocab_multiple=16)
  rng = np.random.default_rng(0)
  B, T = 3, 24
  seg = np.ones((B, T), np.int32)
  seg[1, 10:] = 2
  batch = dict(inputs=rng.integers(0, vocab, (B, T)), targets=rng.integers(0, vocab, (B, T)), segment_ids=seg,
               positions=np.tile(np.arange(T), (B, 1)), loss_mask=(rng.random((B, T)) < 0.8).astype(np.int32))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  params = nn.unbox(TokenLM(cfg).init(jax.random.PRNGKey(0), batch))["params"]
  loss = objectives.build([dict(name="ntp", z_loss=z_loss, label_smoothing=smoothing)])
  c = LossContext(step=jnp.asarray(0), unit_bytes=jnp.ones((cfg.padded_vocab,), jnp.float32))

  def run(chunk):
    model = TokenLM(dataclasses.replace(cfg, logits_chunk=chunk))
    def total(p):
      terms = loss(model.apply({"params": p}, batch), batch, c)
      return terms.total, terms.metrics
    return jax.value_and_grad(total, has_aux=True)(params)

  (want, want_m), want_g = run(0)
  for chunk in (8, 5):  # 5 -> tiles of 4 (the largest divisor of T not above it)
    (got, got_m), got_g = run(chunk)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for k in want_m:
      np.testing.assert_allclose(float(got_m[k]), float(want_m[k]), rtol=1e-6, err_msg=k)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got_g)[0], jax.tree.leaves(want_g)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6,
                                 err_msg=jax.tree_util.keystr(path))


def test_lazy_outputs_give_the_dense_logits():
  from lm.families.token.family import TokenLM, logits_chunk
  from lm.models.layers import TransformerConfig
  cfg = TransformerConfig(vocab_size=30, d_model=8, num_layers=1, num_heads=2, num_kv_heads=2, d_ff=16,
                          vocab_multiple=16)
  batch = {"inputs": jnp.arange(12, dtype=jnp.int32).reshape(2, 6)}
  params = nn.unbox(TokenLM(cfg).init(jax.random.PRNGKey(1), batch))["params"]
  dense = TokenLM(cfg).apply({"params": params}, batch)
  lazy = TokenLM(dataclasses.replace(cfg, logits_chunk=2)).apply({"params": params}, batch)
  assert lazy.head_logits is None and lazy.logits.shape == (2, 6, 32)
  np.testing.assert_allclose(np.asarray(lazy.logits), np.asarray(dense.logits), rtol=1e-6, atol=1e-6)
  assert float(lazy.logits[0, 0, 30]) < -1e8  # padded vocabulary entries masked
  assert logits_chunk(0, 128256, 8192) == 130 and logits_chunk(0, 264, 1024) == 0 and logits_chunk(-1, 10**6, 8) == 0


def test_step_schedule_at_fractions_follows_the_runs_own_steps():
  """token_dsmtp's lambda switch (0.3 -> 0.1 at 90% of train.steps) moves with train.steps changed after
  loading, as benchmarks change them; an unresolved `at` schedule is refused in one line."""
  from lm import config as config_lib
  from lm.train import history
  config = config_lib.load_experiment("token_dsmtp:tiny")
  for steps, switch in ((200, 180), (150, 135), (609, 548)):
    config.train.steps = steps
    weight = config_lib.resolve_backend_defaults(config, "cpu").objectives[1]["weight"]
    lam = objectives.schedule(weight)
    assert weight["boundaries"] == [switch]
    assert float(lam(jnp.asarray(switch - 1))) == pytest.approx(0.3)
    assert float(lam(jnp.asarray(switch))) == pytest.approx(0.1)
  with pytest.raises(ConfigError, match="give boundaries"):
    objectives.build(config.objectives)
  # A resume that lengthens the run moves the switch with it, as it does the learning-rate schedule.
  short, long = (config_lib.resolve_backend_defaults(config, "cpu").to_dict() for config.train.steps in (150, 300))
  assert set(history.changes(short, long)) == {"train.steps"}
