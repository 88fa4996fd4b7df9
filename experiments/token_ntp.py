"""Next-token prediction with a token-level decoder (the baseline every other objective is compared to).

Run:
  lm train token_ntp:tiny  --workdir runs/ntp_tiny     # bytes, 0.9M params, T=64, 300 steps
  lm train token_ntp:small --workdir runs/ntp_small    # bytes, 1.7M params, T=128, 800 steps
  lm train token_ntp       --workdir runs/ntp          # BPE 16k, ~126M params, one accelerator

Results (python-prose val split, bits per byte; 2-core CPU, 2026-11-25, see BUILD_NOTES.md):
  tiny   3.656 bpb in 51.5 s (unigram level 4.751)
  small  2.106 val bpb (2.03 train at step 800), ~7k tokens/s; install + train 6.0 min from a fresh clone
  base   not run yet (needs an accelerator)

`lm compile token_ntp --topology v4:2x2x1` (libtpu 0.0.42, 2026-12-03; data parallel, remat none, splash
attention, chunked loss): train step 1.41 GiB arguments + 12.17 GiB temporaries = peak 13.58 GiB of 32 GiB
per chip (42%): FITS; compiled FLOPs 5.74e13 per step = 1.08x analytic. On v5e:2x2 the same 13.58 GiB is 85%
of a 16 GiB chip: add --config.model.remat_policy=dots there.
"""

from lm import config as config_lib

SIZES = {
    "tiny": dict(model=dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4, d_ff=384),
                 data=dict(tokenizer="bytes", seq_len=64, batch_size=16),
                 optim=dict(lr=4e-3, warmup_steps=30),
                 train=dict(steps=300, log_every=50, eval_every=0, checkpoint_every=150, eval_batches=4),
                 sample=dict(max_new=120)),
    "small": dict(model=dict(d_model=192, num_layers=4, num_heads=6, num_kv_heads=3, d_ff=512),
                  data=dict(tokenizer="bytes", seq_len=128, batch_size=24),
                  optim=dict(lr=3e-3, warmup_steps=50),
                  train=dict(steps=800, log_every=50, eval_every=200, checkpoint_every=200, eval_batches=8)),
    "base": dict(model=dict(d_model=768, num_layers=12, num_heads=12, num_kv_heads=12, d_ff=3072, tie_embeddings=True),
                 data=dict(source="python-prose,python-code", tokenizer="bpe", vocab_size=16384, seq_len=1024,
                           batch_size=64),
                 optim=dict(lr=6e-4, warmup_steps=500),
                 train=dict(steps=20000, log_every=100, eval_every=1000, checkpoint_every=1000, eval_batches=16)),
}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  return config_lib.update(config, config_lib.variant(SIZES, arg, "token_ntp"))
