"""Token order prediction: rank the vocabulary by how soon each token occurs next (Zuhri et al. 2025).

Paper: Z. M. K. Zuhri, E. H. Fuadi, A. F. Aji, "Predicting the Order of Upcoming Tokens Improves Language
Modeling", 2025. Target (eq. 2): y_t(v) = W - d_t(v) if token v next occurs d_t(v) <= W positions ahead, else
-inf; loss (eq. 3): the ListNet top-one cross entropy -sum_v softmax(y_t)_v log softmax(u_top(h_t))_v, with
one extra unembedding u_top, added to the next-token loss. Option `window` (W = 16, their best ablation).

Run:
  lm train token_top:tiny  --workdir runs/top_tiny
  lm train token_top:small --workdir runs/top_small

Results (python-prose, bytes; 2-core CPU, 2026-11-25, see BUILD_NOTES.md):
  tiny   3.870 val bpb in 26 s (200 steps).
  small  at token_ntp:small's training FLOPs (778 steps; benchmarks/reproduce.py --parts bpb, 3 seeds,
         2026-12-06): 2.147 ± 0.020 val bpb against next-token's 2.107 ± 0.029; behind in every seed, unlike
         the paper's gains at 340M+ parameters with BPE (bytes here).
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name.
SIZES = {"tiny": dict(train=dict(steps=200)), "small": {}, "base": {}}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "token_top")
  config = config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp")
  config.objectives = [dict(name="ntp", weight=1.0), dict(name="top", weight=1.0, window=16)]
  return config_lib.update(config, sizes)
