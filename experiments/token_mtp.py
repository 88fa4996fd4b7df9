"""Multi-token prediction: n one-block heads on a shared trunk (Gloeckle et al. 2024, eq. 1).

Paper: F. Gloeckle, B. Youbi Idrissi, B. Rozière, D. Lopez-Paz, G. Synnaeve, "Better & Faster Large Language
Models via Multi-token Prediction", ICML 2024. Loss (eq. 1): L_n = -sum_t sum_{i=1..n} log P_theta(x_{t+i} |
z_{t}), with z_t the shared trunk's state and head i one transformer block plus the shared unembedding.
Head 1 is the next-token head (bits per byte is measured on it alone). Options: `n` (4),
`equal_params` (the trunk gives up n-1 layers so the parameter count equals next-token training).

Run:
  lm train token_mtp:tiny  --workdir runs/mtp_tiny
  lm train token_mtp:small --workdir runs/mtp_small
  lm sample runs/mtp_small --prompt "The " --temperature 0 --speculative   # drafts with the heads

Results (python-prose, bytes; 2-core CPU, 2026-11-25, see BUILD_NOTES.md):
  tiny   4.557 val bpb in 44 s (200 steps; token_ntp:tiny's 300 steps give 3.612 in 37 s). Four heads
         on a 0.9M-parameter trunk hurt the next-token head, as Gloeckle et al. report for small models.
  small  2.360 val bpb, 800 steps, ~21 min (machine shared); --speculative greedy: 1.99 accepted units per
         forward pass on 20 val prompts, outputs identical to plain greedy (benchmarks/speculative.py).
         At token_ntp:small's training FLOPs instead (441 steps, 0.64 epochs against next-token's 1.16;
         benchmarks/reproduce.py --parts bpb, 3 seeds, 2026-12-06): 2.958 ± 0.114 against 2.107 ± 0.029.
         Most of that 0.85 gap is the 45% fewer steps: at equal steps (the papers' equal-tokens comparison,
         one seed) the gap is 0.25 (2.360 above).
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name.
SIZES = {"tiny": dict(train=dict(steps=200)), "small": {}, "base": {}}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "token_mtp")
  config = config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp")
  config.objectives = [dict(name="mtp", weight=1.0, n=4, equal_params=False)]
  return config_lib.update(config, sizes)
