"""Next-token prediction with Llama-3-8B shapes (32 layers, d 4096, 32 heads, 8 KV heads, d_ff 14336, vocab
128k, sequence 8192), for a v5p pod slice; its defaults are the ones `lm compile` found to fit (below).

Run:
  lm compile token_8b --topology v5p:4x4x2      # 32 chips: memory per chip, FLOPs, collectives; no TPU needed
  lm train token_8b --workdir gs://BUCKET/runs/token_8b --config.data.source=PREPARED_DIR \\
      --config.data.tokenizer=PATH/tokenizer.json

Defaults: 8192 tokens per chip on 32 chips (global batch 32 rows of 8192), params and optimizer state sharded
over every device (`mesh.fsdp=-1`), remat `dots` (matmul outputs kept). The tokenizer default (a 128k BPE trained on the data) is
only there so the config is complete: load the tokenizer you mean to use.
`lm compile token_8b --topology v5p:4x4x2` (32 chips, 95 GiB each; libtpu 0.0.42, 2026-12-03): params and
optimizer state 2.80 GiB + 27.91 GiB temporaries = peak 30.71 GiB per chip (32%): FITS; compiled FLOPs
1.64e16 per step = 1.22x analytic (extrapolated from 2- and 3-layer compiles). Remat `full` needs 10.75 GiB
but recomputes every layer; `none` needs ~463 GiB (issue 15's figure). `dots` is the least recompute that
keeps a third of HBM free.
"""

from lm import config as config_lib

SIZES = {
    "base": dict(model=dict(d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, d_ff=14336,
                            tie_embeddings=False, rope_base=500_000.0, norm_eps=1e-5, remat_policy="dots"),
                 data=dict(source="python-prose,python-code", tokenizer="bpe", vocab_size=128256, seq_len=8192,
                           batch_size=32),
                 mesh=dict(data=1, fsdp=-1),
                 optim=dict(lr=3e-4, warmup_steps=2000, weight_decay=0.1),
                 train=dict(steps=100_000, log_every=10, eval_every=1000, checkpoint_every=500, eval_batches=8),
                 sample=dict(max_new=0)),
}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  return config_lib.update(config, config_lib.variant(SIZES, arg, "token_8b"))
