"""The loss protocol: objectives return sums and counts, composed from the `config.objectives` list.

Sums (never means) combine exactly across microbatches, devices and hosts; bits per byte falls out as
`nll_sum / (ln 2 * n_bytes)`.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct

from lm.errors import ConfigError
from lm.models.base import ModelOutputs

Array = jax.Array
Batch = Mapping[str, Array]


@struct.dataclass
class LossTerms:
  total: Array                     # scalar to minimise: a sum over events, not yet normalised
  count: Array                     # number of events `total` sums over
  metrics: dict[str, Array] = struct.field(default_factory=dict)  # sums; `<x>_sum` pairs with `count`


@struct.dataclass
class LossContext:
  step: Array                      # optimizer step, for weight schedules
  unit_bytes: Array                # [V] bytes of text each unit stands for (eos counts one)
  reference_logits: Array | None = None  # [B, T, V] of a frozen reference model, for objectives that ask


Loss = Callable[[ModelOutputs, Batch, LossContext], LossTerms]

_REGISTRY: dict[str, Callable[..., Loss]] = {}
_HEADS: dict[str, Callable[..., tuple]] = {}


def register(name: str, head: Callable[..., tuple] | None = None):
  """Register a factory `f(**options) -> Loss` under `name` (the objective's config `name`).

  `head(**options)` gives the model head the objective trains, as `(kind, ((option, value), ...))`
  (see `lm/models/heads.py`); it receives the objective's options with the factory's defaults filled in.
  """
  def wrap(factory):
    _REGISTRY[name] = factory
    if head is not None:
      _HEADS[name] = head
    return factory
  return wrap


def registered() -> list[str]:
  import lm.objectives.concept  # noqa: F401  (registers the objectives)
  import lm.objectives.token  # noqa: F401
  return sorted(_REGISTRY)


def schedule(spec: Any) -> Callable[[Array], Array]:
  """A loss weight over steps: a number; {'kind': 'linear', 'start', 'end', 'steps'} ramp; or
  {'kind': 'step', 'values': [a, b, ...], 'boundaries': [s1, ...]} (value i from boundary i-1 on)."""
  if isinstance(spec, (int, float)):
    return lambda step: jnp.asarray(float(spec), jnp.float32)
  spec = dict(spec)
  kind = spec.get("kind")
  if kind == "linear":
    start, end, steps = float(spec["start"]), float(spec["end"]), max(int(spec["steps"]), 1)
    return lambda step: start + (end - start) * jnp.clip(step / steps, 0.0, 1.0)
  if kind == "step":
    values = jnp.asarray(spec["values"], jnp.float32)
    bounds = jnp.asarray(spec["boundaries"], jnp.int32)
    if len(spec["values"]) != len(spec["boundaries"]) + 1:
      raise ConfigError(f"weight schedule {spec}: needs one more value than boundaries")
    return lambda step: values[jnp.sum(step >= bounds)]
  raise ConfigError(f"loss weight {spec!r}: use a number or a dict with kind 'linear' or 'step'")


def _options(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
  params = inspect.signature(_REGISTRY[name]).parameters
  options = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
  options.update({k: v for k, v in spec.items() if k not in ("name", "weight", "label")})
  return options


def heads(objectives: list[Mapping[str, Any]]) -> tuple:
  """The model heads the listed objectives train, each once; two objectives that need one head kind with
  different options are an error."""
  registered()
  found: dict[str, tuple] = {}
  for spec in objectives:
    name = spec["name"]
    if name not in _HEADS:
      continue
    head = _HEADS[name](**_options(name, spec))
    if head[0] in found and found[head[0]] != head:
      raise ConfigError(f"objectives need the {head[0]!r} head twice with different options ({found[head[0]][1]} "
                        f"vs {head[1]}); give them the same options")
    found[head[0]] = head
  return tuple(found.values())


def build(objectives: list[Mapping[str, Any]]) -> Loss:
  """One Loss summing `weight * term.total` over the listed objectives.

  The sum is normalised by the first objective's event count, so every term keeps its per-event scale and
  gradient accumulation stays exact; each term's metrics are kept under `<name>/`.
  """
  names = registered()
  parts = []
  for spec in objectives:
    spec = dict(spec)
    name = spec.pop("name")
    weight = schedule(spec.pop("weight", 1.0))
    label = spec.pop("label", name)
    if name not in _REGISTRY:
      near = difflib.get_close_matches(name, names, n=1, cutoff=0.0)
      raise ConfigError(f"unknown objective {name!r}; did you mean {near[0]!r}? registered: {names}")
    factory = _REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    for key in spec:
      if key not in accepted:
        near = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.0)
        hint = f"; did you mean {near[0]!r}?" if near else f"; it takes no options"
        raise ConfigError(f"objective {name!r} has no option {key!r}{hint}")
    parts.append((label, weight, factory(**spec)))

  def loss(outputs: ModelOutputs, batch: Batch, ctx: LossContext) -> LossTerms:
    total, count, metrics = 0.0, None, {}
    for label, weight, fn in parts:
      terms = fn(outputs, batch, ctx)
      total = total + weight(ctx.step) * terms.total
      count = terms.count if count is None else count
      metrics[f"{label}/count"] = terms.count
      metrics.update({f"{label}/{k}": v for k, v in terms.metrics.items()})
    return LossTerms(total=total, count=count, metrics=metrics)

  return loss


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Turn summed metrics into means: `x_sum / count`, and `bpb = nll_sum / (ln 2 * n_bytes)` per term."""
  out = {}
  for key, value in sums.items():
    prefix, _, leaf = key.rpartition("/")
    base = f"{prefix}/" if prefix else ""
    own_count = f"{base}{leaf[:-4]}_count"  # a sum over other events than the term's count names its own
    if leaf.endswith("_sum") and (own_count in sums or f"{base}count" in sums):
      count = sums[own_count] if own_count in sums else sums[f"{base}count"]
      out[f"{base}{leaf[:-4]}"] = float(value) / max(float(count), 1.0)
      if leaf == "nll_sum" and f"{base}n_bytes" in sums:
        out[f"{base}bpb"] = float(value) / (math.log(2) * max(float(sums[f"{base}n_bytes"]), 1.0))
    elif not leaf.endswith(("_sum", "_count")) and leaf not in ("count", "n_bytes"):
      out[key] = float(value)
  return out
