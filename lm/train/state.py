"""TrainState: everything on device that a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array                  # uint32[2] raw key, so checkpoints need no typed-key support
  nonfinite_streak: jax.Array     # int32: consecutive skipped (non-finite) updates


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, example_batch,
               unbox: bool = True) -> TrainState:
  """Fresh state. With `unbox=False` leaves keep their logical-axis boxes (for deriving shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  params = model.init(init_rng, example_batch)["params"]
  if unbox:
    params = nn.unbox(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=state_rng, nonfinite_streak=jnp.zeros((), jnp.int32))


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))
