"""Reference-weighted next-token loss: train only on the tokens with the largest excess loss (Rho-1 style).

Paper: Z. Lin et al., "Rho-1: Not All Tokens Are What You Need", NeurIPS 2024. Eq. 3:
L = -(1 / (N k%)) sum_i I_k%(x_i) log P_theta(x_i | x_<i), where I_k% selects the top k% of tokens by excess
loss L_theta(x_i) - L_ref(x_i) and the reference is a frozen model (here: another run's workdir, restored
onto this run's mesh; it must use the same tokenizer). Bits per byte is always the unweighted next-token one.
Options: `keep` (k%, 0.6 as the paper's best), `reference` (a trained workdir; required).

Run (the reference first, e.g. a next-token run on the same data):
  lm train token_ntp:tiny --workdir runs/ntp_tiny
  lm train token_rho:tiny --workdir runs/rho_tiny --config.objectives.0.reference=runs/ntp_tiny

Results (python-prose, bytes; 2-core CPU, 2026-11-25, see BUILD_NOTES.md):
  tiny   not measured on the embedded corpus yet (tests train it against a 6-step reference).
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name.
SIZES = {"tiny": dict(train=dict(steps=200)), "small": {}, "base": {}}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "token_rho")
  config = config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp")
  config.objectives = [dict(name="rho", weight=1.0, keep=0.6, reference="")]
  return config_lib.update(config, sizes)
