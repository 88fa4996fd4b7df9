"""The jitted train and eval steps: gradient accumulation over microbatches, sums not means."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lm.models.base import RNG_STREAMS
from lm.objectives.base import Loss, LossContext
from lm.train.state import TrainState


def _microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] taking rows i, i+n, i+2n... into microbatch i, so each microbatch draws
  evenly from every device's contiguous block of rows and no data moves between devices."""
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def _keep_if(ok: jax.Array, new, old, backend: str):
  """`new` where `ok` else `old`, leaf by leaf.

  On CPU a `lax.cond` picks the whole tree: an elementwise `jnp.where` over donated buffers made XLA:CPU
  copy every optimizer-state leaf first (~6% of a small model's step). Elsewhere `jnp.where`, because a
  conditional on GPU reads its predicate on the host, which would stall dispatch every step.
  """
  if backend == "cpu":
    return jax.lax.cond(ok, lambda: new, lambda: old)
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


_KEYS_FROM = 0xFFFFFFFF  # a fold-in datum no step count reaches, so step keys never equal a later TrainState.rng


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
  """The random keys of one step: (model rngs by stream, the loss's key), from the state's raw key and the
  step alone, so a resumed run draws what the uninterrupted one drew, and with threefry partitionable (jax's
  default) a sharded run draws what one device draws."""
  keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, step), _KEYS_FROM), len(RNG_STREAMS) + 1)
  return dict(zip(RNG_STREAMS, keys[:-1])), keys[-1]


def _fold(keys, i):
  return jax.tree.map(lambda k: jax.random.fold_in(k, i), keys)


def make_train_step(model: nn.Module, loss_fn: Loss, tx: optax.GradientTransformation,
                    lr_schedule: Callable, unit_bytes: jax.Array, grad_accum: int = 1,
                    reference_model: nn.Module | None = None, backend: str | None = None):
  """(state, batch[, reference_params]) -> (state, metrics). Metrics are sums with counts, plus loss,
  grad_norm, lr, skipped. With `reference_model`, its frozen logits reach the loss as
  `LossContext.reference_logits`. `backend` is the platform the step compiles for (default jax's own). Each
  step's keys (`step_keys`) reach the model as `rngs` and the loss as `LossContext.rng`; microbatch i of an
  accumulated step folds in i."""
  backend = backend or jax.default_backend()

  def sums_and_grads(params, batch, step, keys, reference_params):
    rngs, loss_key = keys
    reference_logits = None
    if reference_model is not None:
      reference_logits = jax.lax.stop_gradient(
          reference_model.apply({"params": reference_params}, batch, with_heads=False).logits)

    def total(p):
      outputs = model.apply({"params": p}, batch, rngs=rngs)
      ctx = LossContext(step=step, unit_bytes=unit_bytes, reference_logits=reference_logits, rng=loss_key)
      terms = loss_fn(outputs, batch, ctx)
      return terms.total, terms
    (_, terms), grads = jax.value_and_grad(total, has_aux=True)(params)
    return terms, grads

  def train_step(state: TrainState, batch: dict, reference_params=None):
    keys = step_keys(state.rng, state.step)
    if grad_accum == 1:
      terms, grads = sums_and_grads(state.params, batch, state.step, keys, reference_params)
    else:
      def body(carry, xs):
        micro, i = xs
        terms, grads = sums_and_grads(state.params, micro, state.step, _fold(keys, i), reference_params)
        return jax.tree.map(jnp.add, carry, (terms, grads)), None
      micros = _microbatches(batch, grad_accum)
      zero = jax.eval_shape(sums_and_grads, state.params, jax.tree.map(lambda x: x[0], micros), state.step, keys,
                            reference_params)
      zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
      (terms, grads), _ = jax.lax.scan(body, zero, (micros, jnp.arange(grad_accum)))
    count = jnp.maximum(terms.count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    loss = terms.total / count
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves params and optimizer state untouched; the loop stops after too many in a row.
    params, opt_state = _keep_if(ok, (params, opt_state), (state.params, state.opt_state), backend)
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state,
        rng=jax.random.fold_in(state.rng, state.step),
        nonfinite_streak=jnp.where(ok, 0, state.nonfinite_streak + 1))
    metrics = dict(terms.metrics, loss=loss, grad_norm=grad_norm, lr=lr_schedule(state.step),
                   skipped=1.0 - ok.astype(jnp.float32))
    return new_state, metrics

  return train_step
