"""Multi-token heads fine-tuned onto a pretrained model (CAFT-style auxiliary heads on an imported trunk).

Papers: CAFT ("Concept-Aware Fine-Tuning", 2025) and Gloeckle et al. 2024 (fine-tuning with MTP): heads that
predict tokens t+2..t+n are added to a pretrained next-token model and trained together with it at a
fine-tuning learning rate; the next-token head keeps its pretrained weights and the new heads start fresh.
`config.init_from` names the pretrained model: a workdir written by `lm import hf`, a local Hugging Face model
directory, or any token-family run. Its architecture and tokenizer replace the experiment's (`lm config`
shows the result); the heads (`mtp`, n=4 by default) are the only new params.

Run:
  lm import hf ~/models/Qwen2.5-0.5B --workdir runs/qwen05b
  lm train finetune_mtp --config.init_from=runs/qwen05b --workdir runs/qwen05b_mtp --config.data.source=DATA
  lm sample runs/qwen05b_mtp --prompt "def " --temperature 0 --speculative   # the heads draft
  lm export hf runs/qwen05b_mtp --out runs/qwen05b_mtp_hf                    # the trunk, for transformers

`:tiny` fine-tunes for 50 steps at sequence 64 (what the tests run on a tiny imported model).

Results: not measured on a real pretrained model here (no weights can be downloaded on the CPU box).
"""

from lm import config as config_lib

SIZES = {
    "tiny": dict(data=dict(seq_len=64, batch_size=8), optim=dict(warmup_steps=5),
                 train=dict(steps=50, log_every=10, eval_every=0, checkpoint_every=50, eval_batches=2),
                 sample=dict(max_new=40)),
    "base": {},
}


def get_config(arg: str | None = None):
  sizes = config_lib.variant(SIZES, arg, "finetune_mtp")
  config = config_lib.base_config()
  config.objectives = [dict(name="mtp", weight=1.0, n=4, equal_params=False)]
  # A fine-tuning schedule: a short warmup to a small peak, no weight decay on pretrained weights.
  config.optim.update(dict(lr=1e-4, warmup_steps=100, weight_decay=0.0, schedule="cosine", min_lr_ratio=0.1))
  config.data.update(dict(seq_len=512, batch_size=16))
  config.train.update(dict(steps=2000, log_every=50, eval_every=500, checkpoint_every=500, eval_batches=8))
  config.sample.update(dict(prompt="The ", max_new=100, temperature=0.0))
  return config_lib.update(config, sizes)
