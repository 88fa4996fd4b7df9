"""Sequence-level RL on star graphs: next-token pretraining, then GRPO rewarded for the exact path.

`lm rl rl_star:tiny --workdir DIR` first trains this experiment's next-token model on small star graphs
(`synthetic:star`, degree 2, arms of 2 nodes, labels 0-9: `EDGES|START>GOAL=PATH` documents of 25 bytes) into
DIR/init, then samples `rl.group` paths per held-apart graph (seed 1) and rewards the exact path
(`exact_answer`). Next-token training on star graphs tends to the "Clever Hans" solution (Bachmann & Nagarajan
2024): every step after the first is an edge lookup it gets right, the first decision after the start node is
a coin flip among the `degree` arms, so exact-path accuracy sits near 1/degree. A sequence-level reward
scores the whole path, so the first decision gets credit only when the path reaches the goal.

Results: BUILD_NOTES.md, "Sequence-level training" (issue 17).
"""

from lm import config as config_lib

SOURCE = "synthetic:star:degree=2:path_len=2:num_nodes=10"
SIZES = {
    "tiny": dict(train=dict(steps=3000), rl=dict(steps=200, eval_every=50, log_every=10, checkpoint_every=50)),
    "base": {},
}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "rl_star")
  config = config_lib.base_config()
  config.model.update(dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384))
  config.data.update(dict(source=f"{SOURCE}:n=20000:seed=0", tokenizer="bytes", seq_len=28, batch_size=32))
  config.optim.update(dict(lr=3e-3, warmup_steps=50))
  config.train.update(dict(steps=3000, log_every=250, eval_every=0, checkpoint_every=500, eval_batches=4))
  config.sample.update(dict(prompt="1>2,2>3,1>4,4>5|1>5=", max_new=6, temperature=0.0))
  # RL's learning rate: from one 3000-step init, 300 steps at 1e-4 took held-out exact pass@1 0.178 -> 0.285, at
  # 3e-5 to 0.262 (one seed each, before benchmarks/rl.py ran both arms at 1e-4).
  config.rl.update(dict(prompts=f"{SOURCE}:n=4000:seed=1", max_new=8, group=8, prompts_per_step=8, lr=1e-4,
                        steps=300, eval_every=50, checkpoint_every=50))
  return config_lib.update(config, sizes)
