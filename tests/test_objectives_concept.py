"""Concept-family objectives (`lm/families/concept/objectives.py`) against float64 loops, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import objectives
from lm.data.tokenizers import ByteTokenizer
from lm.errors import ConfigError
from lm.models.base import ModelOutputs
from lm.train import run as run_lib


def _outputs(rng, B=2, C=5, K=6):
  k1, k2 = jax.random.split(rng)
  pred, true = jax.random.normal(k1, (B, C, K)), jax.random.normal(k2, (B, C, K))
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.int32)
  return ModelOutputs(head_logits=jnp.zeros((B, C, 3, 4)), aux={"concept_pred": pred, "concept_target": true}), mask


def _ctx():
  return objectives.LossContext(step=jnp.asarray(0), unit_bytes=jnp.ones((4,), jnp.float32))


def test_concept_mse_and_contrastive_match_float64_loops():
  out, mask = _outputs(jax.random.PRNGKey(0))
  batch = {"chunk_mask": mask}
  p, t, m = (np.asarray(x, np.float64) for x in (out.aux["concept_pred"], out.aux["concept_target"], mask))
  mse = objectives.build([dict(name="concept_mse")])(out, batch, _ctx())
  want = sum(np.mean((p[b, c] - t[b, c]) ** 2) for b in range(2) for c in range(5) if m[b, c])
  l2 = sum(np.linalg.norm(p[b, c] - t[b, c]) for b in range(2) for c in range(5) if m[b, c])
  np.testing.assert_allclose(float(mse.total), want, rtol=1e-5)
  np.testing.assert_allclose(float(mse.metrics["concept_mse/l2_sum"]), l2, rtol=1e-5)
  assert float(mse.count) == m.sum()

  cells = [(b, c) for b in range(2) for c in range(5) if m[b, c]]
  unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
  for negatives in ("batch", "row"):
    fn = objectives.build([dict(name="concept_contrastive", temperature=0.5, negatives=negatives)])
    got = fn(out, batch, _ctx())
    total, hits = 0.0, 0
    for (b, c) in cells:
      cands = [cell for cell in cells if negatives == "batch" or cell[0] == b]
      s = np.array([unit(p[b, c]) @ unit(t[cb, cc]) / 0.5 for cb, cc in cands])
      own = cands.index((b, c))
      total += np.log(np.exp(s).sum()) - s[own]
      hits += int(np.argmax(s) == own)
    np.testing.assert_allclose(float(got.total), total, rtol=1e-5)
    assert float(got.metrics["concept_contrastive/accuracy_sum"]) == hits


def test_concept_mse_stop_gradient_keeps_the_target_still():
  out, mask = _outputs(jax.random.PRNGKey(1))

  def grads(stop):
    fn = objectives.build([dict(name="concept_mse", stop_gradient=stop)])
    return jax.grad(lambda aux: fn(ModelOutputs(out.logits, aux), {"chunk_mask": mask}, _ctx()).total)(out.aux)
  assert float(jnp.abs(grads(True)["concept_target"]).sum()) == 0.0
  assert float(jnp.abs(grads(False)["concept_target"]).sum()) > 0.0
  np.testing.assert_allclose(grads(True)["concept_pred"], grads(False)["concept_pred"])


def test_concept_objective_errors():
  with pytest.raises(ConfigError, match="negatives='doc'; choose 'batch' or 'row'"):
    objectives.build([dict(name="concept_contrastive", negatives="doc")])
  token_out = ModelOutputs(head_logits=jnp.zeros((1, 2, 4)))
  with pytest.raises(ConfigError, match="needs a concept model; set model.family='concept'"):
    objectives.build([dict(name="concept_mse")])(token_out, {"chunk_mask": jnp.ones((1, 2))}, _ctx())
  c = config_lib.load_experiment("token_ntp:tiny")
  c.objectives = [dict(name="ntp"), dict(name="concept_recon")]
  with pytest.raises(ConfigError, match=r"model.family='token' has no chunk decoder for the 1 extra decoder pass"):
    run_lib.build_run(config_lib.resolve_backend_defaults(c, "cpu"), ByteTokenizer())
