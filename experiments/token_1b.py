"""Next-token prediction at ~1.2B parameters (Llama-style: 22 layers, d 2048, GQA 16/8 heads, SwiGLU), for a
TPU slice or a GPU node; its defaults are the ones `lm compile` found to fit (below).

Run:
  lm compile token_1b --topology v5p:2x2x1      # memory per chip, FLOPs, collectives; no TPU needed
  lm train token_1b --workdir gs://BUCKET/runs/token_1b --config.data.source=PREPARED_DIR

Defaults: sequence 2048, global batch 64 rows (131k tokens; 32k per chip on 4 chips), BPE 32k (train on the
real corpus with `lm prepare`, or load a tokenizer: --config.data.tokenizer=PATH), params and optimizer state
sharded over every device (`mesh.fsdp=-1`), remat `dots` (matmul outputs kept, the rest recomputed).
`lm compile token_1b --topology v5p:2x2x1` (4 chips, 95 GiB each; libtpu 0.0.42, 2026-12-03): params and
optimizer state 3.28 GiB + 33.28 GiB temporaries = peak 36.56 GiB per chip (38%): FITS; compiled FLOPs
1.07e15 per step = 1.14x analytic. Remat `none` also fits (peak 70.29 GiB, 74%); `dots` is the default as the
least recompute that keeps a third of HBM free (room for longer rows or larger batches without a re-check).
"""

from lm import config as config_lib

SIZES = {
    "base": dict(model=dict(d_model=2048, num_layers=22, num_heads=16, num_kv_heads=8, d_ff=5632,
                            tie_embeddings=False, rope_base=500_000.0, remat_policy="dots"),
                 data=dict(source="python-prose,python-code", tokenizer="bpe", vocab_size=32768, seq_len=2048,
                           batch_size=64),
                 mesh=dict(data=1, fsdp=-1),
                 optim=dict(lr=3e-4, warmup_steps=2000, weight_decay=0.1),
                 train=dict(steps=100_000, log_every=100, eval_every=2000, checkpoint_every=1000, eval_batches=16),
                 sample=dict(max_new=0)),
}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.objectives = [dict(name="ntp", weight=1.0)]
  return config_lib.update(config, config_lib.variant(SIZES, arg, "token_1b"))
