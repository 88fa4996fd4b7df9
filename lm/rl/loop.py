"""`lm rl EXPERIMENT --workdir DIR`: sequence-level training with policy gradients on prompts with answers.

Each step: `rl.prompts_per_step` training prompts (drawn by step from `rl.prompts`), `rl.group` samples each
from the current policy with their log-probabilities (`lm.decoding.rollout.sample`), rewards (`lm.rl.rewards`),
group advantages, then `rl.updates_per_batch` updates of the `pg` objective (`pg_kl` with a reference when
`rl.kl_coef` > 0) through the same jitted train step, checkpoints, trackers and preemption handling as `lm
train`. With no `rl.init_from` the experiment's own `lm train` run goes to WORKDIR/init first. Held-out pass@1
and pass@k every `rl.eval_every` steps, on the first `rl.eval_prompts` prompts of `rl.eval_source` (e.g. a
`split=dev` synthetic source, none of whose problems is in pretraining or in rl.prompts), or without one on the
first of `rl.prompts`, which are then not trained on.
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import objectives, parallel
from lm.data import corpus, synthetic
from lm.errors import ConfigError, RunFinished
from lm.objectives import sequence
from lm.rl import rewards as rewards_lib
from lm.rl.rollouts import Rollouts
from lm.train import checkpoint, history, init_from, lease, loop, trackers
from lm.train.run import build_run, check, init_params, load_reference, restore_step
from lm.train.state import param_count


# rl fields a resumed `lm rl` may change (with train.steps, which follows rl.steps).
RL_SAFE = ("rl.steps", "rl.log_every", "rl.eval_every", "rl.checkpoint_every", "rl.pass_k", "rl.pack", "train.steps",
           "train.log_every")


def rl_config(config: ml_collections.ConfigDict, init: str) -> ml_collections.ConfigDict:
  """The `lm train`-shaped config of the RL phase: `init_from` the init run, the `pg` objective, rl's schedule."""
  r = config.rl
  out = ml_collections.ConfigDict(config.to_dict())
  out.init_from = init
  with_kl = r.kl_coef > 0
  if r.algorithm == "dpo":
    out.objectives = [dict(name="dpo", weight=1.0, beta=r.beta, reference=r.reference or init)]
  else:
    out.objectives = [dict(name="pg_kl" if with_kl else "pg", weight=1.0, temperature=r.temperature, top_k=r.top_k,
                         top_p=r.top_p, ratio=r.ratio, clip_low=r.clip_low, clip_high=r.clip_high,
                         dual_clip=r.dual_clip, aggregation=r.aggregation, max_len=r.max_new, kl_coef=r.kl_coef,
                         kl_estimator=r.kl_estimator, reference=(r.reference or init) if with_kl else "")]
  rows = r.prompts_per_step * (2 if r.algorithm == "dpo" else r.group)
  out.optim.update(lr=r.lr, warmup_steps=0, weight_decay=0.0, schedule="constant")
  out.train.update(steps=r.steps * r.updates_per_batch, log_every=r.log_every, grad_accum=1)
  out.data.batch_size = rows
  out.eval.batch_size = rows
  return out


def prompt_answers(source: str) -> list[tuple[str, str]]:
  """(prompt, answer) pairs of a source whose documents end `=ANSWER` (synthetic:arith, synthetic:star)."""
  return [synthetic.prompt_answer(d) for d in corpus.load_documents(source)]


def split_prompts(r, pairs: list) -> tuple[list, list]:
  """(held-out, training) prompts of rl config `r`: the first `r.eval_prompts` of `r.eval_source` and every one of
  `pairs` (pg with an eval source), or the first `r.eval_prompts` of `pairs` and the rest."""
  if r.eval_source and r.algorithm == "pg":
    held = prompt_answers(r.eval_source)
    if len(held) < r.eval_prompts:
      raise ConfigError(f"rl.eval_source {r.eval_source!r} has {len(held)} prompts, fewer than rl.eval_prompts="
                        f"{r.eval_prompts}; raise its n or hold out fewer")
    return held[:r.eval_prompts], pairs
  if len(pairs) <= r.eval_prompts:
    raise ConfigError(f"rl.prompts {r.prompts!r} has {len(pairs)} prompts, not more than rl.eval_prompts="
                      f"{r.eval_prompts}; add prompts or hold out fewer")
  return pairs[:r.eval_prompts], pairs[r.eval_prompts:]


