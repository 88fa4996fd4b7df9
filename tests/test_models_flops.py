"""FLOP formulas (`lm/models/flops.py`, and the token family's per-unit total) against parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lm import config as config_lib
from lm import families
from lm.families.token import flops_per_unit
from lm.models import flops
from lm.train.state import param_count


@pytest.mark.parametrize("arch", [[], ["model.mlp=gelu", "model.positions=learned", "model.norm=layer"]])
def test_flops_count_every_matmul_parameter_once(arch):
  c = config_lib.resolve_backend_defaults(families.load_config("token_ntp:tiny", arch), "cpu")
  model = families.get("token").build_model(c, 259)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 8), jnp.int32)})["params"]
  # Norm scales and the learned position table (a lookup) are no matmul.
  norms = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
              if "norm" in jax.tree_util.keystr(p) or "positions" in jax.tree_util.keystr(p))
  flops = flops_per_unit(c.model, 259, seq_len=1)
  m = c.model
  attention = m.num_layers * 2 * m.num_heads * (m.d_model // m.num_heads) * 0.5
  assert flops["forward"] == 2 * (param_count(params) - norms + attention)
  assert flops["train"] == 3 * flops["forward"]


def test_chunked_flops_add_up_by_component_and_count_the_extra_decoder_pass():
  c = families.load_config("concept_sllm:tiny")
  kw = dict(chunk_len=40, num_chunks=8, n_bytes=1000, n_units=900, n_chunks=30, concept_dim=64)
  one = flops.chunked_per_byte(c.model, 259, **kw)
  assert one["forward"] == one["encoder_forward"] + one["backbone_forward"] + one["decoder_forward"]
  two = flops.chunked_per_byte(c.model, 259, decoder_passes=2, **kw)
  assert two["forward"] == one["forward"] and two["train"] == one["train"] + 3 * one["decoder_forward"]
  assert flops.chunked_per_byte(c.model, 259, with_encoder=False, **kw)["encoder_forward"] == 0.0


def test_a_gelu_mlp_counts_two_matrices_everywhere():
  """SwiGLU at width F and GELU at width 3F/2 hold as many MLP weights: equal FLOPs, token and chunked."""
  for experiment in ("token_ntp:tiny", "concept_sllm:tiny"):
    c = families.load_config(experiment)
    widths = {"model.d_ff": c.model.d_ff}
    if "encoder" in c.model:
      widths.update({f"model.{p}.d_ff": c.model[p].d_ff for p in ("encoder", "decoder")})
    assert all(f % 2 == 0 for f in widths.values())
    gelu = families.load_config(experiment, ["model.mlp=gelu"] + [f"{k}={3 * f // 2}" for k, f in widths.items()])
    if "encoder" in c.model:
      kw = dict(chunk_len=40, num_chunks=8, n_bytes=1000, n_units=900, n_chunks=30, concept_dim=64)
      assert flops.chunked_per_byte(gelu.model, 259, **kw) == flops.chunked_per_byte(c.model, 259, **kw)
    else:
      assert flops_per_unit(gelu.model, 259, seq_len=64) == flops_per_unit(c.model, 259, seq_len=64)
