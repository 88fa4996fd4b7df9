"""Sequence-level RL on small-integer arithmetic: next-token pretraining, then GRPO on exact answers.

`lm rl rl_arith:tiny --workdir DIR` first trains this experiment's next-token model on `synthetic:arith`
(sums and differences of 2-digit numbers, `A+B=C` documents) into DIR/init, then samples `rl.group`
completions per prompt from held-apart prompts (`synthetic:arith:seed=1`), rewards exact answers, and
trains with the group-normalised policy gradient (`pg`, lm/objectives/sequence.py). metrics.jsonl under
DIR/rl carries `reward` each step and `pass@1` / `pass@8` on 64 held-out prompts at evaluations.

Results: not measured yet (issue 17 is in progress; the benchmark of three seeds comes with `benchmarks/rl.py`).
"""

from lm import config as config_lib

SIZES = {
    "tiny": dict(train=dict(steps=300), rl=dict(steps=40, eval_every=20, log_every=5, checkpoint_every=20)),
    "base": {},
}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "rl_arith")
  config = config_lib.base_config()
  config.model.update(dict(d_model=128, num_layers=3, num_heads=4, num_kv_heads=4, d_ff=384))
  config.data.update(dict(source="synthetic:arith:n=20000:digits=2:ops=2", tokenizer="bytes", seq_len=64,
                          batch_size=32))
  config.optim.update(dict(lr=3e-3, warmup_steps=30))
  config.train.update(dict(steps=1000, log_every=50, eval_every=0, checkpoint_every=500, eval_batches=4))
  config.sample.update(dict(prompt="12+34=", max_new=4, temperature=0.0))
  config.rl.update(dict(prompts="synthetic:arith:n=4000:digits=2:ops=2:seed=1", max_new=5, group=8,
                        prompts_per_step=8, lr=3e-4, steps=200, eval_every=50, checkpoint_every=50))
  return config_lib.update(config, sizes)
