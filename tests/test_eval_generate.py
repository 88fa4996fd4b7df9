"""KV-cache decoding inside a while_loop against recomputing the full prefix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.eval.generate import generate, sample_logits
from lm.models.layers import TransformerConfig
from lm.models.token import TokenLM


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
