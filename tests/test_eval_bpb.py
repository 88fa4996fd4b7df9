"""Bits per byte: the evaluator against an explicit per-segment computation, and FLOP counts."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm.data.pipeline import TokenData
from lm.data.tokenizers import ByteTokenizer
from lm.eval import bpb
from lm.models.base import build_model
from lm.train.state import param_count


def test_bpb_equals_per_segment_reference():
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, ["model.num_layers=1", "model.d_model=32", "model.d_ff=64", "data.seq_len=24"])
  c = config_lib.resolve_backend_defaults(c, "cpu")
  tok = ByteTokenizer()
  docs = [b"One sentence. Another one here. And a third!", b"Short.", "caf\u00e9 \u2603".encode()]
  data = TokenData(dict(train=docs, val=docs, test=docs), tok, seq_len=24)
  model = build_model(c.model, tok.vocab_size)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 24), jnp.int32)})["params"])
  result = bpb.evaluate(jax.jit(bpb.make_eval_step(model)), params, data.eval_batches("val", 2))

  full = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": params}, {"inputs": ids}).logits[0]))
  nll, n_bytes = 0.0, 0
  for segment in data.eval_segments(docs):  # each segment alone: [bos] + bytes -> bytes + [eos]
    ids = np.concatenate([[tok.bos_id], tok.encode(segment), [tok.eos_id]])
    padded = np.zeros(24, np.int32)  # causal: right padding cannot change earlier logits; one compile
    padded[: len(ids) - 1] = ids[:-1]
    logp = np.asarray(full(jnp.asarray(padded[None])), np.float64)[: len(ids) - 1]
    nll -= float(np.sum(np.take_along_axis(logp, ids[1:, None], -1)))
    n_bytes += len(segment) + 1
  assert result["n_bytes"] == n_bytes == sum(len(d) for d in docs) + len(data.eval_segments(docs))
  np.testing.assert_allclose(result["nll_sum"], nll, rtol=1e-4)
  np.testing.assert_allclose(result["bpb"], nll / (math.log(2) * n_bytes), rtol=1e-4)


def test_flops_count_every_matmul_parameter_once():
  c = config_lib.load_experiment("token_ntp:tiny")
  model = build_model(config_lib.resolve_backend_defaults(c, "cpu").model, 259)
  params = model.init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 8), jnp.int32)})["params"]
  norms = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
              if "norm" in jax.tree_util.keystr(p))
  flops = bpb.token_flops_per_unit(c.model, 259, seq_len=1)
  m = c.model
  attention = m.num_layers * 2 * m.num_heads * (m.d_model // m.num_heads) * 0.5
  assert flops["forward"] == 2 * (param_count(params) - norms + attention)
  assert flops["train"] == 3 * flops["forward"]


def test_auxiliary_head_flops_count_every_head_matmul_parameter():
  """mtp, dsmtp and top heads: forward FLOPs per unit = 2 x their own matmul parameters + one shared
  unembedding per predicted offset + attention (seq_len 1: half a key), and training counts them."""
  from lm import objectives
  c = config_lib.resolve_backend_defaults(config_lib.load_experiment("token_ntp:tiny"), "cpu")
  m, V = c.model, 259
  padded = -(-V // m.vocab_multiple) * m.vocab_multiple
  E = m.d_model // m.num_heads
  for spec, offsets in ((dict(name="mtp", n=3), 2), (dict(name="dsmtp", depth=2), 2), (dict(name="top"), 1)):
    heads = objectives.heads([dict(name="ntp"), spec])
    model = build_model(m, V, heads=heads)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 8), jnp.int32)})["params"])
    own = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(params[f"{heads[0][0]}_head"])[0]
              if "norm" not in jax.tree_util.keystr(p))
    shared_unembed = 0 if spec["name"] == "top" else offsets * m.d_model * padded  # top owns its kernel
    attention = 0 if spec["name"] == "top" else offsets * 2 * m.num_heads * E * 0.5
    got = bpb.head_flops_per_unit(m, V, seq_len=1, heads=heads)
    assert got == 2 * (own + shared_unembed + attention), spec
    plain = bpb.token_flops_per_unit(m, V, seq_len=1)
    assert bpb.token_flops_per_unit(m, V, seq_len=1, heads=heads)["train"] == 3 * (plain["forward"] + got)
