"""Auxiliary heads (`lm/families/token/heads.py`): their FLOP formulas against their own parameters, and a head
without a formula counted from its parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import config as config_lib
from lm import families, objectives
from lm.families.token.family import flops_per_unit
from lm.models.base import transformer_config
from lm.families.token.heads import shift_left


def test_auxiliary_head_flops_count_every_head_matmul_parameter():
  """mtp, dsmtp and top heads: forward FLOPs per unit = 2 x their own matmul parameters + one shared
  unembedding per predicted offset + attention (seq_len 1: half a key), and training counts them."""
  c = config_lib.resolve_backend_defaults(config_lib.load_experiment("token_ntp:tiny"), "cpu")
  m, V = c.model, 259
  padded = -(-V // m.vocab_multiple) * m.vocab_multiple
  E = m.d_model // m.num_heads
  for spec, offsets in ((dict(name="mtp", n=3), 2), (dict(name="dsmtp", depth=2), 2), (dict(name="top"), 1)):
    needs = objectives.requirements([dict(name="ntp"), spec])
    heads = needs.heads
    model = families.get("token").build_model(c, V, needs=needs)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 8), jnp.int32)}))["params"]
    own = sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(params[f"{heads[0].kind}_head"])[0]
              if "norm" not in jax.tree_util.keystr(p))
    shared_unembed = 0 if spec["name"] == "top" else offsets * m.d_model * padded  # top owns its kernel
    attention = 0 if spec["name"] == "top" else offsets * 2 * m.num_heads * E * 0.5
    got = sum(head.flops_per_unit(transformer_config(m, V), seq_len=1) for head in heads)
    assert got == 2 * (own + shared_unembed + attention), spec
    plain = flops_per_unit(m, V, seq_len=1)
    assert flops_per_unit(m, V, seq_len=1, heads=heads)["train"] == 3 * (plain["forward"] + got)


class _Square(nn.Module):
  cfg: object
  decode: bool = False

  @nn.compact
  def __call__(self, trunk):
    return {"square": nn.Dense(7, use_bias=False)(nn.Dense(5, use_bias=True)(trunk.h_BxTxD))}


def test_a_head_without_a_formula_counts_two_flops_per_weight():
  cfg = transformer_config(config_lib.load_experiment("token_ntp:tiny").model, 259)
  head = objectives.Head("square", _Square)
  assert head.flops_per_unit(cfg, seq_len=64) == 2.0 * (128 * 5 + 5 + 5 * 7)


def test_shift_left_pads_past_the_end():
  x = jnp.arange(6).reshape(1, 6)
  assert shift_left(x, 2, fill=-1).tolist() == [[2, 3, 4, 5, -1, -1]]
  assert shift_left(x, 0).tolist() == x.tolist()