def preference_pairs(path: str) -> list[tuple[str, str, str]]:
  """(prompt, chosen, rejected) from a JSONL file with those three fields per line."""
  out = []
  try:
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f):
        if line.strip():
          row = json.loads(line)
          out.append((row["prompt"], row["chosen"], row["rejected"]))
  except OSError as e:
    raise ConfigError(f"rl.pairs={path!r}: cannot read it ({e.strerror}); pass a JSONL file") from None
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"rl.pairs={path!r} line {i + 1}: needs JSON with prompt, chosen and rejected ({e})") from None
  return out


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _init_run(config, workdir, devices) -> str:
  """The run RL starts from: `rl.init_from`, or the experiment's own `lm train` run in WORKDIR/init."""
  if config.rl.init_from:
    return config.rl.init_from
  init = str(checkpoint.workdir_path(workdir) / "init")
  try:
    loop.train(config, init, devices)
  except RunFinished:
    pass  # trained by an earlier start of this command
  return init


def train(config: ml_collections.ConfigDict, workdir, devices=None) -> dict:
  """Run `lm rl`; resumes from WORKDIR's newest checkpoint. Returns the last metrics and evaluation."""
  r = config.rl
  if len(r.rewards) != len(r.reward_weights):
    raise ConfigError(f"rl.rewards has {len(r.rewards)} entries and rl.reward_weights {len(r.reward_weights)}; "
                      "give one weight per reward")
  if r.algorithm not in ("pg", "dpo"):
    raise ConfigError(f"rl.algorithm={r.algorithm!r}; choose pg or dpo")
  rewards_lib.combine(list(zip(r.rewards, r.reward_weights)))  # bad reward specs fail before anything runs
  sequence.advantages(jnp.zeros(r.group), r.group, r.advantage)
  dpo = r.algorithm == "dpo"
  if dpo and not r.pairs:
    raise ConfigError("rl.algorithm=dpo needs rl.pairs: a JSONL file of prompt, chosen, rejected")
  triples = preference_pairs(r.pairs) if dpo else []
  pairs = [(p, c) for p, c, _ in triples] if dpo else prompt_answers(r.prompts)
  eval_pairs, train_pairs = split_prompts(r, pairs)
  objectives.build(rl_config(config, "").objectives)  # the objective's options, before any training
  workdir = checkpoint.workdir_path(workdir)
  with lease.hold(workdir / "rl", "lm rl"):  # one writer: a second `lm rl` on this workdir is refused
    return _train(config, workdir, devices, dpo, triples, eval_pairs, train_pairs)


