"""The loss protocol and the objective registry: one registration per objective.

An objective returns sums and counts (never means), which combine exactly across microbatches, devices and
hosts; bits per byte falls out as `nll_sum / (ln 2 * n_bytes)`. A registration names everything the rest of
the code asks about an objective: its loss factory, the head it trains (a `Head`: module class, options,
FLOPs), and what it needs from the training loop (a reference run, extra decoder passes).

A name with a dot (`mypkg.myloss`) that is not registered yet is imported: first the module `mypkg.myloss`,
then `mypkg`; whichever registers it wins. So a user objective is one file and one `register` call.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from lm.paths import import_registering
from lm.errors import ConfigError, did_you_mean, type_name
from lm.models.base import ModelOutputs
from lm.models.layers import mask_padded_vocab

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
  rng: Array | None = None         # this step's key for objectives that draw (noise levels, masks); the same
                                   # on resume and on any mesh (lm.train.step.step_keys); None outside training


Loss = Callable[[ModelOutputs, Batch, LossContext], LossTerms]


@dataclasses.dataclass(frozen=True)
class TrunkOutputs:
  """What a head may read. `unembed` maps [..., D] to float32 logits over the padded vocabulary."""
  x_BxTxD: Array                  # trunk output before the final norm
  h_BxTxD: Array                  # after the final norm (what the next-unit head unembeds)
  inputs_BxT: Array
  positions_BxT: Array
  segment_ids_BxT: Array | None
  embed: Callable[[Array], Array]
  unembed: Callable[[Array], Array]
  next_inputs_BxT: Array | None = None  # unit t+1 at each position when the caller knows it (drafting)


@dataclasses.dataclass(frozen=True)
class Head:
  """A head an objective trains on the token family's trunk, in its own parameter subtree `<kind>_head`.

  Built as `module(cfg, decode=decode, **dict(options))` (the family names it `<kind>_head`); its call takes a
  `TrunkOutputs` and returns entries for `ModelOutputs.aux`. FLOPs per unit come from the
  module's `flops_per_unit(cfg, seq_len, **options)` when it has one, else from its parameter count (2 per
  weight). `give_up_layers` takes layers from the trunk (equal-parameter variants).
  """
  kind: str
  module: type[nn.Module]
  options: tuple[tuple[str, Any], ...] = ()
  give_up_layers: int = 0

  def build(self, cfg, decode: bool = False) -> nn.Module:
    return self.module(cfg, decode=decode, **dict(self.options))

  def flops_per_unit(self, cfg, seq_len: int) -> float:
    """Forward matmul FLOPs of this head per unit (`cfg` is the trunk's TransformerConfig)."""
    formula = getattr(self.module, "flops_per_unit", None)
    if formula is not None:
      return float(formula(cfg, seq_len, **dict(self.options)))
    # default: every weight used once per unit
    T, D = 2, cfg.d_model
    x = jnp.zeros((1, T, D), jnp.float32)
    ids = jnp.zeros((1, T), jnp.int32)
    trunk = TrunkOutputs(x, x, ids, ids, ids + 1, lambda i: jnp.zeros(i.shape + (D,)),
                         lambda h: jnp.zeros(h.shape[:-1] + (cfg.padded_vocab,)))
    shapes = jax.eval_shape(lambda: self.build(cfg).init(jax.random.PRNGKey(0), trunk))
    return 2.0 * sum(math.prod(s.shape) for s in jax.tree.leaves(nn.unbox(shapes)))


@dataclasses.dataclass(frozen=True)
class Objective:
  """One registration: `factory(**options) -> Loss`, and what the objective asks of model and loop."""
  name: str
  factory: Callable[..., Loss]
  head: Callable[..., Head] | None = None    # options -> the Head it trains
  reference: bool = False                    # frozen logits of another run (option `reference`: its workdir)
  decoder_passes: int = 0                    # extra decoder passes of a chunked family (concept reconstruction)
  auxiliary: bool = False                    # trains an extra head only (listed after ntp or mtp)

  def defaults(self) -> dict[str, Any]:
    params = inspect.signature(self.factory).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What a list of objectives asks of the model and the loop (hashable: a static model attribute)."""
  heads: tuple[Head, ...] = ()
  reference: str | None = None               # a reference run's workdir ("" when asked for but not given)
  reference_objective: str = ""
  decoder_passes: int = 0


_REGISTRY: dict[str, Objective] = {}


def register(name: str, head: Callable[..., Head] | None = None, reference: bool = False,
             decoder_passes: int = 0, auxiliary: bool = False):
  """Register `factory(**options) -> Loss` under `name` (the objective's config `name`).

  `head(**options)` gives the `Head` the objective trains; it receives the objective's options with the
  factory's defaults filled in. `reference` asks the loop for a frozen reference model's logits
  (`LossContext.reference_logits`); `decoder_passes` for extra decoder passes (the concept family's `recon`).
  `auxiliary` marks a loss on an extra head only (TOP, FTP, DS-MTP): a list of nothing but such objectives
  would leave the model's own head, the one that samples and scores bits per byte, untrained.
  """
  def wrap(factory):
    old = _REGISTRY.get(name)
    if old is not None and old.factory.__module__ != factory.__module__:
      if old.factory.__code__ == factory.__code__:
        return factory  # an unchanged copy (a forked family folder's objectives.py): the first one stands
      raise ConfigError(f"objective {name!r} is registered by {old.factory.__module__} and, differently, by "
                        f"{factory.__module__}; give the one in {factory.__module__} a name of its own")
    _REGISTRY[name] = Objective(name, factory, head, reference, decoder_passes, auxiliary)
    return factory
  return wrap


# The built-in objectives live with what they train (a family's own in its folder), and are found by module name
# like a user's: importing these registers them.
BUILTIN_MODULES = ("lm.families.token.objectives", "lm.families.concept.objectives", "lm.objectives.sequence")


def _builtins() -> None:
  for module in BUILTIN_MODULES:
    importlib.import_module(module)


def registered() -> list[str]:
  _builtins()
  return sorted(_REGISTRY)


def get(name: str) -> Objective:
  """The registration of `name`; a dotted name is imported from the user's module if needed."""
  _builtins()
  if name not in _REGISTRY and "." in name:
    import_registering(name, _REGISTRY)
  if name not in _REGISTRY:
    names = sorted(_REGISTRY)
    hint = did_you_mean(name, names)
    raise ConfigError(f"unknown objective {name!r}; {hint}registered: {names} (a user objective: a dotted "
                      "module path whose module calls lm.objectives.register)")
  return _REGISTRY[name]


def schedule(spec: Any) -> Callable[[Array], Array]:
  """A loss weight over steps: a number; {'kind': 'linear', 'start', 'end', 'steps'} ramp; or
  {'kind': 'step', 'values': [a, b, ...], 'boundaries': [s1, ...]} (value i from boundary i-1 on), or with
  'at': [f1, ...] (fractions of train.steps) in place of boundaries, which a run sets from its own length."""
  if isinstance(spec, (int, float)):
    return lambda step: jnp.asarray(float(spec), jnp.float32)
  spec = dict(spec)
  kind = spec.get("kind")
  if kind == "linear":
    start, end, steps = float(spec["start"]), float(spec["end"]), max(int(spec["steps"]), 1)
    return lambda step: start + (end - start) * jnp.clip(step / steps, 0.0, 1.0)
  if kind == "step":
    if "boundaries" not in spec:
      raise ConfigError(f"weight schedule {spec}: give boundaries (steps), or `at` (fractions of train.steps) in a "
                        "run's config, where lm.config.resolve_backend_defaults sets the boundaries")
    values = jnp.asarray(spec["values"], jnp.float32)
    bounds = jnp.asarray(spec["boundaries"], jnp.int32)
    if len(spec["values"]) != len(spec["boundaries"]) + 1:
      raise ConfigError(f"weight schedule {spec}: needs one more value than boundaries")
    return lambda step: values[jnp.sum(step >= bounds)]
  raise ConfigError(f"loss weight {spec!r}: use a number or a dict with kind 'linear' or 'step'")


def _options(objective: Objective, spec: Mapping[str, Any]) -> dict[str, Any]:
  """The objective's options from its config entry, checked against its factory's signature."""
  accepted = inspect.signature(objective.factory).parameters
  given = {k: v for k, v in spec.items() if k not in ("name", "weight", "label")}
  for key in given:
    if key not in accepted:
      options = [k for k in accepted if k not in ("name", "weight", "label")]
      hint = did_you_mean(key, options) or (f"its options: {', '.join(options)}" if options else "it takes no options")
      raise ConfigError(f"objective {objective.name!r} has no option {key!r}; {hint.rstrip()}")
  defaults = objective.defaults()
  for key, value in given.items():  # an option takes its default's type (ints are numbers too)
    default = defaults.get(key)
    expected = type(default) if default is not None else None
    if expected in (list, tuple):
      expected = (list, tuple)  # saved configs come back through JSON, where every sequence is a list
    fits = expected is None or isinstance(value, expected) and not (expected is int and isinstance(value, bool)) \
        or (expected is float and isinstance(value, int) and not isinstance(value, bool))
    if not fits:
      raise ConfigError(f"objective {objective.name!r}: option {key}={value!r} must be {type_name(default)}")
  return {**defaults, **given}


def at_least(objective: str, minimum, **values) -> None:
  """One-line errors for options below their minimum: `at_least("mtp", 1, n=n)`."""
  for key, value in values.items():
    if value < minimum:
      raise ConfigError(f"objective {objective!r}: {key}={value!r} must be at least {minimum}")


def requirements(objectives: list[Mapping[str, Any]]) -> Requirements:
  """The heads the listed objectives train (each once), the reference run and the extra decoder passes they
  need. Two objectives that need one head kind with different options are an error."""
  heads: dict[str, Head] = {}
  reference, reference_objective, passes = None, "", 0
  if objectives and all(get(spec["name"]).auxiliary for spec in objectives):
    names = ", ".join(repr(spec["name"]) for spec in objectives)
    raise ConfigError(f"objectives {names} train extra heads only, so nothing trains the model's own head (the one "
                      f"that samples and gives bits per byte); list ntp first, e.g. objectives=[ntp, "
                      f"{objectives[0]['name']}] as experiments/token_{objectives[0]['name']}.py does")
  for spec in objectives:
    objective = get(spec["name"])
    options = _options(objective, spec)
    if objective.head is not None:
      head = objective.head(**options)
      if head.kind in heads and heads[head.kind] != head:
        raise ConfigError(f"objectives need the {head.kind!r} head twice with different options "
                          f"({heads[head.kind].options} vs {head.options}); give them the same options")
      heads[head.kind] = head
    if objective.reference and reference is None:
      reference, reference_objective = str(options.get("reference", "")), objective.name
    passes += objective.decoder_passes
  return Requirements(tuple(heads.values()), reference, reference_objective, passes)


def build(objectives: list[Mapping[str, Any]]) -> Loss:
  """One Loss summing `weight * term.total` over the listed objectives.

  The sum is normalised by the first objective's event count, so every term keeps its per-event scale and
  gradient accumulation stays exact; each term's metrics are kept under `<label>/`.
  """
  parts = []
  for spec in objectives:
    objective = get(spec["name"])
    options = {k: v for k, v in spec.items() if k not in ("name", "weight", "label")}
    _options(objective, spec)  # unknown options fail here, with the nearest one named
    parts.append((spec.get("label", objective.name), schedule(spec.get("weight", 1.0)), objective.factory(**options)))

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


# ---------------------------------------------------------------------------------------------------------
# The one masked negative log-likelihood every objective and the evaluator share.

def token_nll(logits_BxTxV: Array, targets_BxT: Array) -> tuple[Array, Array]:
  """Per-position negative log-likelihood and log-partition, in float32 (any leading shape)."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logz_BxT - target_logit_BxT, logz_BxT


@struct.dataclass
class UnitStats:
  """Per-position statistics of the main head's distribution, in float32 (all [B, T]): what every
  token-level loss reads, computable without the [B, T, V] logits (`next_unit_nll`)."""
  nll: Array            # log Z - logit[target]
  logz: Array           # log-partition
  correct: Array        # 1.0 where the target has the largest logit (accuracy; ties count as correct)
  mean_logit: Array     # mean logit over the real vocabulary (label smoothing)


def _stats(logits_BxTxV: Array, targets_BxT: Array, vocab_size: int) -> UnitStats:
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  V = logits_BxTxV.shape[-1]
  vocab_size = vocab_size or V
  nll, logz = token_nll(logits_BxTxV, targets_BxT)
  target_logit = logz - nll
  correct = (target_logit >= jnp.max(logits_BxTxV, axis=-1)).astype(jnp.float32)
  real = logits_BxTxV if vocab_size == V else jnp.where(jnp.arange(V) < vocab_size, logits_BxTxV, 0.0)
  return UnitStats(nll, logz, correct, jnp.sum(real, axis=-1) / vocab_size)


def _tile(length: int, want: int) -> int:
  """The largest divisor of `length` that is at most `want`."""
  return max(d for d in range(1, min(want, length) + 1) if length % d == 0)


def next_unit_nll(outputs: ModelOutputs, targets_BxT: Array) -> UnitStats:
  """`UnitStats` of the main head against `targets`. With lazy outputs (`ModelOutputs.hidden` and
  `unembedding`, `logits_chunk` > 0) the unembedding and the statistics run over tiles of `logits_chunk`
  positions in a scan whose body is rematerialised: forward and backward each hold one tile's float32
  logits [B, c, V], never [B, T, V]. Equal to the dense computation (tested to 1e-6 with its gradient)."""
  chunk = outputs.logits_chunk
  if outputs.head_logits is not None or not chunk or outputs.hidden is None:
    return _stats(outputs.logits, targets_BxT, outputs.vocab_size)
  h_BxTxD, w_DxV = outputs.hidden, outputs.unembedding
  B, T, D = h_BxTxD.shape
  c = _tile(T, chunk)
  if c == T:
    return _stats(outputs.logits, targets_BxT, outputs.vocab_size)

  @jax.checkpoint
  def tile(h_BxCxD, targets_BxC):
    logits = jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV.astype(h_BxCxD.dtype), preferred_element_type=jnp.float32)
    return _stats(mask_padded_vocab(logits, outputs.vocab_size), targets_BxC, outputs.vocab_size)

  def body(_, xs):
    return None, tile(*xs)

  n = T // c
  h_NxBxCxD = jnp.moveaxis(h_BxTxD.reshape(B, n, c, D), 1, 0)
  t_NxBxC = jnp.moveaxis(targets_BxT.reshape(B, n, c), 1, 0)
  _, stats = jax.lax.scan(body, None, (h_NxBxCxD, t_NxBxC))
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(B, T), stats)


def masked_nll(logits_BxTxV: Array, targets_BxT: Array, mask_BxT: Array) -> tuple[Array, Array, Array]:
  """(summed NLL, summed correct predictions, summed mask) of logits (or lazy `ModelOutputs`) against
  targets where `mask` is 1."""
  mask_BxT = mask_BxT.astype(jnp.float32)
  if isinstance(logits_BxTxV, ModelOutputs):
    stats = next_unit_nll(logits_BxTxV, targets_BxT)
  else:
    stats = _stats(logits_BxTxV, targets_BxT, 0)
  return jnp.sum(stats.nll * mask_BxT), jnp.sum(stats.correct * mask_BxT), jnp.sum(mask_BxT)
