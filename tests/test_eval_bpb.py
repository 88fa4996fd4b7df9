"""Bits per byte (`lm/eval/bpb.py`): the evaluator against an explicit per-segment computation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm.data.pipeline import TokenData
from lm.data.tokenizers import ByteTokenizer
from lm.eval import bpb
from lm import families


def test_bpb_equals_per_segment_reference():
  c = config_lib.load_experiment("token_ntp:tiny")
  config_lib.apply_overrides(c, ["model.num_layers=1", "model.d_model=32", "model.d_ff=64", "data.seq_len=24"])
  c = config_lib.resolve_backend_defaults(c, "cpu")
  tok = ByteTokenizer()
  docs = [b"One sentence. Another one here. And a third!", b"Short.", "caf\u00e9 \u2603".encode()]
  data = TokenData(dict(train=docs, val=docs, test=docs), tok, seq_len=24)
  family = families.get("token")
  model = family.build_model(c, tok.vocab_size)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 24), jnp.int32)})["params"])
  result = bpb.evaluate(jax.jit(family.eval_step(model)), params, data.eval_batches("val", 2))

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
