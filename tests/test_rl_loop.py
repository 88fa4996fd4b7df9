"""`lm rl` end to end on a tiny model: pretraining into WORKDIR/init, rollouts, rewards, updates, held-out pass@k,
checkpoints and resume; bad input fails in one line before anything is written."""

import json
import re

import pytest

from lm import cli
from lm import config as config_lib
from lm.data import corpus, synthetic
from lm.rl import loop as rl_loop

FAST = ["--config.train.steps=20", "--config.train.log_every=10", "--config.rl.steps=4", "--config.rl.eval_every=2",
        "--config.rl.log_every=1", "--config.rl.checkpoint_every=2", "--config.rl.eval_prompts=8",
        "--config.rl.prompts_per_step=4", "--config.rl.group=4", "--config.rl.pass_k=4", "--config.sample.max_new=0"]


@pytest.mark.slow
def test_rl_pretrains_samples_rewards_updates_evaluates_and_resumes(tmp_path, capsys):
  w = tmp_path / "w"
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(w), *FAST]) == 0
  rows = [json.loads(line) for line in (w / "rl" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]  # step 0: the init's held-out pass@k
  assert "pass@1" in rows[0] and "reward" not in rows[0]
  rows = rows[1:]
  assert all(0 <= r["reward"] <= 1 and r["ratio"] == pytest.approx(1.0, abs=1e-5) for r in rows)  # on-policy
  assert "pass@1" in rows[1] and "pass@4" in rows[3] and "pass@1" not in rows[0]
  assert (w / "init" / "checkpoints" / "20").exists() and (w / "rl" / "checkpoints" / "4").exists()
  # Longer, with packed training rows: resumes at step 4 (the init run is finished and reused); a changed
  # learning rate is refused.
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(w), *FAST, "--config.rl.steps=6", "--config.rl.pack=4"]) == 0
  steps = [json.loads(line)["step"] for line in (w / "rl" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 1, 2, 3, 4, 5, 6]
  capsys.readouterr()
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(w), *FAST, "--config.rl.steps=8",
                   "--config.rl.lr=1e-2"]) == 2
  assert "rl.lr: 3e-05 -> 0.01" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("--config.rl.rewards=exact", "unknown reward 'exact'"),
    ("--config.rl.advantage=ppo", "advantage='ppo'"),
    ("--config.rl.eval_prompts=100000", "than rl.eval_prompts=100000"),
    ("--config.rl.ratio=seq", "ratio='seq'"),
])
def test_bad_rl_settings_fail_in_one_line_before_writing(tmp_path, capsys, override, message):
  w = tmp_path / "w"
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(w), *FAST, override]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1
  assert not w.exists()


def _problem(prompt: str):
  """What a prompt asks, written independently of lm.data.synthetic.problem_key: a star graph's edge set, start
  and goal; an arithmetic problem with the operands of + in order."""
  if "|" in prompt:
    edges, start, goal, _ = synthetic.parse_star(prompt.encode())
    return frozenset(edges), start, goal
  a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", prompt).groups()
  return (op, *sorted((int(a), int(b)))) if op in "+*" else (op, int(a), int(b))


@pytest.mark.parametrize("experiment", ["rl_arith", "rl_star"])
def test_held_out_prompts_share_no_problem_with_pretraining_or_rl_prompts(experiment):
  """At the experiments' own sizes: the dev prompts `lm rl` evaluates and the test prompts benchmarks/rl.py
  reports are in no pretraining document (as text, or as the same problem written otherwise: swapped operands,
  edges in another order) and among no RL training prompts; dev and test share none and repeat none."""
  config = config_lib.load_experiment(experiment)
  config.rl.eval_prompts = 256
  pretraining = corpus.load_documents(config.data.source)
  pairs = rl_loop.prompt_answers(config.rl.prompts)
  dev, train = rl_loop.split_prompts(config.rl, pairs)
  assert train == pairs and len(dev) == 256
  test = rl_loop.prompt_answers(config.rl.eval_source.replace("split=dev", "split=test"))
  seen = {_problem(synthetic.prompt_answer(d)[0]) for d in pretraining} | {_problem(p) for p, _ in train}
  starts = {d[:d.index(b"=") + 1] for d in pretraining}  # a document holds one problem: its prompt ends at "="
  for held in (dev, test):
    problems = [_problem(p) for p, _ in held]
    assert len(set(problems)) == len(held) == 256
    assert not seen & set(problems)
    assert not starts & {p.encode() for p, _ in held} and not {p for p, _ in held} & {p for p, _ in train}
  assert not {_problem(p) for p, _ in dev} & {_problem(p) for p, _ in test}
  assert len(pretraining) == 20000 and len(pairs) == 4000


def test_without_an_eval_source_the_first_rl_prompts_are_held_out_and_not_trained_on():
  from lm.errors import ConfigError
  config = config_lib.load_experiment("rl_arith")
  config.rl.update(eval_source="", prompts="synthetic:arith:n=100:seed=1", eval_prompts=64)
  pairs = rl_loop.prompt_answers(config.rl.prompts)
  assert rl_loop.split_prompts(config.rl, pairs) == (pairs[:64], pairs[64:])
  config.rl.eval_prompts = 100
  with pytest.raises(ConfigError, match="has 100 prompts, not more than rl.eval_prompts=100"):
    rl_loop.split_prompts(config.rl, pairs)


