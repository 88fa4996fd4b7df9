"""Power sampling decided without sampling noise: exact expected accuracy under p^α and token temperature 1/α.

Run:
  python benchmarks/power_exact.py                    # trains the rl_arith init, then 128 test prompts
  python benchmarks/power_exact.py --workdir /tmp/power_exact   # reuses (or first trains) the init there
  python benchmarks/power_exact.py --quick            # smoke mode: a 20-step init, 4 prompts
Writes JSON to --out (default benchmarks/results/power_exact.json) and prints a table.

The model is `rl_arith`'s next-token init, trained as `lm rl rl_arith` trains it into WORKDIR/init (the
experiment's config, the `split=pretrain` arithmetic; `--init-steps` to shorten it). For each of the first N
prompts of the test split (`rl.eval_source` with split=test, as benchmarks/rl.py reports), every completion in
Ω(4) (up to 3 digits then eos, or 4 digits cut at the budget; the longest answer, 99+99=198, has 3) is
enumerated with `lm/decoding/exact.py`: 11,110 sequences from 1,111 model rows (4 batched
calls). The accuracy of
a decoder is then the exact probability of the right answer then eos:
  p           sampling at temperature 1: p(answer);
  p^α         the sequence-level power distribution π_α(x) = p(x)^α / Σ_Ω p^α (Karan & Du 2025's target, what
              MH/SMC power samplers aim at);
  temp 1/α    sampling each unit at temperature 1/α: Π_t p(x_t|x<t)^α / Σ_v p(v|x<t)^α;
  greedy      1 if the unit-argmax path (over the whole vocabulary) is the answer then eos, else 0;
  argmax seq  1 if the mode of p over Ω is the answer then eos, else 0 (π_α as α → ∞).
Only digit and eos branches are followed. Under p and temperature the mass that leaves through another byte is
known exactly (it is wrong). Under p^α what it adds to Σ p^α is bounded: a branch of probability b holds
sequences of probability ≤ b summing to ≤ b, so their Σ p^α ≤ b^α. The p^α accuracy is therefore an interval
[p_t^α / (Z_in + Σ b^α), p_t^α / Z_in]; the comparison uses its lower end (conservative for p^α). The mode is
certified when no left branch is more probable than the best enumerated sequence.

Results (2-core CPU shared with other jobs, JAX CPU; 2026-12-07; commit bfeaca3; exact expected accuracy on the
first 128 test prompts, mean [95% t-interval over prompts]; Δ paired by prompt):
  `python benchmarks/power_exact.py --workdir /tmp/power_exact` (the experiment's 1000-step init; 116 s after
  the init's own ~5 min): p 0.783 [0.734, 0.833]; temperature 1/2 0.841, p^2 0.841; temperature 1/4 0.858, p^4
  0.857; greedy 0.875 [0.817, 0.933]; the argmax sequence is greedy's answer on all 128 prompts (every mode
  certified). p^α - temperature 1/α: α=2 -0.0009 [-0.0023, +0.0006] (p 0.23), α=4 -0.0010 [-0.0026, +0.0005]
  (p 0.19).
  `... --workdir /tmp/power_exact_800 --init-steps 800 --out benchmarks/results/power_exact_800.json` (the weak
  800-step init benchmarks/rl.py starts from; 362 s with its training): p 0.207 [0.184, 0.231]; temperature 1/2
  0.255, p^2 0.253; temperature 1/4 0.281, p^4 0.276; greedy 0.305 [0.224, 0.386]; argmax sequence 0.281 (wrong
  on 3 prompts where greedy is right). p^α - temperature 1/α: α=2 -0.0026 [-0.0057, +0.0005]
  (p 0.10), α=4 -0.0046 [-0.0127, +0.0034] (p 0.26).
Conclusion: on this model p^α does not beat token temperature 1/α. For both inits and both α the point
estimate of the paired difference is negative and its interval lies within ±0.013. At the experiment's init a
gain of p^4 above 0.0005 is ruled out at 95%. The two distributions do differ per prompt (p^4 against
temperature 1/4 by up to 0.09 at 1000 steps and 0.35 at 800, in both directions), but not in accuracy on
average. Both move toward greedy and neither exceeds it. No prompt has greedy wrong and the mode of p right, so
there is no sequence-level preference here for sharpening to find. Running MH/SMC power samplers on this task is
therefore not warranted: the distribution they target is no more accurate than temperature sampling.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import protocol  # noqa: E402  # benchmarks/protocol.py, beside this file
from lm import config as config_lib  # noqa: E402
from lm.decoding import exact  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ALPHAS = (2.0, 4.0)
MAX_NEW = 4  # 3 digits + eos: every arith answer fits


class Cached:
  """A next-log-probs function that remembers every prefix's row, so tempered enumerations and the greedy path
  reuse the model calls of the first enumeration."""

  def __init__(self, next_log_probs):
    self.fn, self.rows = next_log_probs, {}

  def __call__(self, prefixes):
    todo = [p for p in dict.fromkeys(prefixes) if p not in self.rows]
    if todo:
      self.rows.update(zip(todo, self.fn(todo)))
    return np.stack([self.rows[p] for p in prefixes]) if prefixes else np.zeros((0, 0))


def tempered(next_log_probs, alpha: float):
  """Each conditional at temperature 1/α: p^α renormalised over the whole vocabulary."""
  def fn(prefixes):
    a_NxV = alpha * next_log_probs(prefixes)
    top_N = a_NxV.max(-1, keepdims=True)
    return a_NxV - top_N - np.log(np.exp(a_NxV - top_N).sum(-1, keepdims=True))
  return fn


def _left(cached: Cached, allowed: set[int]) -> np.ndarray:
  """log-probability of every branch the enumeration did not follow (prefix + a unit outside `allowed`)."""
  out = []
  for prefix, row in cached.rows.items():
    outside = np.ones(len(row), bool)
    outside[sorted(allowed)] = False
    lp = sum(float(cached.rows[prefix[:i]][u]) for i, u in enumerate(prefix))
    out.append(lp + row[outside])
  return np.concatenate(out) if out else np.zeros(0)


def accuracies(next_log_probs, eos_id: int, max_new: int, target: tuple[int, ...], allowed: set[int] | None = None,
               alphas=ALPHAS) -> dict:
  """Exact expected accuracy (probability of `target`, which ends with eos) under p, p^α, token temperature 1/α,
  greedy and the mode of p, enumerating the units in `allowed` (None: all); see the module docstring."""
  cached = Cached(next_log_probs)
  ok = None if allowed is None else (lambda prefix, v: v in allowed)  # noqa: E731
  seqs = exact.enumerate_sequences(cached, eos_id, max_new, ok)
  lp = dict(seqs)
  left = _left(cached, allowed) if allowed is not None else np.zeros(0)
  lp_t = lp.get(target, -np.inf)
  out = dict(p=float(np.exp(lp_t)), mass_left=float(1.0 - np.exp(exact.logsumexp([x for _, x in seqs]))),
             sequences=len(seqs))
  for alpha in alphas:
    hi = exact.power_distribution(seqs, alpha).get(target, 0.0)
    z_left = exact.logsumexp(alpha * left) if len(left) else -np.inf
    lo = float(np.exp(alpha * lp_t - np.logaddexp(exact.log_partition(seqs, alpha), z_left)))
    q = dict(exact.enumerate_sequences(tempered(cached, alpha), eos_id, max_new, ok))
    out[f"power{alpha:g}"] = lo
    out[f"power{alpha:g}_hi"] = float(hi)
    out[f"temp{alpha:g}"] = float(np.exp(q.get(target, -np.inf)))
  path = ()  # every followed prefix's row is cached; one that is not left through a unit outside `allowed`
  while len(path) < max_new and (not path or path[-1] != eos_id) and path in cached.rows:
    path += (int(np.argmax(cached.rows[path])),)
  out["greedy"] = float(path == target)
  mode, best = max(seqs, key=lambda s: s[1])
  out["argmax"] = float(mode == target)
  out["argmax_certified"] = bool(not len(left) or left.max() < best)
  return out


def _config(init_steps: int):
  config = config_lib.load_experiment("rl_arith")
  if init_steps:
    config.train.update(steps=init_steps, checkpoint_every=init_steps, log_every=max(init_steps // 4, 1))
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(init_steps // 10, 1))
  config_lib.validate(config)
  return config


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="", help="the init goes to WORKDIR/init (reused when trained; default: a "
                 "new temporary folder)")
  p.add_argument("--init-steps", type=int, default=0, help="next-token steps of the init (0: the experiment's)")
  p.add_argument("--prompts", type=int, default=128)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=str(RESULTS / "power_exact.json"))
  args = p.parse_args()
  if args.quick:
    args.init_steps, args.prompts = 20, 4
  import tempfile  # pylint: disable=import-outside-toplevel
  from lm.decoding import steps  # pylint: disable=import-outside-toplevel
  from lm.errors import RunFinished  # pylint: disable=import-outside-toplevel
  from lm.rl import loop as rl_loop  # pylint: disable=import-outside-toplevel
  from lm.train import loop, run as run_lib  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="lm_power_exact_"))
  config = _config(args.init_steps)
  try:
    loop.train(config, str(workdir / "init"))  # as `lm rl` trains its init (lm/rl/loop.py)
  except RunFinished:
    pass
  t_train = time.time() - t0
  run, params = run_lib.restore_for_inference(str(workdir / "init"))
  tok = run.tokenizer
  source = config.rl.eval_source.replace(":split=dev", ":split=test")
  pairs = rl_loop.prompt_answers(source)[:args.prompts]
  if len(pairs) < args.prompts:
    raise SystemExit(f"error: {source} has {len(pairs)} prompts, fewer than --prompts {args.prompts}")
  base = steps.next_log_probs_fn(run.model, params, np.zeros((0,), np.int32), bucket=64)  # one jit for all prompts
  allowed = {int(u) for u in tok.encode(b"0123456789")} | {tok.eos_id}
  rows = []
  for i, (prompt, answer) in enumerate(pairs):
    ctx = tuple(int(u) for u in tok.prompt_ids(prompt))
    target = tuple(int(u) for u in tok.encode(answer.encode())) + (tok.eos_id,)
    acc = accuracies(lambda ps, ctx=ctx: base([ctx + p for p in ps]), tok.eos_id, MAX_NEW, target, allowed)
    rows.append(dict(prompt=prompt, answer=answer, **acc))
    if i % 16 == 15:
      print(f"{i + 1}/{len(pairs)} prompts ({time.time() - t0:.0f}s)", flush=True)
  methods = ["p", *(f"{k}{a:g}" for a in ALPHAS for k in ("power", "temp")), "greedy", "argmax"]
  summaries = {m: protocol.summary([r[m] for r in rows]) for m in methods}
  comparisons = {f"power{a:g}-temp{a:g}": protocol.paired([r[f"power{a:g}"] for r in rows],
                                                          [r[f"temp{a:g}"] for r in rows]) for a in ALPHAS}
  comparisons.update({f"{m}-greedy": protocol.paired([r[m] for r in rows], [r["greedy"] for r in rows])
                      for m in (*(f"power{a:g}" for a in ALPHAS), "argmax")})
  gap = max(r[f"power{a:g}_hi"] - r[f"power{a:g}"] for r in rows for a in ALPHAS)
  print(f"\nexact expected accuracy on {len(pairs)} test prompts of {source}, init {config.train.steps} steps "
        f"(mean ± std [95% interval] over prompts)")
  for m in methods:
    print(f"  {m:8} {protocol.text(summaries[m], 4)}")
  for k, d in comparisons.items():
    a, b = k.split("-")
    wins = sum(r[a] > r[b] for r in rows), sum(r[a] < r[b] for r in rows)
    print(f"  {k:16} Δ {protocol.text(d, 4)}  p={d['p']:.3g}  higher on {wins[0]}, lower on {wins[1]} prompts"
          if d["p"] is not None else f"  {k:16} Δ {d['mean']:.4f}")
  print(f"  p^α bound width (largest over prompts): {gap:.2g}; mass left through non-digit bytes under p: "
        f"mean {np.mean([r['mass_left'] for r in rows]):.3g}; mode certified on "
        f"{sum(r['argmax_certified'] for r in rows)}/{len(rows)}")
  settings = dict(init_steps=config.train.steps, prompts=len(pairs), test_source=source, max_new=MAX_NEW,
                  alphas=list(ALPHAS), experiment="rl_arith", allowed="digits and eos")
  results = dict(seconds=time.time() - t0, train_seconds=t_train, summaries=summaries, paired=comparisons,
                 power_bound_width=gap, rows=rows)
  protocol.write(args.out, protocol.record(None, settings, results))
  print(f"\nwrote {args.out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
  main()
