"""Name-induction probe (Gloeckle et al. 2024, section 4.1): stories with random-letter names, score later mentions.

Run:
  lm train probe_induction:tiny --workdir runs/ind_tiny && lm probe induction runs/ind_tiny
  lm train probe_induction:tiny --workdir runs/ind_mtp --config.objectives.0.name=mtp   # swap the objective
  lm train probe_induction:small --workdir runs/ind_small && lm probe induction runs/ind_small

Data (lm/data/synthetic.py): template stories (~250 bytes) with two characters whose names are 4-7 random
letters, each named at least twice. `lm probe induction` scores 200 held-out stories (seed 1): teacher-forced
accuracy on a name's bytes after its first one at its second and later mentions (chance 1/26); the same bytes
at first mentions are the control.

Results (2-core CPU shared with another training run, 2026-11-25):
  tiny   ntp: induction accuracy 0.027 (chance 1/26 = 0.038; first mentions 0.026), whole names 0.000,
         val 2.707 bpb; 57.6 s train + 6.8 s probe. 100 steps learn letters and templates, not copying:
         a smoke run. (150 steps: 0.020 at 1.84 bpb; 300 steps on 5000 stories: 0.025 at 1.41 bpb.)
  small  (benchmarks/reproduce.py --parts induction --induction-variant small, 400 stories, 2026-12-06,
         seeds 0 / 1 / 2): ntp 0.933 / 0.932 / 0.932 on later mentions (first mentions 0.028, whole names
         0.923, 0.584 val bpb); mtp:n=2 0.933 / 0.929 / 0.932 (0.026, 0.920, 0.599 bpb). Induction forms
         without MTP at this size: the names are the only unpredictable thing in the templates. One curve
         (--curve 4, seed 2 only): later mentions at step 500 / 1000 / 1500 / 2000 are 0.027 / 0.123 /
         0.923 / 0.932 for ntp and 0.027 / 0.465 / 0.924 / 0.932 for mtp:n=2: mtp:n=2 was ahead at one
         checkpoint of one seed; whether MTP brings the phase change forward needs curves over seeds.
         See BUILD_NOTES.md (issue 18).
"""

from lm import config as config_lib

SIZES = {
    "tiny": dict(data=dict(source="synthetic:induction:n=2000:seed=0", batch_size=8),
                 model=dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384),
                 optim=dict(lr=4e-3, warmup_steps=30),
                 train=dict(steps=100, log_every=50, eval_every=0, checkpoint_every=100, eval_batches=4),
                 eval=dict(max_batches=4)),
    # tiny's model on fresh stories (no story seen twice), long enough for copying to form if it will.
    "small": dict(data=dict(source="synthetic:induction:n=40000:seed=0", batch_size=16),
                  model=dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384),
                  optim=dict(lr=2e-3, warmup_steps=100),
                  train=dict(steps=2000, log_every=250, eval_every=0, checkpoint_every=2000, eval_batches=4),
                  eval=dict(max_batches=8)),
}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  config.data.update(tokenizer="bytes", seq_len=256)
  config.sample.update(prompt="Once upon a time, there was a girl named Zorvik. ", max_new=120)
  return config_lib.update(config, config_lib.variant(SIZES, arg, "probe_induction", default=None))