def _train(config, workdir, devices, dpo: bool, triples: list, eval_pairs: list, train_pairs: list) -> dict:
  r = config.rl
  primary = jax.process_index() == 0
  init = _init_run(config, workdir, devices)
  cfg = check(rl_config(config, init), devices)
  ckpts = checkpoint.Checkpoints(workdir / "rl", keep=cfg.train.keep_checkpoints, read_only=False, quarantine=True)
  tokenizer = init_from.init_tokenizer(init)
  run = build_run(cfg, tokenizer, devices)

  def attempt(step):  # the newest step that reads and matches its checksums; damaged ones are moved aside
    meta = ckpts.read_meta(step)
    refused = [history.describe(k, *v) for k, v in history.changes(meta["config"], cfg.to_dict()).items()
               if not (k in RL_SAFE or history.is_safe(k) and not k.startswith("rl."))]
    if refused:
      raise ConfigError(f"cannot resume the rl run in {workdir} with {'; '.join(refused)}: only its length, logging, "
                        "evaluation and checkpointing may change; set these back or use a new --workdir")
    return meta["integrity"], restore_step(ckpts, step, run, meta["config"])

  found = checkpoint.restore_newest(ckpts, attempt, lambda step, r: ckpts.verify(step, r[0], r[1]))
  if found is not None:
    start, (_, state) = found
  else:
    state = run.init(cfg.train.seed)
    state = state.replace(params=init_params(run, state.params)[0])
    start = 0
  if start >= r.steps:
    raise RunFinished(f"rl run finished at step {start} in {workdir} (rl.steps={r.steps}); raise --config.rl.steps")
  eval_triples, train_triples = triples[:r.eval_prompts], triples[r.eval_prompts:]
  rollouts = Rollouts(run, eval_pairs + train_pairs, cfg)
  reference = load_reference(run, devices)
  step_fn = loop.jit_train_step(run, tokenizer.unit_bytes(), reference)
  extra = (reference[1],) if reference else ()
  writer = trackers.Trackers(cfg.train.trackers, workdir / "rl", cfg.to_dict(), start, enabled=primary)
  if primary:
    history.record(workdir / "rl", cfg.to_dict(), start, None if start == 0 else {})
    print(f"{config.experiment} rl: {param_count(state.params) / 1e6:.2f}M params from {init}, "
          f"{len(train_pairs)} training prompts, " + (f"{r.prompts_per_step} preference pairs a step" if dpo else
                                                        f"{r.prompts_per_step} x {r.group} samples a step"), flush=True)
  last, evaluation = {}, {}
  with parallel.activation_context(run.mesh), loop.Preemption() as preemption:
    if start == 0 and not dpo:  # where RL starts from: the init run's held-out pass@k, as step 0
      evaluation = evaluate(rollouts, state.params, eval_pairs, r, seed=cfg.train.seed)
      writer.write(0, evaluation)
      if primary:
        print(f"rl step 0: pass@1={evaluation['pass@1']:.4g} pass@{r.pass_k}={evaluation[f'pass@{r.pass_k}']:.4g}",
              flush=True)
    for step in range(start, r.steps):
      t0 = time.time()
      pick = np.random.default_rng([cfg.train.seed, step]).choice(len(train_pairs), r.prompts_per_step, replace=False)
      if dpo:
        batch = rollouts.pair_batch([train_triples[i] for i in pick])
        state, last = _update(run, step_fn, state, batch, extra, 1, r)
      else:
        prompts, answers = zip(*[train_pairs[i] for i in pick])
        s = rollouts.sample(state.params, list(prompts), list(answers), r.group,
                            seed=cfg.train.seed * 1_000_003 + step)
        adv = np.asarray(sequence.advantages(jnp.asarray(s["reward"]), r.group, r.advantage))
        state, last = _update(run, step_fn, state, rollouts.batch(s, adv, r.pack), extra, r.updates_per_batch, r)
        last.update(_rollout_metrics(s, r.group, r.rewards[0]))
      last["seconds"] = time.time() - t0
      done = step + 1
      evaluated = done % r.eval_every == 0 or done == r.steps
      if evaluated:
        evaluation = (evaluate_pairs(rollouts, run, state.params, eval_triples, extra) if dpo else
                      evaluate(rollouts, state.params, eval_pairs, r, seed=cfg.train.seed))
        last.update(evaluation)
      if done % r.log_every == 0 or done == r.steps or evaluated:
        writer.write(done, last)
        if primary:
          shown = ("loss", "accuracy", "margin", "eval_accuracy") if dpo else (
              "reward", "pass@1", "completion_len", "loss", "kl")
          print(f"{r.algorithm} step {done}: " + " ".join(f"{k}={last[k]:.4g}" for k in shown if k in last),
                flush=True)
      stop = preemption.should_stop(done)
      if done % r.checkpoint_every == 0 or done == r.steps or stop:
        ckpts.save(done, state, {"rl_step": done}, cfg.to_dict(), tokenizer)
      if stop:
        break
  ckpts.wait()
  writer.close()
  return dict(last=last, evaluation=evaluation, state=state, run=run)


