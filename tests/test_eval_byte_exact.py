"""`lm eval --byte-exact`: the byte-level marginal of a BPE model's held-out segments against canonical scoring."""

import types

import pytest

import lm
from lm.errors import LMError
from lm.train import run as run_lib

SMALL = {"model.num_layers": 1, "model.d_model": 32, "model.d_ff": 64, "data.eval_max_bytes": 24}


@pytest.fixture(scope="module")
def bpe_model():
  return lm.build("token_ntp:tiny", **SMALL, **{"data.tokenizer": "bpe", "data.vocab_size": 300})


def test_byte_exact_is_at_most_canonical_and_canonical_is_the_frameworks_bpb(bpe_model):
  r = bpe_model
  result = r.evaluate_byte_exact(segments=2, beam=0)  # every tokenization
  texts = r.data.eval_segments(r.data.splits["val"])[:2]
  framework = run_lib.evaluate(r.run, r.params, r.data, "val", docs=texts)
  assert framework["n_bytes"] == result["n_bytes"] == sum(len(t) + 1 for t in texts)
  assert abs(framework["bpb"] - result["canonical_bpb"]) < 1e-4
  # An untrained model spreads mass over non-canonical tokenizations: the marginal is strictly better.
  assert result["byte_exact_bpb"] < result["canonical_bpb"] and result["gap_bpb"] > 1e-3
  pruned = r.evaluate_byte_exact(segments=2, beam=2)
  assert result["byte_exact_bpb"] - 1e-9 <= pruned["byte_exact_bpb"] <= result["canonical_bpb"] + 1e-9
  assert pruned["prefixes_scored"] < result["prefixes_scored"]


def test_byte_models_have_one_tokenization_and_no_gap():
  r = lm.build("token_ntp:tiny", **SMALL)
  result = r.evaluate_byte_exact(segments=1, beam=0)
  assert abs(result["gap_bpb"]) < 1e-6  # the same rows, batched differently (float32)


def test_next_bytes_of_a_bpe_model_sum_to_one(bpe_model):
  import numpy as np
  model = bpe_model.byte_model()
  lp = model.next_byte_log_probs(b"The")
  assert abs(np.exp(lp).sum() - 1) < 1e-9


def test_byte_exact_refuses_other_families():
  from lm import families
  from lm.eval import byte_exact
  config = families.load_config("byte_hat:tiny")
  run = types.SimpleNamespace(config=config, family=families.get("hierarchical"))  # refused before the model is read
  with pytest.raises(LMError, match="needs a family with UnitDecoder .*model.family='hierarchical', which has none"):
    byte_exact.byte_model(run, params=None)
