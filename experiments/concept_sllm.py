"""Concept LM trained end to end on the decoder loss alone: next-sentence prediction in a learned space.

After "Let's Predict Sentence by Sentence" (H. Hwang et al., 2025) and SentenceVAE (H. An et al., 2024): a
sentence encoder makes one concept vector per sentence, a causal backbone predicts the next sentence's
concept, and a sentence decoder turns the prediction into the sentence's units. Only `concept_decode` trains
it, so the concept space is whatever makes the next sentence likely. Sentences come from
`lm.data.segment.split_sentences` (terminal punctuation plus whitespace, line breaks), cut at `data.chunk_len`
units; bits per byte counts every unit, every end-of-sentence event (zero bytes) and one end-of-segment event.

Run:
  lm train concept_sllm:tiny --workdir runs/sllm_tiny
  lm eval runs/sllm_tiny          # bpb, oracle_bpb (decoder given the true concept), l2, contrastive_accuracy
  lm sample runs/sllm_tiny --prompt "The " --max-new 200    # sentence by sentence

Results (python-prose, 2-core CPU, 2026-11-25, `benchmarks/families.py --set concepts`):
  tiny   2.609 ± 0.009 val bpb, test 2.771 ± 0.013 (sample std) at 473 steps (matched to token_ntp:tiny BPE's
         2.11e12 training FLOPs counted at data positions: the padded concept step executes 1.40x that; 3 seeds,
         eval_max_bytes=120); BPE tokens 2.515, test 2.451. Contrastive accuracy at chance: RESULTS.md,
         BUILD_NOTES.md (issue 7).
"""

from lm import config as config_lib
from lm import families

SIZES = {
    "tiny": dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=4, d_ff=384, concept_dim=64,
                            encoder=dict(d_model=64, num_layers=1, num_heads=4, d_ff=192),
                            decoder=dict(d_model=64, num_layers=2, num_heads=4, d_ff=192)),
                 data=dict(num_chunks=8, chunk_len=40, batch_size=16, eval_max_bytes=192),
                 optim=dict(lr=3e-3, warmup_steps=30),
                 train=dict(steps=250, log_every=50, eval_every=0, checkpoint_every=125, eval_batches=4),
                 eval=dict(max_batches=8), sample=dict(max_new=120)),
    "small": dict(model=dict(d_model=192, num_layers=4, num_heads=6, num_kv_heads=3, d_ff=512, concept_dim=128,
                             encoder=dict(d_model=128, num_layers=2, num_heads=4, d_ff=384),
                             decoder=dict(d_model=128, num_layers=3, num_heads=4, d_ff=384)),
                  data=dict(num_chunks=16, chunk_len=64, batch_size=24, eval_max_bytes=400),
                  optim=dict(lr=2e-3, warmup_steps=50),
                  train=dict(steps=800, log_every=50, eval_every=200, checkpoint_every=200, eval_batches=8)),
    "base": dict(  # accelerator-sized: BPE sentences
        model=dict(d_model=1024, num_layers=16, num_heads=16, num_kv_heads=8, d_ff=4096, concept_dim=1024,
                   encoder=dict(d_model=512, num_layers=4, num_heads=8, d_ff=2048),
                   decoder=dict(d_model=512, num_layers=6, num_heads=8, d_ff=2048)),
        data=dict(source="python-prose,python-code", tokenizer="bpe", vocab_size=8192, num_chunks=128, chunk_len=48,
                  batch_size=64),
        optim=dict(lr=6e-4, warmup_steps=500),
        train=dict(steps=20000, log_every=100, eval_every=1000, checkpoint_every=1000, eval_batches=16)),
}


def get_config(arg: str | None = None):
  config = families.base_config("concept")
  config.objectives = [dict(name="concept_decode", weight=1.0)]
  config.data.tokenizer = "bytes"
  return config_lib.update(config, config_lib.variant(SIZES, arg, "concept_sllm"))
