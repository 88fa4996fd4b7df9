"""KV-cache decoding inside a while_loop against recomputing the full prefix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.decoding.generate import generate, sample_logits
from lm.models.layers import TransformerConfig
from lm.families.token.family import TokenLM
from lm.families.token.heads import DSMTPHead, MTPHead
from lm.objectives import Head


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_greedy_equals_uncached_greedy(scan_layers):
  cfg = TransformerConfig(vocab_size=17, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                          scan_layers=scan_layers, init_std=0.5)
  model = TokenLM(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), {"inputs": jnp.zeros((1, 4), jnp.int32)})["params"])
  prompt = jnp.asarray([[3, 1, 4, 1], [5, 9, 2, 6]], jnp.int32)
  max_new = 12
  cached, lengths = generate(TokenLM(cfg, decode=True), params, prompt, jax.random.PRNGKey(0),
                             max_new=max_new, temperature=0.0)
  # Slow reference: a full forward over the whole prefix for every new token. The prefix is right-padded to
  # a fixed length (causal, so padding after position t cannot change logits at t) to compile once.
  full = jax.jit(lambda ids: model.apply({"params": params}, {"inputs": ids}).logits)
  seq = np.zeros((2, 4 + max_new), np.int32)
  seq[:, :4] = np.asarray(prompt)
  for t in range(4, 4 + max_new):
    seq[:, t] = np.asarray(jnp.argmax(full(jnp.asarray(seq))[:, t - 1], -1))
  np.testing.assert_array_equal(np.asarray(cached), seq[:, 4:])
  assert list(np.asarray(lengths)) == [max_new, max_new]
  assert len(set(np.asarray(cached)[0].tolist())) > 1  # not a degenerate constant continuation


def test_generation_stops_at_eos():
  cfg = TransformerConfig(vocab_size=5, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2, d_ff=32)
  model = TokenLM(cfg, decode=True)
  params = nn.unbox(TokenLM(cfg).init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 2), jnp.int32)})["params"])
  greedy = generate(model, params, jnp.asarray([[1, 2]], jnp.int32), jax.random.PRNGKey(0), max_new=6)[0]
  eos = int(greedy[0, 1])  # declare the second greedy token the end: generation must stop right after it
  out, lengths = generate(model, params, jnp.asarray([[1, 2]], jnp.int32), jax.random.PRNGKey(0), max_new=6,
                          eos_id=eos)
  first = int(np.argmax(np.asarray(out[0]) == eos))
  assert int(lengths[0]) == first + 1
  assert np.all(np.asarray(out[0, first:]) == eos)


def test_top_k_and_top_p_restrict_the_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  topk = {int(sample_logits(logits, k, 1.0, top_k=2)[0]) for k in keys}
  topp = {int(sample_logits(logits, k, 1.0, top_p=0.7)[0]) for k in keys}
  full = {int(sample_logits(logits, k, 1.0)[0]) for k in keys}
  assert topk == {0, 1} and topp == {0, 1} and full == {0, 1, 2, 3}
  assert int(sample_logits(logits, keys[0], 0.0)[0]) == 0


def _mtp_decoder(n=4, seed=0, layers=2, kind="mtp"):
  heads = (Head("mtp", MTPHead, (("n", n),)),) if kind == "mtp" else (Head("dsmtp", DSMTPHead, (("depth", n),)),)
  cfg = TransformerConfig(vocab_size=40, d_model=32, num_layers=layers, num_heads=2, num_kv_heads=2, d_ff=64,
                          scan_unroll=layers)
  model = TokenLM(cfg, decode=True, heads=heads)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = TokenLM(cfg, heads=heads).init(jax.random.PRNGKey(seed), {"inputs": ids})["params"]
  return model, params


@pytest.mark.parametrize("kind, n, seed", [("mtp", 2, 0), ("mtp", 4, 1), ("dsmtp", 1, 2)])
def test_self_speculative_greedy_equals_plain_greedy(kind, n, seed):
  from lm.families.token.speculative import speculative_greedy
  model, params = _mtp_decoder(n, seed, kind=kind)
  # Scale the weights up so random models make confident, varied predictions (drafts sometimes agree).
  params = jax.tree.map(lambda p: p * 4.0, params)
  rng = np.random.default_rng(seed)
  for P, eos in ((6, 7),):  # 16 prompts, rows of different lengths when eos stops them
    prompt = jnp.asarray(rng.integers(0, 39, (16, P)), jnp.int32)
    plain, plain_len = generate(model, params, prompt, jax.random.PRNGKey(0), max_new=24, eos_id=eos)
    spec, spec_len, passes = speculative_greedy(model, params, prompt, max_new=24, eos_id=eos)
    np.testing.assert_array_equal(np.asarray(spec), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(spec_len), np.asarray(plain_len))
    assert 1 <= int(passes) <= 24


@pytest.mark.parametrize("experiment, floor", [("token_mtp:tiny", 1.5), ("token_dsmtp:tiny", 1.3)])
def test_speculative_decoding_accepts_drafts_of_a_predictable_model(tmp_path, experiment, floor):
  """Trained with `mtp` (or `dsmtp`) on a periodic text, the heads draft correctly: well over one unit per
  pass (at most 4 with mtp n=4, 2 with one dsmtp module)."""
  from lm import config as config_lib
  from lm.families.token.speculative import speculative_greedy
  from lm.train import loop
  for i in range(8):
    (tmp_path / f"{i}.txt").write_text(f"{i} " + "the cat sat on the mat. " * 60)
  c = config_lib.load_experiment(experiment)
  config_lib.apply_overrides(c, [
      f"data.source={tmp_path}", "data.val_fraction=0.25", "data.test_fraction=0", "data.seq_len=32",
      "data.batch_size=8", "model.num_layers=2", "model.d_model=32", "model.d_ff=64", "model.num_heads=2",
      "model.num_kv_heads=2", "train.steps=60", "optim.lr=1e-2", "optim.warmup_steps=5", "train.log_every=60",
      "train.checkpoint_every=0", "eval.max_batches=1", "sample.max_new=0"])
  summary = loop.train(c, str(tmp_path / "w"))
  run, params = summary["run"], summary["state"].params
  decoder = run.decode_model()
  prompt = jnp.asarray([[run.tokenizer.bos_id, *b"the cat "]], jnp.int32)
  plain, _ = generate(decoder, params, prompt, jax.random.PRNGKey(0), max_new=48)
  spec, lengths, passes = speculative_greedy(decoder, params, prompt, max_new=48)
  np.testing.assert_array_equal(np.asarray(spec), np.asarray(plain))
  assert int(lengths[0]) / int(passes) > floor, (bytes(np.asarray(plain[0]).astype(np.uint8)), int(passes))
