"""`lm sample --method NAME`: one prompt, one sequence-level method, a report of what it produced and cost.

Methods are registrations, like objectives: `@register("name", options=[Option(...), ...], check=fn)` on a
function `(ctx: Context, o) -> report`, found by name (`beam`, ...) or by dotted module path (`--method
mypkg.mymethod`: the module `mypkg.mymethod`, or `mypkg`, registers it when imported). A method's options are
its command-line flags (`--beams 4`) and its keyword arguments in `lm.load(DIR).decode(prompt, method, ...)`;
`o` holds them resolved (defaults filled in) with `max_new` and `seed`.

Every method returns `outputs` (text, units, the model's log p, and the method's own weight or score), the
index of the one it `chosen` (what `lm sample` prints after the prompt) and `stats` (forward passes: model
calls, each over all of the method's rows; effective sample size, acceptance where they apply).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lm import parallel
from lm.decoding import regex as regex_lib
from lm.decoding import rollout, search, smc
from lm.paths import import_registering
from lm.errors import LMError, did_you_mean


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a method: `--NAME` on the command line (underscores as dashes), a keyword in Python."""
  name: str
  type: Callable[[str], Any]
  default: Any
  help: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  run: Callable[["Context", Any], dict]
  options: tuple[Option, ...] = ()
  check: Callable[[Any], None] | None = None  # one LMError line for bad values, before anything loads


@dataclasses.dataclass
class Context:
  """What a method decodes with: the decode-mode `model` (a unit decoder with a KV cache) and `score_model`
  (the same in training mode, for teacher-forced log p), their params, the tokenizer, the prompt as [1, P] ids
  with its length, and a key."""
  model: Any
  score_model: Any
  params: Any
  tokenizer: Any
  ids: jax.Array
  lengths: jax.Array
  rng: jax.Array

  def texts(self, ids_RxN, lengths_R) -> list[tuple[str, list[int]]]:
    """(text, units) of each row's first `lengths_R` units, eos dropped from the text."""
    eos, out = self.tokenizer.eos_id, []
    for row, n in zip(parallel.to_host(ids_RxN), parallel.to_host(lengths_R)):
      units = [int(u) for u in row[:int(n)]]
      out.append((self.tokenizer.decode([u for u in units if u != eos]), units))
    return out


_REGISTRY: dict[str, Method] = {}
COMMON = (Option("max_new", int, 200, "units to generate at most"), Option("seed", int, 0, "the method's random seed"))


def register(name: str, options=(), check: Callable[[Any], None] | None = None):
  """Register `run(ctx, o) -> report` as decoding method `name`, with its `Option`s and an optional `check(o)`."""
  def wrap(run):
    _REGISTRY[name] = Method(name, run, tuple(options), check)
    return run
  return wrap


def registered() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> Method:
  """The method `name`: built in, or a dotted name whose module (or its parent) registers it when imported."""
  if name not in _REGISTRY and "." in name:
    import_registering(name, _REGISTRY)
  if name not in _REGISTRY:
    raise LMError(f"--method {name!r} is not one of {', '.join(registered())}; {did_you_mean(name, registered())}"
                  "or a dotted module path whose module calls lm.decoding.methods.register")
  return _REGISTRY[name]


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def resolve(method: str, given: dict[str, Any]) -> types.SimpleNamespace:
  """The method's options with defaults filled in, checked (one line for an option it does not read or a bad
  value), before any model is loaded."""
  m = get(method)
  known = {o.name: o for o in (*COMMON, *m.options)}
  stray = sorted(k for k, v in given.items() if k not in known and v is not None)
  if stray:
    everyone = {o.name for x in _REGISTRY.values() for o in x.options}
    if all(k in everyone for k in stray):
      raise LMError(f"{', '.join(map(_flag, stray))} does not apply to --method {method} (it reads "
                    f"{', '.join(_flag(o.name) for o in m.options) or 'no options'})")
    raise LMError(f"unknown decoding option(s) {', '.join(stray)} for --method {method}; it reads "
                  f"{', '.join(o.name for o in m.options) or 'no options'}")
  o = types.SimpleNamespace(**{k: (given[k] if given.get(k) is not None else opt.default) for k, opt in known.items()})
  if o.max_new < 1:
    raise LMError("--max-new must be at least 1")
  if m.check is not None:
    m.check(o)
  return o


