"""Concept LM (family "concept"): sentence encoder -> concept backbone -> sentence decoder.

After Large Concept Models (LCM team, Meta 2024), SentenceVAE (An et al. 2024) and "Let's Predict Sentence by
Sentence" (Hwang et al. 2025), made a proper language model: every sentence c is encoded into one concept
vector (a bidirectional encoder pooled from a prepended slot, RMS-normalised so concepts live on a sphere of
radius sqrt(K)); the causal backbone (`models/transformer.py`) reads the concepts of sentences < c (a learned
start vector in place of sentence -1) and predicts the concept of sentence c; the decoder, causal over units,
conditioned on a concept through its first position, gives p(units of sentence c, then end-of-sentence or
end-of-document | concept). Conditioned on the *predicted* concept this is the language model
(`concept_decode`); on the *true* one, the autoencoder (`concept_recon`, or `oracle=True` in evaluation).

With precomputed concepts (`batch["concepts"]` [B, C, K] from an external sentence encoder; LCM's frozen
SONAR space), the encoder is not built: the backbone reads and predicts those vectors.

Batch as the byte-hierarchical family's (`lm.data.pipeline.ConceptData`): `units`, `unit_mask` [B, C, L],
`chunk_mask`, `segment_ids`, `positions` [B, C], `targets`, `loss_mask` [B, C, L + 1]. Outputs: `logits`
[B, C, L + 1, V] given the predicted concept; aux `concept_pred`, `concept_target` [B, C, K] and, when asked,
`recon_logits`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.errors import ConfigError
from lm.models.base import ModelOutputs, register_family, transformer_config
from lm.models.hierarchical import (_sub_config, decode_chunks, decode_step, dense, encode_chunks, norm,
                                    shift_right_chunks)
from lm.models.layers import Array, TransformerConfig, _init, constrain, dtype_of
from lm.models.transformer import Transformer


def unit_sphere(x: Array, eps: float = 1e-6) -> Array:
  """x / rms(x) over the last axis, in float32: a concept of K dimensions has norm sqrt(K)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


class ConceptLM(nn.Module):
  cfg: TransformerConfig        # the backbone over sentences; `vocab_size` includes end-of-sentence
  encoder: TransformerConfig
  decoder: TransformerConfig
  concept_dim: int
  recon: bool = False           # also decode from the true concept in training (the `concept_recon` head)
  decode: bool = False

  def _true_concepts(self, batch: dict[str, Array]) -> Array:
    """[B, C, K]: the batch's precomputed concepts, or the encoder's concept of each chunk."""
    if "concepts" in batch:
      return batch["concepts"].astype(jnp.float32)
    units_BxCxL = batch["units"]
    B, C, L = units_BxCxL.shape
    pooled_NxDe = encode_chunks(self, self.encoder, units_BxCxL.reshape(B * C, L),
                                batch["unit_mask"].reshape(B * C, L))
    concept_NxK = dense(self.encoder, self.concept_dim, "encoder_to_concept", (None, None))(pooled_NxDe)
    return unit_sphere(concept_NxK).reshape(B, C, self.concept_dim)

  @nn.compact
  def __call__(self, batch: dict[str, Array], with_heads: bool = True, step: str | None = None,
               oracle: bool = False) -> ModelOutputs:
    """Training/evaluation forward (`oracle=True` adds `recon_logits`, given the true concepts); with
    `decode=True`, `step="backbone"` reads one sentence (`units`/`unit_mask` [B, 1, L], or `concepts`
    [B, 1, K]) at `positions` [B, 1] and predicts the next concept, `step="decoder"` advances one unit."""
    cfg, dec = self.cfg, self.decoder
    if step == "decoder":
      return ModelOutputs(logits=decode_step(dec, batch))
    dtype = dtype_of(cfg.dtype)
    true_BxCxK = self._true_concepts(batch)
    B, C, K = true_BxCxK.shape
    start_D = self.param("backbone_start", _init(nn.initializers.normal(cfg.init_std), "embed"), (cfg.d_model,),
                         dtype_of(cfg.param_dtype)).astype(dtype)
    to_backbone = dense(cfg, cfg.d_model, "concept_to_backbone", (None, "embed"))
    to_concept = dense(cfg, K, "backbone_to_concept", ("embed", None))
    to_decoder = dense(dec, dec.d_model, "concept_to_decoder", (None, None))
    positions_BxC = batch["positions"]

    if step == "backbone":  # position c reads the sentence it is given (the start vector at c = 0)
      x_BxCxD = jnp.where((positions_BxC > 0)[..., None], to_backbone(true_BxCxK.astype(dtype)), start_D)
      x_BxCxD = Transformer(cfg, causal=True, decode=True, name="backbone")(x_BxCxD, positions_BxC, None)
      pred_BxK = to_concept(norm(cfg, "backbone_norm")(x_BxCxD)[:, -1]).astype(jnp.float32)
      ctx_BxDd = to_decoder(pred_BxK.astype(dtype))
      return ModelOutputs(logits=ctx_BxDd, aux={"context": ctx_BxDd, "concept_pred": pred_BxK,
                                                "concept_read": true_BxCxK[:, -1]})

    # Backbone: position c reads the concept of sentence c - 1 and predicts that of sentence c.
    x_BxCxD = jnp.where((positions_BxC > 0)[..., None], shift_right_chunks(to_backbone(true_BxCxK.astype(dtype))),
                        start_D)
    x_BxCxD = constrain(x_BxCxD, ("batch", "length", "embed"))
    x_BxCxD = Transformer(cfg, causal=True, name="backbone")(x_BxCxD, positions_BxC, batch["segment_ids"])
    pred_BxCxK = to_concept(norm(cfg, "backbone_norm")(x_BxCxD)).astype(jnp.float32)

    # Decoder: [concept of sentence c, units of sentence c] -> [units of sentence c, end of sentence / document],
    # from the predicted concept and, for reconstruction, from the true one, in one pass.
    units_NxL = batch["units"].reshape(B * C, -1)
    mask_NxL = batch["unit_mask"].reshape(B * C, -1)
    L = units_NxL.shape[1]
    concepts = [pred_BxCxK]
    if oracle or (with_heads and self.recon):
      concepts.append(true_BxCxK)
    ctx_MxDd = to_decoder(jnp.concatenate([c.reshape(B * C, K) for c in concepts]).astype(dtype))
    n = len(concepts)
    logits = decode_chunks(dec, ctx_MxDd, jnp.tile(units_NxL, (n, 1)), jnp.tile(mask_NxL, (n, 1)))
    logits = logits.reshape(n, B, C, L + 1, -1)
    aux = {"concept_pred": pred_BxCxK, "concept_target": true_BxCxK}
    if n > 1:
      aux["recon_logits"] = logits[1]
    return ModelOutputs(logits=logits[0], aux=aux)


@register_family("concept")
def _build(model_cfg, vocab_size: int, decode: bool = False, heads: tuple = ()) -> ConceptLM:
  """`vocab_size` is the tokenizer's (bytes or BPE); one more id is the end-of-sentence event."""
  unknown = [kind for kind, _ in heads if kind != "recon"]
  if unknown:
    raise ConfigError(f"model.family='concept' has no {unknown} head; its objectives are concept_decode, "
                      "concept_mse, concept_recon and concept_contrastive")
  backbone = transformer_config(model_cfg, vocab_size + 1)
  concept_dim = int(model_cfg.concept_dim) or backbone.d_model
  return ConceptLM(backbone, _sub_config(backbone, model_cfg.encoder), _sub_config(backbone, model_cfg.decoder),
                   concept_dim=concept_dim, recon=bool(heads), decode=decode)