def _update(run, step_fn, state, rows: dict, extra, updates: int, r):
  """`updates` train steps on one batch of rows; the objective's metrics as means over its events."""
  batch = run.put_batch(parallel.process_rows(rows))
  for _ in range(updates):
    state, metrics = step_fn(state, batch, *extra)
  metrics = loop.read_host(metrics)
  label = run.config.objectives[0]["name"]
  out = dict(loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]))
  events = {f"{label}/units": max(float(metrics.get(f"{label}/units", 1.0)), 1.0),
            f"{label}/pairs": float(r.prompts_per_step)}
  for key, value in metrics.items():  # pg: <x>_units per completion unit; dpo: <x>_sum per pair
    head, _, name = key.partition("/")
    if head == label and name.endswith("_units") and name != "units":
      out[name[:-len("_units")]] = float(value) / events[f"{label}/units"]
    elif head == label and name.endswith("_sum"):
      out[name[:-len("_sum")]] = float(value) / events[f"{label}/pairs"]
  return state, out


def _rollout_metrics(s: dict, group: int, first: str) -> dict:
  grouped = s["reward"].reshape(-1, group)
  return dict(reward=float(s["reward"].mean()), reward_std=float(s["reward"].std()),
              zero_spread_frac=float(np.mean(grouped.std(axis=1) == 0)), completion_len=float(s["lengths"].mean()),
              clipped_frac=float(np.mean(~s["ended"])), **_split_lengths(s, first, ""),
              **{f"reward/{k}": float(v.mean()) for k, v in s["parts"].items()})


def _split_lengths(s: dict, first: str, prefix: str) -> dict:
  """Mean completion length of the right (first reward at least 1) and of the wrong samples, where there are any."""
  right = s["parts"][first] >= 1.0
  return {f"{prefix}len_{name}": float(np.mean(s["lengths"][which]))
          for name, which in (("right", right), ("wrong", ~right)) if which.any()}


def held_out(rollouts: Rollouts, params, pairs, r, n: int, seed: int):
  """`n` samples for each held-out (prompt, answer): the samples and how many of each prompt's are right (first
  reward at least 1)."""
  prompts, answers = zip(*pairs)
  s = rollouts.sample(params, list(prompts), list(answers), n, seed=seed + 7)
  return s, (s["parts"][r.rewards[0]].reshape(len(pairs), n) >= 1.0).sum(axis=1)


def evaluate(rollouts: Rollouts, params, pairs, r, seed: int) -> dict:
  """pass@1 and pass@k (k = `rl.pass_k`, from k samples a prompt), reward, completion lengths on held-out prompts."""
  s, correct = held_out(rollouts, params, pairs, r, r.pass_k, seed)
  return {"pass@1": float(np.mean([pass_at_k(r.pass_k, int(c), 1) for c in correct])),
          f"pass@{r.pass_k}": float(np.mean([pass_at_k(r.pass_k, int(c), r.pass_k) for c in correct])),
          "eval_reward": float(s["reward"].mean()), "eval_len": float(s["lengths"].mean()),
          "answer_prob": float(np.mean(rollouts.answer_prob(params, *map(list, zip(*pairs))))),
          **_split_lengths(s, r.rewards[0], "eval_")}


def evaluate_pairs(rollouts: Rollouts, run, params, triples, extra) -> dict:
  """Held-out preference accuracy: how often the policy's summed log-probability margin over the reference
  favours the chosen completion."""
  batch = rollouts.pair_batch(triples)
  mask = batch["loss_mask"]

  def seq(p):
    logits = run.model.apply({"params": p}, {k: jnp.asarray(batch[k]) for k in
                                             ("inputs", "positions", "segment_ids")}, with_heads=False).logits
    unit = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), jnp.asarray(batch["targets"])[..., None], -1)[..., 0]
    return np.asarray(jnp.sum(unit * mask, axis=1))
  margin = seq(params) - (seq(extra[0]) if extra else 0.0)
  return {"eval_accuracy": float(np.mean(margin[0::2] > margin[1::2]))}


def summary_line(result: dict) -> str:
  return json.dumps({k: round(v, 4) for k, v in result["last"].items() if isinstance(v, float)})
