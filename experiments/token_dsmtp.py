"""Sequential multi-token prediction modules (DeepSeek-V3 technical report, §2.2).

Paper: DeepSeek-AI, "DeepSeek-V3 Technical Report", 2024. Module k combines h^{k-1}_t and the embedding of
the true token t+k: h'^k_t = M_k [RMSNorm(h^{k-1}_t); RMSNorm(Emb(t_{t+k}))] (eq. 21), runs one transformer
block (eq. 22) and predicts token t+k+1 through the shared output head (eq. 23); L_MTP = (lambda / D)
sum_k L^k_MTP (eq. 25), added to the next-token loss. lambda is this objective's weight: 0.3 for the first
part of training then 0.1, as in the paper (a step schedule, switching at 90% of train.steps). Option `depth`
(D, 1 as in the paper).

Run:
  lm train token_dsmtp:tiny  --workdir runs/dsmtp_tiny
  lm train token_dsmtp:small --workdir runs/dsmtp_small

Results (python-prose, bytes; 2-core CPU, see BUILD_NOTES.md):
  tiny   3.741 val bpb in 35 s (200 steps; one run, 2026-11-25).
  tiny   against token_ntp:tiny, 150 steps each (lambda 0.3 -> 0.1 at step 135), 3 seeds, 2026-12-07, shared
         machine (`python benchmarks/objectives.py --steps 150 --seeds 0,1,2 --objectives ntp,dsmtp --out
         benchmarks/results/objectives_dsmtp.json`): val bpb 3.903 ± 0.124 vs 4.334 ± 0.291 (sample std), lower
         in each of the 3 seeds, but the paired difference -0.43, 95% interval [-1.02, 0.16], p 0.09, includes
         0. Equal steps, not equal FLOPs: a step costs 1.31x NTP's (analytic, `lm compile token_dsmtp:tiny
         --topology cpu`). The star and induction probes learned nothing in 150 steps with either objective.
  small  not run yet.
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name.
SIZES = {"tiny": dict(train=dict(steps=200)), "small": {}, "base": {}}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "token_dsmtp")
  config = config_lib.update(config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp"), sizes)
  # The paper switches lambda from 0.3 to 0.1 late in training: at 90% of the run's own train.steps (resolved
  # when the run is built, so a benchmark that changes the steps moves the switch with them).
  config.objectives = [dict(name="ntp", weight=1.0),
                       dict(name="dsmtp", depth=1, weight=dict(kind="step", values=[0.3, 0.1], at=[0.9]))]
  return config
