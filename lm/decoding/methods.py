"""`lm sample --method NAME`: one prompt, one sequence-level method, a report of what it produced and cost.

Every method returns `outputs` (text, units, the model's log p, and the method's own weight or score), the
index of the one it `chosen` (what `lm sample` prints after the prompt) and `stats` (forward passes: model
calls, each over all of the method's rows; effective sample size, acceptance where they apply).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lm import parallel
from lm.decoding import regex as regex_lib
from lm.decoding import search, smc
from lm.errors import LMError
from lm.decoding import rollout

METHODS = ("beam", "diverse-beam", "power", "power-smc", "smc", "mbr")


@dataclasses.dataclass
class Options:
  """A method's settings; None is "not given" (the method's default, `DEFAULTS`). Giving one that the
  method does not read is an error, not silently ignored."""
  max_new: int = 200
  beams: int | None = None
  groups: int | None = None
  diversity: float | None = None
  length_penalty: float | None = None
  alpha: float | None = None
  particles: int | None = None
  ess: float | None = None
  ramp: int | None = None
  blocks: int | None = None
  mh_steps: int | None = None
  regex: str | None = None
  samples: int | None = None
  utility: str | Callable[[str, str], float] | None = None  # exact, chrf, pkg.module:function or a function
  temperature: float | None = None
  seed: int = 0


# What each method reads, and its defaults (power's alpha 4 is Karan & Du's; smc's 1 is the model itself).
READS = {"beam": ("beams", "length_penalty"), "diverse-beam": ("beams", "groups", "diversity", "length_penalty"),
         "power": ("alpha", "blocks", "mh_steps"), "power-smc": ("alpha", "particles", "ess", "ramp"),
         "smc": ("alpha", "particles", "ess", "ramp", "regex"), "mbr": ("samples", "utility", "temperature")}
DEFAULTS = dict(beams=4, groups=2, diversity=0.5, length_penalty=1.0, particles=16, ess=0.5, ramp=0, blocks=4,
                mh_steps=10, samples=16, utility="exact", temperature=1.0)


def resolved(method: str, o: Options) -> Options:
  """`o` with the method's defaults for what was not given; one line for an option the method does not read."""
  if method not in METHODS:
    raise LMError(f"--method {method!r} is not one of {', '.join(METHODS)}")
  given = {f.name for f in dataclasses.fields(o) if f.name not in ("max_new", "seed") and getattr(o, f.name) is not None}
  stray = sorted(given - set(READS[method]))
  if stray:
    flags = ", ".join("--" + k.replace("_", "-") for k in stray)
    raise LMError(f"{flags} does not apply to --method {method} (it reads "
                  f"{', '.join('--' + k.replace('_', '-') for k in READS[method])})")
  alpha = (4.0 if method in ("power", "power-smc") else 1.0) if o.alpha is None else o.alpha
  fill = {k: DEFAULTS[k] for k in DEFAULTS if getattr(o, k) is None}
  return dataclasses.replace(o, alpha=alpha, **fill)


def check(method: str, o: Options) -> Options:
  """One line for a bad choice, before anything compiles; the resolved options."""
  o = resolved(method, o)
  if o.max_new < 1:
    raise LMError("--max-new must be at least 1")
  positive = dict(beams=o.beams, groups=o.groups, particles=o.particles, samples=o.samples, blocks=o.blocks)
  for name, value in positive.items():
    if value < 1:
      raise LMError(f"--{name} must be at least 1, got {value}")
  if o.mh_steps < 0 or o.diversity < 0:
    raise LMError(f"--mh-steps and --diversity must be at least 0, got {o.mh_steps} and {o.diversity}")
  if o.temperature <= 0:
    raise LMError(f"--temperature for mbr samples must be positive, got {o.temperature}")
  if method == "diverse-beam" and o.beams % o.groups:
    raise LMError(f"--beams {o.beams} must split into --groups {o.groups} equal groups")
  if method == "power" and o.max_new % o.blocks:
    raise LMError(f"--max-new {o.max_new} must split into --blocks {o.blocks} equal blocks")
  if o.alpha <= 0:
    raise LMError(f"--alpha must be positive, got {o.alpha}")
  if method == "smc" and o.regex is None:
    raise LMError("--method smc needs --regex PATTERN (or use --method power-smc for the power distribution)")
  if method == "mbr":
    search.utility_fn(o.utility)  # a name, pkg.module:function or a function; one line otherwise
  if not 0 <= o.ess <= 1:
    raise LMError(f"--ess is a fraction of the particles, in [0, 1]; got {o.ess}")
  if o.ramp < 0:
    raise LMError(f"--ramp counts units (0: no ramp), got {o.ramp}")
  if o.regex is not None:
    _compile(o.regex)
  return o


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