def option_parser(method: str) -> argparse.ArgumentParser:
  """The command-line flags of `method`, from its registration."""
  m = get(method)
  p = argparse.ArgumentParser(prog=f"lm sample DIR --method {method}", add_help=False)
  for o in m.options:
    p.add_argument(_flag(o.name), dest=o.name, type=o.type, default=None,
                   help=f"{o.help} (default {o.default})" if o.help else f"default {o.default}")
  return p


def parse_flags(method: str, argv: list[str]) -> dict[str, Any]:
  """`method`'s options from leftover command-line flags; one line for a flag it does not read."""
  p = option_parser(method)
  args, rest = p.parse_known_args(argv)
  if rest:
    names = [a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in rest if a.startswith("--")]
    resolve(method, {n: True for n in names})  # an option of another method: the one line naming it
    raise LMError(f"lm sample --method {method}: unrecognized argument(s) {' '.join(rest)}")
  return {k: v for k, v in vars(args).items() if v is not None}


@functools.lru_cache(maxsize=16)  # checked once before loading, then lifted to units: compile once
def _compile(pattern: str) -> regex_lib.ByteDFA:
  try:
    return regex_lib.compile_regex(pattern)
  except regex_lib.RegexError as e:
    raise LMError(str(e)) from None


def check_byte_units(tokenizer, what: str) -> None:
  """Byte-level views need each id's bytes to be exactly what it stands for in text (the bytes tokenizer,
  byte-level BPE); SentencePiece pieces and Hugging Face tokenizers that rewrite text do not round-trip."""
  probe = " The cat, 12 naïve\n\tEnd.".encode()
  ids = tokenizer.encode(probe)
  table = tokenizer.id_bytes()
  if b"".join(table[i] for i in ids) != probe:
    raise LMError(f"{what} needs a tokenizer whose units are exact bytes (bytes, or byte-level BPE); "
                  f"{type(tokenizer).__name__} rewrites text ({probe!r} comes back as "
                  f"{b''.join(table[i] for i in ids)!r})")


def constraint_tables(pattern: str, tokenizer, vocab_size: int, max_new: int):
  """(next_SxV, to_accept_S, accepting_S) of `pattern` over the tokenizer's units, as device arrays."""
  check_byte_units(tokenizer, "--regex")
  dfa = _compile(pattern)
  units = tokenizer.id_bytes()
  units = units[:vocab_size] + [b""] * (vocab_size - len(units))
  table_SxV = regex_lib.unit_transitions(dfa, units)
  to_accept_S = regex_lib.units_to_accept(dfa, table_SxV)
  if to_accept_S[dfa.start] > max_new:
    need = int(to_accept_S[dfa.start])
    what = "units the vocabulary cannot give" if need >= 2 ** 29 else f"at least {need} units"
    raise LMError(f"--regex {pattern!r} needs {what}; --max-new is {max_new}")
  return jnp.asarray(table_SxV), jnp.asarray(to_accept_S), jnp.asarray(dfa.accepting_S)


def decode(model, score_model, params, tokenizer, prompt: str, method: str, options: dict[str, Any]) -> dict:
  """Run `method` on `prompt` (text) with the decode-mode `model` (`score_model`: the same in training mode, for
  teacher-forced log p) and `options` (keywords; defaults filled in); the report described above."""
  o = resolve(method, options)
  ids = jnp.asarray(tokenizer.prompt_ids(prompt))[None]
  ctx = Context(model, score_model, params, tokenizer, ids, jnp.array([ids.shape[1]], jnp.int32),
                jax.random.PRNGKey(o.seed))
  return dict(method=method, **get(method).run(ctx, o))


# ---------------------------------------------------------------------------------------------------------
# The built-in methods.

def _at_least(o, minimum: int, *names: str) -> None:
  for name in names:
    if getattr(o, name) < minimum:
      raise LMError(f"{_flag(name)} must be at least {minimum}, got {getattr(o, name)}")


def _check_beam(o) -> None:
  _at_least(o, 1, "beams")


def _check_diverse(o) -> None:
  _at_least(o, 1, "beams", "groups")
  if o.diversity < 0:
    raise LMError(f"--diversity must be at least 0, got {o.diversity}")
  if o.beams % o.groups:
    raise LMError(f"--beams {o.beams} must split into --groups {o.groups} equal groups")


