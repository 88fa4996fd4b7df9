"""Sequence-level RL on star graphs: next-token pretraining, then GRPO rewarded for the exact path.

`lm rl rl_star:tiny --workdir DIR` first trains this experiment's next-token model on small star graphs
(`synthetic:star`, degree 2, arms of 2 nodes, labels 0-9: `EDGES|START>GOAL=PATH` documents of 25 bytes; the
pretrain split) into DIR/init, then samples `rl.group` paths per graph of the rl split and rewards the exact
path (`exact_answer`); held-out pass@k is on the dev split. The splits are by content (lm/data/synthetic.py):
no dev or test graph, in any edge order, is in pretraining or the RL prompts; `benchmarks/rl.py` reports test.
With arms of 2 nodes the answer is START,X,GOAL: X, the goal's parent (one backward edge lookup), is the only
decision; `lm probe star` reports it as `teacher_forced_first_decision`.

Results (2-core CPU, 2026-12-03; `python benchmarks/rl.py --task star --arms grpo,drgrpo`, BUILD_NOTES.md), from
before the splits, when 48% of the 128 held-out graphs were in the pretraining documents (2% in the same edge
order) and 9% among the RL prompts (a rerun is due):
  from a 3000-step init (held-out exact pass@1 0.178 at temperature 1), 300 steps at rl.lr 1e-4 reach
  0.278 ± 0.015 (GRPO) and 0.274 ± 0.010 (Dr. GRPO), 3 seeds. It is sharpening: greedy accuracy is 0.28
  before and after, the first decision 0.28 teacher forced (below 1/degree), and the init's pass@k is ahead
  from k = 4 on (0.995 vs 0.771 at k = 64; Yue et al. 2025). `lm rl rl_star:tiny` (3000 + 200 steps): 308 s,
  held-out pass@1 (64 graphs x 8 samples) 0.182 -> 0.275.
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
  config.data.update(dict(source=f"{SOURCE}:n=20000:seed=0:split=pretrain", tokenizer="bytes", seq_len=28,
                          batch_size=32))
  config.optim.update(dict(lr=3e-3, warmup_steps=50))
  config.train.update(dict(steps=3000, log_every=250, eval_every=0, checkpoint_every=500, eval_batches=4))
  config.sample.update(dict(prompt="1>2,2>3,1>4,4>5|1>5=", max_new=6, temperature=0.0))
  # RL's learning rate: from one 3000-step init, 300 steps at 1e-4 took held-out exact pass@1 0.178 -> 0.285, at
  # 3e-5 to 0.262 (one seed each, before benchmarks/rl.py ran both arms at 1e-4).
  config.rl.update(dict(prompts=f"{SOURCE}:n=4000:seed=1:split=rl", eval_source=f"{SOURCE}:n=256:seed=2:split=dev",
                        max_new=8, group=8, prompts_per_step=8, lr=1e-4, steps=300, eval_every=50,
                        checkpoint_every=50))
  return config_lib.update(config, sizes)
