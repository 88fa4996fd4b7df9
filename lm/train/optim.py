"""AdamW with linear warmup then cosine (or linear) decay, global-norm clipping, no decay on norms/biases."""

from __future__ import annotations

import jax
import optax


def learning_rate(optim_cfg, total_steps: int) -> optax.Schedule:
  o = optim_cfg
  warmup = max(min(int(o.warmup_steps), total_steps - 1), 0)
  decay_steps = max(total_steps - warmup, 1)
  end = o.lr * o.min_lr_ratio
  if o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.min_lr_ratio)
  elif o.schedule == "linear":
    decay = optax.linear_schedule(o.lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(o.lr)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), decay], [warmup])


NO_DECAY = ("scale", "bias")


def decay_mask(params):
  """Weight decay on weight matrices only, never on norm scales or biases. Decided by the parameter's name,
  not its rank: under `nn.scan` a norm's scale is stacked to [layers, D]."""
  def decays(path, _):
    return getattr(path[-1], "key", None) not in NO_DECAY
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  o = optim_cfg
  parts = [optax.clip_by_global_norm(o.clip_norm)] if o.clip_norm > 0 else []
  parts.append(optax.adamw(learning_rate(o, total_steps), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