def _check_alpha(o) -> None:
  if o.alpha <= 0:
    raise LMError(f"--alpha must be positive, got {o.alpha}")


def _check_power(o) -> None:
  _at_least(o, 1, "blocks")
  _at_least(o, 0, "mh_steps")
  _check_alpha(o)
  if o.max_new % o.blocks:
    raise LMError(f"--max-new {o.max_new} must split into --blocks {o.blocks} equal blocks")


def _check_smc(o) -> None:
  _at_least(o, 1, "particles")
  _check_alpha(o)
  if not 0 <= o.ess <= 1:
    raise LMError(f"--ess is a fraction of the particles, in [0, 1]; got {o.ess}")
  if o.ramp < 0:
    raise LMError(f"--ramp counts units (0: no ramp), got {o.ramp}")
  if getattr(o, "regex", "") is None:
    raise LMError("--method smc needs --regex PATTERN (or use --method power-smc for the power distribution)")
  if getattr(o, "regex", None) is not None:
    _compile(o.regex)


def _check_mbr(o) -> None:
  _at_least(o, 1, "samples")
  if o.temperature <= 0:
    raise LMError(f"--temperature for mbr samples must be positive, got {o.temperature}")
  search.utility_fn(o.utility)  # a name, pkg.module:function or a function; one line otherwise


BEAMS = Option("beams", int, 4, "beams in all")
LENGTH_PENALTY = Option("length_penalty", float, 1.0, "rank by log p / length^P")
SMC_OPTIONS = (Option("particles", int, 16, "particles, as batch rows"),
               Option("ess", float, 0.5, "resample when the ESS falls below this fraction"),
               Option("ramp", int, 0, "raise alpha from 1 over the first R units (0: at once)"))


def _beam(ctx: Context, o, groups: int, diversity: float) -> dict:
  got, got_len, log_p, score, passes = search.beam_search(
      ctx.model, ctx.params, ctx.ids, ctx.lengths, beams=o.beams, max_new=o.max_new, eos_id=ctx.tokenizer.eos_id,
      groups=groups, diversity=diversity, length_penalty=float(o.length_penalty))
  outputs = [dict(text=t, units=u, log_p=float(lp), score=float(s)) for (t, u), lp, s in
             zip(ctx.texts(got[0], got_len[0]), parallel.to_host(log_p[0]), parallel.to_host(score[0]))
             if np.isfinite(s)]
  chosen = int(np.argmax([x["score"] for x in outputs]))
  return dict(outputs=outputs, chosen=chosen, stats=dict(forward_passes=int(passes), rows=o.beams))


@register("beam", options=(BEAMS, LENGTH_PENALTY), check=_check_beam)
def beam(ctx: Context, o) -> dict:
  """Beam search on the model's log p."""
  return _beam(ctx, o, 1, 0.0)


@register("diverse-beam", check=_check_diverse, options=(
    BEAMS, Option("groups", int, 2, "groups of beams"), Option("diversity", float, 0.5, "Hamming diversity strength"),
    LENGTH_PENALTY))
def diverse_beam(ctx: Context, o) -> dict:
  """Diverse beam search (Vijayakumar et al.): groups penalised for repeating each other's units."""
  return _beam(ctx, o, o.groups, float(o.diversity))


@register("power", check=_check_power, options=(
    Option("alpha", float, 4.0, "target p(x)^alpha"), Option("blocks", int, 4, "blocks the continuation grows in"),
    Option("mh_steps", int, 10, "MH moves after each block")))
def power(ctx: Context, o) -> dict:
  """Metropolis-Hastings power sampling (Karan & Du): p(x)^alpha over whole continuations."""
  alpha = float(o.alpha)
  out = jax.tree.map(parallel.to_host, smc.power_mh(ctx.model, ctx.params, ctx.ids, ctx.lengths, ctx.rng,
                                                    max_new=o.max_new, eos_id=ctx.tokenizer.eos_id, alpha=alpha,
                                                    blocks=o.blocks, steps_per_block=o.mh_steps))
  (text, units), = ctx.texts(out["ids"], out["lengths"])
  return dict(outputs=[dict(text=text, units=units, log_p=float(out["log_p"][0]))], chosen=0,
              stats=dict(forward_passes=int(out["forward_passes"]), rows=1, alpha=alpha, moves=int(out["moves"][0]),
                         acceptance=int(out["accepted"][0]) / max(int(out["moves"][0]), 1)))


