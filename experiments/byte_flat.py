"""Flat byte-level decoder: the token family over raw bytes, the tokenizer-free baseline for byte_hat.

The same model as token_ntp with `data.tokenizer=bytes` at every size (token_ntp's accelerator default uses
BPE), so byte_hat can be compared against both a flat byte model and a BPE model at matched compute.

Run:
  lm train byte_flat:tiny --workdir runs/flat_tiny
  lm train byte_flat      --workdir runs/flat      # ~126M params, T=2048 bytes, one accelerator

Results: tiny is token_ntp:tiny (3.612 val bpb in 37 s on the 2-core CPU, 2026-11-25).
"""

from lm import config as config_lib

# On top of token_ntp's variant of the same name, on raw bytes.
SIZES = {"tiny": {}, "small": {},
         # about the bytes of token_ntp's 1024 BPE tokens' context, at half the batch
         "base": dict(data=dict(seq_len=2048, batch_size=32))}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "byte_flat")
  config = config_lib.load_experiment(f"token_ntp:{arg}" if arg else "token_ntp")
  config.data.tokenizer = "bytes"
  return config_lib.update(config, sizes)
