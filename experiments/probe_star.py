"""Star-graph path-finding probe (Bachmann & Nagarajan 2024): train on star graphs, score greedy answer paths.

Run:
  lm train probe_star:tiny --workdir runs/star_tiny && lm probe star runs/star_tiny
  lm train probe_star:tiny --workdir runs/star_mtp --config.objectives.0.name=mtp   # swap the objective
  lm train probe_star:small --workdir runs/star_small && lm probe star runs/star_small

Data (lm/data/synthetic.py): one graph per document, `EDGES|START>GOAL=PATH`; each row of seq_len holds exactly
one document (bytes + eos), so no graph is cut. tiny: degree 2, arms of 3 nodes, labels 0-9 (35 bytes);
small: degree 2, arms of 5 nodes, labels 00-49 (83 bytes). `lm probe star` scores 200 held-out graphs (seed 1)
by exact-path accuracy of greedy decoding after `=`; chance is 1/degree = 0.5 once the model follows edges.

Results (2-core CPU shared with another training run, 2026-11-25):
  tiny   ntp: star accuracy 0.000 (chance 0.5), teacher forced 0.000, val 1.661 bpb; 43.6 s train + 6.5 s probe.
         1.661 bpb is exactly uniform digits (18 random digits * log2(10) / 36 units): 200 steps learn the format,
         not yet the edge lookup, so every answer is one repeated digit. A 2-layer model at lr 3e-3 leaves that
         plateau only near step 1100 (2000 steps: 1.46 bpb, accuracy 0.01). Use tiny as a smoke run.
  small  not run yet
"""

from lm import config as config_lib

SIZES = {
    "tiny": dict(data=dict(source="synthetic:star:degree=2:path_len=3:num_nodes=10:n=20000:seed=0", seq_len=36,
                           batch_size=32),
                 model=dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384),
                 optim=dict(lr=1e-3, warmup_steps=30),
                 train=dict(steps=200, log_every=50, eval_every=0, checkpoint_every=200, eval_batches=4),
                 eval=dict(max_batches=4)),
    # The same graphs and model, trained long enough to learn the edge lookups (fresh graphs every step).
    "small": dict(data=dict(source="synthetic:star:degree=2:path_len=3:num_nodes=10:n=200000:seed=0", seq_len=36,
                            batch_size=64),
                  model=dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384),
                  optim=dict(lr=1e-3, warmup_steps=100),
                  train=dict(steps=2500, log_every=250, eval_every=0, checkpoint_every=2500, eval_batches=4),
                  eval=dict(max_batches=8)),
}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  config.data.tokenizer = "bytes"
  config.data.completion_after = "="  # the loss is on the answer path only, as the paper trains
  config.sample.max_new = 0  # `lm probe star` is the readout, not a sample
  return config_lib.update(config, config_lib.variant(SIZES, arg, "probe_star", default=None))