def _smc(ctx: Context, o, regex: str | None) -> dict:
  alpha, eos = float(o.alpha), ctx.tokenizer.eos_id
  tables = None if regex is None else constraint_tables(regex, ctx.tokenizer, ctx.model.cfg.vocab_size, o.max_new)
  out = jax.tree.map(parallel.to_host, smc.smc(ctx.model, ctx.params, ctx.ids, ctx.lengths, ctx.rng,
                                               particles=o.particles, max_new=o.max_new, eos_id=eos, alpha=alpha,
                                               ess=float(o.ess), tables=tables, ramp=int(o.ramp)))
  log_w = np.asarray(out["log_weights"][0], np.float64)
  outputs = [dict(text=t, units=u, log_p=float(lp), weight=float(np.exp(w))) for (t, u), lp, w in
             zip(ctx.texts(out["ids"][0], out["lengths"][0]), out["log_p"][0], log_w)]
  chosen = int(np.random.default_rng(o.seed).choice(len(log_w), p=np.exp(log_w) / np.exp(log_w).sum()))
  table = ctx.tokenizer.id_bytes()
  for x in outputs if regex is not None else ():  # the bytes the DFA read, checked by Python's re
    text = b"".join(table[u] for u in x["units"] if u != eos).decode("utf-8")
    if re.fullmatch(regex, text, re.ASCII) is None:  # only if the DFA and re disagree: say so, print nothing
      raise RuntimeError(f"constrained SMC produced {text!r}, which does not match {regex!r}")
  ess_now = 1.0 / float(np.sum(np.exp(2 * log_w))) / o.particles
  return dict(outputs=outputs, chosen=chosen, stats=dict(
      forward_passes=int(out["forward_passes"]), rows=o.particles, alpha=alpha, log_z=float(out["log_z"][0]),
      ess=ess_now, min_ess=float(out["min_ess"][0]), resamples=int(out["resamples"][0])))


@register("power-smc", check=_check_smc, options=(Option("alpha", float, 4.0, "target p(x)^alpha"), *SMC_OPTIONS))
def power_smc(ctx: Context, o) -> dict:
  """Sequential Monte Carlo towards p(x)^alpha."""
  return _smc(ctx, o, None)


@register("smc", check=_check_smc, options=(
    Option("alpha", float, 1.0, "target p(x)^alpha"), *SMC_OPTIONS,
    Option("regex", str, None, "the continuation matches this in full (re.fullmatch, ASCII classes)")))
def constrained_smc(ctx: Context, o) -> dict:
  """Sequential Monte Carlo under a regular-expression constraint."""
  return _smc(ctx, o, o.regex)


@register("mbr", check=_check_mbr, options=(
    Option("samples", int, 16, "samples, drawn at --temperature"),
    Option("utility", str, "exact", "exact, chrf or pkg.module:function(hypothesis, reference)"),
    Option("temperature", float, 1.0, "sampling temperature")))
def mbr(ctx: Context, o) -> dict:
  """Minimum Bayes risk: samples at --temperature, then the one with the highest expected utility against the
  others."""
  eos = ctx.tokenizer.eos_id
  got, _, got_len = rollout.sample(ctx.model, ctx.params, ctx.ids, ctx.lengths, ctx.rng, max_new=o.max_new,
                                   temperature=float(o.temperature), stop_ids=jnp.array([eos]), group=o.samples)
  log_p = rollout.score(ctx.score_model, ctx.params, jnp.repeat(ctx.ids, o.samples, 0),
                        jnp.repeat(ctx.lengths, o.samples), got, got_len)  # the model's own log p (untempered)
  decoded = ctx.texts(got, got_len)
  chosen, expected = search.mbr([t for t, _ in decoded], utility=o.utility)
  outputs = [dict(text=t, units=u, log_p=float(lp), expected_utility=float(e))
             for (t, u), lp, e in zip(decoded, parallel.to_host(log_p).sum(1), expected)]
  return dict(outputs=outputs, chosen=chosen,  # the loop stops once every row has ended
              stats=dict(forward_passes=1 + int(np.max(parallel.to_host(got_len))), rows=o.samples,
                         utility=o.utility if isinstance(o.utility, str) else getattr(o.utility, "__name__", "custom")))