def decode(model, score_model, params, tokenizer, prompt: str, method: str, o: Options) -> dict:
  """Run `method` on `prompt` (text) with the decode-mode `model` (`score_model`: the same in training mode,
  for teacher-forced log p); the report described above."""
  o = check(method, o)
  eos = tokenizer.eos_id
  ids = jnp.asarray(tokenizer.prompt_ids(prompt))[None]
  lengths = jnp.array([ids.shape[1]], jnp.int32)
  rng = jax.random.PRNGKey(o.seed)

  def texts(ids_RxN, lengths_R):
    out = []
    for row, n in zip(parallel.to_host(ids_RxN), parallel.to_host(lengths_R)):
      units = [int(u) for u in row[:int(n)]]
      out.append((tokenizer.decode([u for u in units if u != eos]), units))
    return out

  if method in ("beam", "diverse-beam"):
    groups = o.groups if method == "diverse-beam" else 1
    got, got_len, log_p, score, passes = search.beam_search(
        model, params, ids, lengths, beams=o.beams, max_new=o.max_new, eos_id=eos, groups=groups,
        diversity=float(o.diversity) if groups > 1 else 0.0, length_penalty=float(o.length_penalty))
    outputs = [dict(text=t, units=u, log_p=float(lp), score=float(s)) for (t, u), lp, s in
               zip(texts(got[0], got_len[0]), parallel.to_host(log_p[0]), parallel.to_host(score[0]))
               if np.isfinite(s)]
    chosen = int(np.argmax([x["score"] for x in outputs]))
    return dict(method=method, outputs=outputs, chosen=chosen, stats=dict(forward_passes=int(passes), rows=o.beams))

  if method == "power":
    alpha = float(o.alpha)
    out = jax.tree.map(parallel.to_host, smc.power_mh(model, params, ids, lengths, rng, max_new=o.max_new,
                                                      eos_id=eos, alpha=alpha, blocks=o.blocks,
                                                      steps_per_block=o.mh_steps))
    (text, units), = texts(out["ids"], out["lengths"])
    return dict(method=method, outputs=[dict(text=text, units=units, log_p=float(out["log_p"][0]))], chosen=0,
                stats=dict(forward_passes=int(out["forward_passes"]), rows=1, alpha=alpha, moves=int(out["moves"][0]),
                           acceptance=int(out["accepted"][0]) / max(int(out["moves"][0]), 1)))

  if method in ("power-smc", "smc"):
    alpha = float(o.alpha)
    tables = None
    if method == "smc":
      tables = constraint_tables(o.regex, tokenizer, model.cfg.vocab_size, o.max_new)
    out = jax.tree.map(parallel.to_host, smc.smc(model, params, ids, lengths, rng, particles=o.particles,
                                                 max_new=o.max_new, eos_id=eos, alpha=alpha, ess=float(o.ess),
                                                 tables=tables, ramp=int(o.ramp)))
    log_w = np.asarray(out["log_weights"][0], np.float64)
    outputs = [dict(text=t, units=u, log_p=float(lp), weight=float(np.exp(w))) for (t, u), lp, w in
               zip(texts(out["ids"][0], out["lengths"][0]), out["log_p"][0], log_w)]
    chosen = int(np.random.default_rng(o.seed).choice(len(log_w), p=np.exp(log_w) / np.exp(log_w).sum()))
    table = tokenizer.id_bytes()
    for x in outputs if o.regex is not None else ():  # the bytes the DFA read, checked by Python's re
      text = b"".join(table[u] for u in x["units"] if u != eos).decode("utf-8")
      if re.fullmatch(o.regex, text, re.ASCII) is None:  # only if the DFA and re disagree: say so, print nothing
        raise RuntimeError(f"constrained SMC produced {text!r}, which does not match {o.regex!r}")
    ess_now = 1.0 / float(np.sum(np.exp(2 * log_w))) / o.particles
    return dict(method=method, outputs=outputs, chosen=chosen, stats=dict(
        forward_passes=int(out["forward_passes"]), rows=o.particles, alpha=alpha, log_z=float(out["log_z"][0]),
        ess=ess_now, min_ess=float(out["min_ess"][0]), resamples=int(out["resamples"][0])))

  # mbr: samples at --temperature, then the one with the highest expected utility against the others.
  got, _, got_len = rollout.sample(model, params, ids, lengths, rng, max_new=o.max_new,
                                   temperature=float(o.temperature), stop_ids=jnp.array([eos]), group=o.samples)
  log_p = rollout.score(score_model, params, jnp.repeat(ids, o.samples, 0), jnp.repeat(lengths, o.samples), got,
                        got_len)  # the model's own log p (the sampling distribution is tempered)
  decoded = texts(got, got_len)
  chosen, expected = search.mbr([t for t, _ in decoded], utility=o.utility)
  outputs = [dict(text=t, units=u, log_p=float(lp), expected_utility=float(e))
             for (t, u), lp, e in zip(decoded, parallel.to_host(log_p).sum(1), expected)]
  return dict(method=method, outputs=outputs, chosen=chosen,  # the loop stops once every row has ended
              stats=dict(forward_passes=1 + int(np.max(parallel.to_host(got_len))), rows=o.samples,
                         utility=o.utility if isinstance(o.utility, str) else getattr(o.utility, "__name__", "custom")))
