"""Future token prediction: a small decoder predicts the next n tokens from one projected state (Walker 2024).

Paper: N. Walker, "Future Token Prediction: Causal Language Modelling with Per-Token Semantic State Vector for
Multi-Token Prediction", 2024. The top hidden state h_t is projected into a short pseudo-sequence; a small
transformer decoder cross-attends to it while predicting tokens t+1..t+n (teacher-forced); loss
L = sum_t sum_{j=1..n} gamma^(j-1) CE(p_j(. | h_t), x_{t+j}), decaying with distance. Here it is added to the
usual next-token loss, so bits per byte is still measured on the next-token head. Options: `n` (4),
`gamma` (0.8), `pseudo` (4 vectors), `layers` (1).

Run:
  lm train token_ftp:tiny  --workdir runs/ftp_tiny
  lm train token_ftp:small --workdir runs/ftp_small

Results (python-prose, bytes; 2-core CPU, 2026-11-25, see BUILD_NOTES.md):
  tiny   3.846 val bpb in 50 s (200 steps).
  small  not run yet.
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name.
SIZES = {"tiny": dict(train=dict(steps=200)), "small": {}, "base": {}}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "token_ftp")
  config = config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp")
  config.objectives = [dict(name="ntp", weight=1.0),
                       dict(name="ftp", weight=1.0, n=4, gamma=0.8, pseudo=4, layers=1)]
  return config_lib.update(config, sizes)
