"""Sequence-level decoding on small trained models: power sampling against token temperature, constrained SMC
against masking, byte-exact against canonical bits per byte.

Run:
  python benchmarks/sequence_sampling.py                       # trains probe_star:small and a BPE token_ntp:tiny
  python benchmarks/sequence_sampling.py --star-workdir runs/star_small --bpe-workdir runs/bpe
  python benchmarks/sequence_sampling.py --quick               # smoke: tiny models, a few graphs
Writes JSON to --out (default benchmarks/results/sequence_sampling.json) and prints three tables.

Parts (each method sees the same held-out graphs, seeds and budget):
  power    star-graph answers (`probe_star`): exact-path pass@1 of greedy, token temperature 1/α, token
           temperature best-of-N by the model's log p, power MH and power SMC, with the cost as unit passes (rows
           x sequential model calls): power sampling's claim (Karan & Du 2025) is that where the first unit
           decides, p(x)^α puts more mass on right answers than per-unit temperature does. Also the model's
           own probability of the right answer: p^α can only sharpen what p already prefers. On the next-token
           star model (a coin flip at the first decision) this part is a sanity check of the samplers, not a
           test of the paper; benchmarks/power_exact.py decides p^α against temperature exactly first.
  regex    a constraint on the answer (a path of digits) for a few graphs: KL and total variation of what
           SMC draws (one particle per run, chosen by weight) and of what masking alone draws, to the exact
           p(x | x matches) enumerated over every matching continuation; masking's own exact distribution (the
           product of locally renormalised conditionals) is reported too, and the floor: the same number of
           draws from the exact conditional itself (finite samples have KL > 0). Also log mean Ẑ against
           the exact log P(match).
  bytes    a BPE `token_ntp` run: canonical and byte-exact bits per byte over the same held-out segments.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import lm  # noqa: E402
import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import api, families  # noqa: E402
from lm.data import synthetic  # noqa: E402
from lm.decoding import exact, methods, regex as regex_lib, smc, steps  # noqa: E402
from lm.eval import probes  # noqa: E402
from lm.decoding import rollout  # noqa: E402
from lm.train import loop  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "sequence_sampling.json"


def trained(experiment: str, workdir: str | None, overrides: list[str], root: str) -> api.LM:
  if workdir:
    return lm.load(workdir)
  config = families.load_config(experiment, overrides + ["sample.max_new=0"])
  out = loop.train(config, tempfile.mkdtemp(dir=root))
  return api.LM(out["run"], out["state"].params)


def held_out_graphs(r: api.LM, n: int, offset: int = 0) -> list[bytes]:
  """n star graphs the run never trained on, of its own graph options (the probe's held-out seed + offset)."""
  options, seed, _ = probes._options(r.run, "star", ("degree", "path_len", "num_nodes", "letters"), {})  # pylint: disable=protected-access
  return synthetic.star_graph_documents(n, seed=seed + offset, **options)


def power_part(r: api.LM, n: int, alpha: float, particles: int, mh_steps: int, seed: int) -> dict:
  """pass@1 on n held-out graphs per method, and unit passes per answer."""
  docs = held_out_graphs(r, n)
  tok, model = r.tokenizer, r.run.decode_model()
  eos = tok.eos_id
  max_new = max(len(tok.encode(synthetic.split_star(d)[1])) for d in docs) + 1
  budget = max_new * (1 + mh_steps)  # MH's unit passes; best-of-N gets the same
  best_of = max(1, budget // max_new)
  arms = {"greedy": [], f"token T=1/{alpha:g}": [], f"token T=1/{alpha:g}, best of {best_of} by log p": [],
          f"power MH a={alpha:g}": [], f"power SMC a={alpha:g}, {particles} particles": []}
  cost = {"greedy": max_new, f"token T=1/{alpha:g}": max_new,
          f"token T=1/{alpha:g}, best of {best_of} by log p": best_of * max_new,
          f"power MH a={alpha:g}": budget, f"power SMC a={alpha:g}, {particles} particles": particles * max_new}
  names = list(arms)
  gold_p = []  # the model's probability of the right answer: what any sampler of p (or p^α) has to work with
  for i, doc in enumerate(docs):
    prompt, _ = synthetic.split_star(doc)
    ids = jnp.asarray(tok.prompt_ids(prompt.decode()))[None]
    lengths = jnp.array([ids.shape[1]], jnp.int32)
    key = jax.random.PRNGKey(seed * 100003 + i)

    def text(units, n_units):
      units = [int(u) for u in np.asarray(units)[:int(n_units)] if int(u) != eos]
      return tok.decode_bytes(units)
    got, _, n_got = rollout.sample(model, r.params, ids, lengths, key, max_new=max_new, temperature=0.0,
                                   stop_ids=jnp.array([eos]))
    arms[names[0]].append(text(got[0], n_got[0]))
    got, _, n_got = rollout.sample(model, r.params, ids, lengths, key, max_new=max_new, temperature=1 / alpha,
                                   stop_ids=jnp.array([eos]))
    arms[names[1]].append(text(got[0], n_got[0]))
    got, _, n_got = rollout.sample(model, r.params, ids, lengths, key, max_new=max_new, temperature=1 / alpha,
                                   stop_ids=jnp.array([eos]), group=best_of)
    log_p = rollout.score(r.run.model, r.params, jnp.repeat(ids, best_of, 0), jnp.repeat(lengths, best_of), got, n_got)
    best = int(jnp.argmax(log_p.sum(1)))
    arms[names[2]].append(text(got[best], n_got[best]))
    out = smc.power_mh(model, r.params, ids, lengths, key, max_new=max_new, eos_id=eos, alpha=alpha, blocks=1,
                       steps_per_block=mh_steps)
    arms[names[3]].append(text(out["ids"][0], out["lengths"][0]))
    out = smc.smc(model, r.params, ids, lengths, key, particles=particles, max_new=max_new, eos_id=eos, alpha=alpha)
    pick = int(jax.random.categorical(jax.random.fold_in(key, 1), out["log_weights"][0]))
    arms[names[4]].append(text(out["ids"][0, pick], out["lengths"][0, pick]))
    gold = jnp.asarray(list(tok.encode(synthetic.split_star(doc)[1])) + [eos], jnp.int32)[None]
    gold_p.append(math.exp(float(rollout.score(r.run.model, r.params, ids, lengths, gold,
                                               jnp.array([gold.shape[1]])).sum())))
  rows = []
  for name in names:
    scores = probes.score_paths(arms[name], docs)
    rows.append(dict(method=name, pass_at_1=scores["accuracy"], valid_path_rate=scores["valid_path_rate"],
                     unit_passes=cost[name], pass_at_1_rate=protocol.rate(round(scores["accuracy"] * n), n)))
  return dict(graphs=n, max_new=max_new, alpha=alpha, rows=rows, chance=1 / _degree(docs[0]),
              gold_p_mean=float(np.mean(gold_p)), gold_p_above_half=float(np.mean(np.asarray(gold_p) > 0.5)))


def _degree(doc: bytes) -> int:
  """The start node's out-degree in a star document."""
  edges, start, _, _ = synthetic.parse_star(doc)
  return sum(a == start for a, _ in edges)


def regex_part(r: api.LM, pattern: str, graphs: int, runs: int, particles: int, seed: int) -> dict:
  """SMC vs masking against the exact conditional, per graph prompt; averaged over graphs."""
  tok, model, train_model = r.tokenizer, r.run.decode_model(), r.run.model
  eos = tok.eos_id
  V = steps.vocab_size(model)
  tables = methods.constraint_tables(pattern, tok, V, 1 << 20)
  next_SxV, to_accept_S, accepting_S = (np.asarray(t) for t in tables)
  max_new = int(to_accept_S[0]) + 2
  out_rows = []
  docs = held_out_graphs(r, graphs, offset=7 + seed)
  for g, doc in enumerate(docs):
    prompt, _ = synthetic.split_star(doc)
    context = tok.prompt_ids(prompt.decode())
    next_lp = steps.next_log_probs_fn(train_model, r.params, context)

    def mask(prefix) -> np.ndarray:
      """bool [V]: what masking (and SMC's proposal) allows after `prefix`: the library's own rule."""
      state = 0
      for u in prefix:
        state = next_SxV[state, u]
      ok = regex_lib.allowed_units(None, next_SxV, to_accept_S, state, max_new - len(prefix))
      ok[eos] = bool(accepting_S[state])
      return ok

    def allowed(prefix, v):
      return bool(mask(prefix)[v])
    members = exact.enumerate_sequences(next_lp, eos, max_new, allowed)
    want, _ = exact.conditional(members, lambda x: True)
    # Masking's exact distribution: each unit from the locally renormalised allowed set.
    def masked_lp(prefixes):
      lp = np.where(np.stack([mask(p) for p in prefixes]), next_lp(prefixes), -np.inf)
      return lp - np.logaddexp.reduce(lp, axis=-1, keepdims=True)
    masking_exact = dict((x, math.exp(lp)) for x, lp in exact.enumerate_sequences(masked_lp, eos, max_new, allowed))
    ids = jnp.asarray(np.repeat(context[None], runs, 0))
    lengths = jnp.full((runs,), len(context), jnp.int32)
    key = jax.random.PRNGKey(seed * 7919 + g)
    out = smc.smc(model, r.params, ids, lengths, key, particles=particles, max_new=max_new, eos_id=eos, tables=tables)
    pick = np.asarray(jax.random.categorical(jax.random.fold_in(key, 1), out["log_weights"], axis=-1))
    smc_draws = [tuple(int(u) for u in np.asarray(out["ids"][i, k])[:int(out["lengths"][i, k])])
                 for i, k in enumerate(pick)]
    masked = smc.smc(model, r.params, ids, lengths, key, particles=1, max_new=max_new, eos_id=eos, tables=tables,
                     resample=False)
    mask_draws = [tuple(int(u) for u in np.asarray(masked["ids"][i, 0])[:int(masked["lengths"][i, 0])])
                  for i in range(runs)]
    support = list(want)  # the floor: as many draws from the exact conditional itself
    exact_draws = [support[j] for j in np.random.default_rng(seed * 31 + g).choice(
        len(support), size=runs, p=np.asarray([want[x] for x in support]) / sum(want.values()))]
    out_rows.append(dict(
        graph=g, support=len(want), smc=_divergences(smc_draws, want), masking=_divergences(mask_draws, want),
        exact_draws=_divergences(exact_draws, want),
        masking_exact_kl=sum(q * math.log(q / want[x]) for x, q in masking_exact.items() if q > 0),
        log_mean_z_smc=float(np.logaddexp.reduce(np.asarray(out["log_z"], np.float64)) - math.log(runs)),
        log_p_constraint=math.log(sum(math.exp(lp) for _, lp in members))))
  mean = lambda key, sub: float(np.mean([row[key][sub] for row in out_rows]))  # noqa: E731
  return dict(pattern=pattern, runs=runs, particles=particles, max_new=max_new, graphs=out_rows,
              smc_kl=mean("smc", "kl"), smc_tv=mean("smc", "tv"), masking_kl=mean("masking", "kl"),
              masking_tv=mean("masking", "tv"), floor_kl=mean("exact_draws", "kl"), floor_tv=mean("exact_draws", "tv"),
              masking_exact_kl=float(np.mean([row["masking_exact_kl"] for row in out_rows])))


def _divergences(draws, want: dict) -> dict:
  """KL(empirical || exact) and total variation of draws against an exact distribution."""
  counts: dict = {}
  for x in draws:
    counts[x] = counts.get(x, 0) + 1
  n = len(draws)
  outside = sum(c for x, c in counts.items() if x not in want)
  kl = sum(c / n * math.log(c / n / want[x]) for x, c in counts.items() if x in want)
  tv = 0.5 * (sum(abs(counts.get(x, 0) / n - p) for x, p in want.items()) + outside / n)
  return dict(kl=kl, tv=tv, outside=outside)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--parts", default="power,regex,bytes")
  p.add_argument("--star-workdir", help="a trained probe_star run (default: train probe_star:VARIANT)")
  p.add_argument("--star-variant", default="small")
  p.add_argument("--bpe-workdir", help="a trained BPE token run (default: train token_ntp:tiny with BPE 512)")
  p.add_argument("--n", type=int, default=200, help="power: held-out graphs")
  p.add_argument("--alpha", type=float, default=4.0)
  p.add_argument("--particles", type=int, default=16)
  p.add_argument("--mh-steps", type=int, default=15)
  p.add_argument("--regex", default="[0-9],[0-9]", help="regex: a two-node path (the model wants more)")
  p.add_argument("--regex-graphs", type=int, default=3)
  p.add_argument("--runs", type=int, default=2000, help="regex: independent SMC runs per graph")
  p.add_argument("--segments", type=int, default=32, help="bytes: held-out segments")
  p.add_argument("--beam", type=int, default=16, help="bytes: tokenizations kept per prefix")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  args = p.parse_args(argv)
  parts = [x for x in args.parts.split(",") if x]
  if args.quick:
    args.star_variant, args.n, args.runs, args.regex_graphs, args.segments = "tiny", 4, 64, 1, 2
  t0 = time.time()
  measured = {}
  with tempfile.TemporaryDirectory(prefix="lm-seq-") as root:
    star_overrides = ["train.steps=20"] if args.quick else []
    if "power" in parts or "regex" in parts:
      star = trained(f"probe_star:{args.star_variant}", args.star_workdir, star_overrides, root)
      if "power" in parts:
        measured["power"] = power_part(star, args.n, args.alpha, args.particles, args.mh_steps, args.seed)
      if "regex" in parts:
        measured["regex"] = regex_part(star, args.regex, args.regex_graphs, args.runs, args.particles, args.seed)
    if "bytes" in parts:
      bpe_overrides = ["data.tokenizer=bpe", "data.vocab_size=512"] + (["train.steps=20"] if args.quick else [])
      bpe = trained("token_ntp:tiny", args.bpe_workdir, bpe_overrides, root)
      measured["bytes"] = bpe.evaluate_byte_exact(segments=args.segments, beam=args.beam)
  result = protocol.record(None if argv is None else ["benchmarks/sequence_sampling.py", *argv],
                           {k: v for k, v in vars(args).items() if k != "out"},
                           dict(parts=measured, seconds=time.time() - t0))
  _print(result["results"])
  out = protocol.write(args.out, result)
  print(f"\nwrote {out}")
  return result


def _print(result: dict) -> None:
  parts = result["parts"]
  if "power" in parts:
    pw = parts["power"]
    print(f"\npower: {pw['graphs']} held-out star graphs, answers of <= {pw['max_new']} units, chance {pw['chance']:.2f}")
    print(f"  {'method':44s} {'pass@1':>8s} {'95% interval':>15s} {'valid path':>11s} {'unit passes':>12s}")
    for row in pw["rows"]:
      r = row["pass_at_1_rate"]
      print(f"  {row['method']:44s} {row['pass_at_1']:8.3f}  [{r['lo']:.3f}, {r['hi']:.3f}] "
            f"{row['valid_path_rate']:11.3f} {row['unit_passes']:12d}")
    if "gold_p_mean" in pw:
      print(f"  the model's p(right answer): mean {pw['gold_p_mean']:.3f}, above 1/2 on {pw['gold_p_above_half']:.3f} "
            "of the graphs")
  if "regex" in parts:
    rx = parts["regex"]
    print(f"\nregex {rx['pattern']!r}: {rx['runs']} runs per graph, {rx['particles']} particles, "
          f"{len(rx['graphs'])} graphs (means)")
    print(f"  SMC      KL {rx['smc_kl']:.4f}  TV {rx['smc_tv']:.4f}")
    if "floor_kl" in rx:
      print(f"  floor    KL {rx['floor_kl']:.4f}  TV {rx['floor_tv']:.4f}  (as many draws from the exact conditional)")
    print(f"  masking  KL {rx['masking_kl']:.4f}  TV {rx['masking_tv']:.4f}  (exact KL of masking: "
          f"{rx['masking_exact_kl']:.4f})")
    for row in rx["graphs"]:
      print(f"  graph {row['graph']}: log mean Z-hat (SMC) {row['log_mean_z_smc']:.4f}, exact log P(match) "
            f"{row['log_p_constraint']:.4f}")
  if "bytes" in parts:
    b = parts["bytes"]
    print(f"\nbytes: {b['segments']} segments, beam {b['beam']}: canonical {b['canonical_bpb']:.4f} bpb, "
          f"byte-exact {b['byte_exact_bpb']:.4f} bpb, gap {b['gap_bpb']:.4f} ({b['gap_percent']:.2f}%)")


if __name__ == "__main__":
  main()
