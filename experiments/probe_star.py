"""Star-graph path-finding probe (Bachmann & Nagarajan 2024): train on star graphs, score greedy answer paths.

Run:
  lm train probe_star:tiny --workdir runs/star_tiny && lm probe star runs/star_tiny
  lm train probe_star:tiny --workdir runs/star_mtp --config.objectives.0.name=mtp   # swap the objective
  lm train probe_star:small --workdir runs/star_small && lm probe star runs/star_small

Data: synthetic:star (lm/data/synthetic.py), degree 2, arms of 5 nodes, labels below 50, one graph per document
(`EDGES|START>GOAL=PATH`, 83 bytes). `lm probe star` scores 200 held-out graphs (seed 1) by exact-path accuracy
of greedy decoding after `=`; chance is 1/degree = 0.5.

Results (2-core CPU, 2026-11-25):
  tiny   FILLED IN BELOW
"""

from lm.config import base_config
from lm.errors import ConfigError

SOURCE = "synthetic:star:degree=2:path_len=5:num_nodes=50:n=20000:seed=0"


def get_config(arg: str | None = None):
  config = base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  config.data.update(source=SOURCE, tokenizer="bytes", seq_len=128)
  config.sample.max_new = 0  # `lm probe star` is the readout, not a sample
  if arg == "tiny":
    config.model.update(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384)
    config.data.update(batch_size=16)
    config.optim.update(lr=4e-3, warmup_steps=30)
    config.train.update(steps=200, log_every=50, eval_every=0, checkpoint_every=200, eval_batches=4)
    config.eval.max_batches = 4
  elif arg == "small":
    config.model.update(d_model=192, num_layers=6, num_heads=6, num_kv_heads=3, d_ff=512)
    config.data.update(batch_size=32)
    config.optim.update(lr=2e-3, warmup_steps=100)
    config.train.update(steps=2000, log_every=100, eval_every=500, checkpoint_every=500, eval_batches=8)
    config.eval.max_batches = 16
  else:
    raise ConfigError(f"probe_star: unknown variant {arg!r}; choose tiny or small")
  return config