@pytest.mark.slow
def test_dpo_run_on_preference_pairs_lowers_its_loss(tmp_path):
  import random
  rng = random.Random(0)
  pairs = tmp_path / "pairs.jsonl"
  with open(pairs, "w") as f:
    for _ in range(24):
      a, b = rng.randrange(50), rng.randrange(50)
      f.write(json.dumps(dict(prompt=f"{a}+{b}=", chosen=str(a + b), rejected=str(a + b + 1))) + "\n")
  w = tmp_path / "w"
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(w), *FAST, "--config.rl.algorithm=dpo",
                   f"--config.rl.pairs={pairs}", "--config.rl.steps=12", "--config.rl.prompts_per_step=8",
                   "--config.rl.lr=1e-3", "--config.rl.eval_every=12"]) == 0
  rows = [json.loads(line) for line in (w / "rl" / "metrics.jsonl").read_text().splitlines()]
  assert rows[0]["loss"] == pytest.approx(0.6931, abs=0.01)  # the policy starts as its reference: margin 0
  assert rows[-1]["step"] == 12 and "eval_accuracy" in rows[-1]
  assert sum(r["loss"] for r in rows[-4:]) / 4 < rows[0]["loss"] - 0.03  # pairs seen ~4 times each
  assert (w / "rl" / "checkpoints" / "12").exists()


def test_dpo_without_pairs_fails_in_one_line(tmp_path, capsys):
  assert cli.main(["rl", "rl_arith:tiny", "--workdir", str(tmp_path / "w"), *FAST, "--config.rl.algorithm=dpo"]) == 2
  assert "needs rl.pairs" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_packed_training_rows_give_the_loss_and_gradient_of_one_sequence_per_row():
  """The same rollouts as one sequence per row and packed (`rl.pack`): fewer rows, the same pg loss, count and
  gradient through the model (segment ids keep the packed sequences apart in attention)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lm import config as config_lib
  from lm import objectives
  from lm.data.tokenizers import ByteTokenizer
  from lm.objectives.base import LossContext
  from lm.objectives import sequence
  from lm.rl import loop as rl_loop
  from lm.rl.rollouts import Rollouts
  from lm.train.run import build_run, check

  config = config_lib.load_experiment("rl_arith:tiny")
  config.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, d_ff=64)
  # GSPO's sequence ratio and GRPO's per-sequence mean: both need the packed sequences told apart (the
  # objective's own test covers every ratio and aggregation).
  config.rl.update(max_new=6, group=4, prompts="synthetic:arith:n=40:digits=2:ops=2:seed=1", ratio="sequence",
                   aggregation="sequence_mean")
  cfg = check(rl_loop.rl_config(config, ""))
  run = build_run(cfg, ByteTokenizer())
  params = run.init(0).params
  pairs = rl_loop.prompt_answers(cfg.rl.prompts)
  rollouts = Rollouts(run, pairs, cfg)
  prompts, answers = map(list, zip(*pairs[:4]))
  s = rollouts.sample(params, prompts, answers, 4, seed=0)
  adv = np.asarray(sequence.advantages(jnp.asarray(np.arange(16.0) % 3), 4, "grpo"))
  loss_fn = objectives.build(cfg.objectives)

  def loss(p, batch):
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    t = loss_fn(run.model.apply({"params": p}, b), b, LossContext(step=0, unit_bytes=None))
    return t.total / t.count, t.count
  plain, packed = rollouts.batch(s, adv), rollouts.batch(s, adv, pack=4)
  assert packed["inputs"].shape == (4, 4 * plain["inputs"].shape[1]) and plain["inputs"].shape[0] == 16
  assert packed["loss_mask"].sum() == plain["loss_mask"].sum() == s["lengths"].sum()
  (a, ca), ga = jax.value_and_grad(loss, has_aux=True)(params, plain)
  (b, cb), gb = jax.value_and_grad(loss, has_aux=True)(params, packed)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(cb, ca)
  for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ga)) > 0


def test_completions_end_at_eos_or_the_first_stop_string():
  from lm.data.tokenizers import ByteTokenizer
  from lm.rl.rollouts import cut_at_stop
  tok = ByteTokenizer()
  units = lambda text, eos=False: list(tok.encode(text.encode())) + ([tok.eos_id] if eos else [])  # noqa: E731
  assert cut_at_stop(tok, units("12", eos=True), []) == (3, "12", True)  # eos kept for training, not in the text
  assert cut_at_stop(tok, units("1234"), []) == (4, "1234", False)  # cut by max_new
  assert cut_at_stop(tok, units("12\n34"), [b"\n"]) == (3, "12", True)
  assert cut_at_stop(tok, units("1234x5"), [b"x", b"23"]) == (3, "1", True)  # the stop that completes first
  assert cut_at_stop(tok, units("12", eos=True), [b"9"]) == (3, "12", True)
