"""Concept LM with Base-LCM regression: predict the next sentence's concept by MSE, decode it to text.

After "Large Concept Models: Language Modeling in a Sentence Representation Space" (LCM team, Meta 2024),
made a proper language model: the backbone's predicted concept is regressed onto the encoder's concept of the
true next sentence (`concept_mse`, target under a stop-gradient) and the decoder is trained on the predicted
concept (`concept_decode`, the loss bits per byte measures). Everything else is `concept_sllm`'s.

LCM's frozen embedding space: give `--config.data.concept_embeddings='emb/{split}.npy'` (one float array
[sentences, K] per split from any sentence encoder, rows in the order `lm sentences concept_lcm:VARIANT
--split SPLIT` lists them) and `--config.model.concept_dim=K`; the encoder is then not built.

Run:
  lm train concept_lcm:tiny --workdir runs/lcm_tiny
  lm eval runs/lcm_tiny
  lm sample runs/lcm_tiny --prompt "The " --max-new 200

Results (python-prose, 2-core CPU, 2026-11-25, `benchmarks/families.py --set concepts`):
  tiny   2.636 ± 0.028 val bpb, test 2.804 ± 0.025 (sample std) at 473 steps (matched to token_ntp:tiny BPE's
         2.11e12 training FLOPs counted at data positions: the padded concept step executes 1.40x that, so the
         concept arms ran more compute than BPE; 3 seeds, eval_max_bytes=120); BPE tokens 2.515, test 2.451;
         L2 to the true concept 5.2 (norm 8). Indicative only. RESULTS.md, BUILD_NOTES.md (issue 7).
"""

from experiments import concept_sllm


def get_config(arg: str | None = None):
  config = concept_sllm.get_config(arg)
  # The decode term is normalised per unit; the MSE term sums over sentences (~40 units each at bytes), so
  # its weight sets how much one sentence's regression counts against one unit's likelihood.
  config.objectives = [dict(name="concept_decode", weight=1.0),
                       dict(name="concept_mse", weight=20.0, stop_gradient=True)]
  return config
