"""Concept family: sentence encoder -> concept backbone -> sentence decoder.

After Large Concept Models (LCM team, Meta 2024), SentenceVAE (An et al. 2024) and "Let's Predict Sentence by
Sentence" (Hwang et al. 2025), made a proper language model: every sentence c is encoded into one concept
vector (a bidirectional encoder pooled from a prepended slot, RMS-normalised so concepts live on a sphere of
radius sqrt(K)); the causal backbone reads the concepts of sentences < c (a learned start vector in place of
sentence -1) and predicts the concept of sentence c; the decoder, causal over units, conditioned on a concept
through its first position, gives p(units of sentence c, then end-of-sentence or end-of-document | concept).
Conditioned on the *predicted* concept this is the language model (`concept_decode`); on the *true* one, the
autoencoder (`concept_recon`, or the `oracle` method in evaluation).

With precomputed concepts (`data.concept_embeddings`; batch `concepts` [B, C, K] from an external sentence
encoder, LCM's frozen SONAR space) no encoder is built: the backbone reads and predicts those vectors.

Batch as the byte-hierarchical family's (`lm.families.chunked.data.ConceptData`), sentences in units of any tokenizer.
Outputs: `logits` [B, C, L + 1, V] given the predicted concept; aux `concept_pred`, `concept_target` [B, C, K]
and, with the `recon` pass, `recon_logits`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.families.chunked.data import ConceptData, sentence_chunks
from lm.errors import ConfigError
from lm.families.base import Family
from lm.families.chunked import model as chunked
from lm.families.chunked import sampler
from lm.families.chunked.family import check_chunked, chunked_flops, chunked_split_fields
from lm.models.base import ModelOutputs, transformer_config
from lm.models.layers import Array, TransformerConfig, constrain, dtype_of, make_norm
from lm.models.transformer import Transformer
from lm.objectives.base import Requirements, masked_nll, token_nll

from .objectives import contrastive_scores


def unit_sphere(x: Array, eps: float = 1e-6) -> Array:
  """x / rms(x) over the last axis, in float32: a concept of K dimensions has norm sqrt(K)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


class ConceptLM(nn.Module):
  cfg: TransformerConfig          # the backbone over sentences; `vocab_size` includes end-of-sentence
  encoder_cfg: TransformerConfig
  decoder_cfg: TransformerConfig
  concept_dim: int
  precomputed: bool = False       # concepts come with the batch: no encoder
  recon: bool = False             # also decode from the true concept in training (`concept_recon`)
  decode: bool = False

  def setup(self):
    cfg, K = self.cfg, self.concept_dim
    if not self.precomputed:
      chunked.setup_encoder(self, self.encoder_cfg)
      self.encoder_to_concept = chunked.dense(self.encoder_cfg, K, (None, None))
    self.backbone_start = chunked.learned_vector(self, "backbone_start", cfg)
    self.concept_to_backbone = chunked.dense(cfg, cfg.d_model, (None, "embed"))
    self.backbone = Transformer(cfg, causal=True, decode=self.decode)
    self.backbone_norm = make_norm(cfg)
    self.backbone_to_concept = chunked.dense(cfg, K, ("embed", None))
    self.concept_to_decoder = chunked.dense(self.decoder_cfg, self.decoder_cfg.d_model, (None, None))
    chunked.setup_decoder(self, self.decoder_cfg, self.decode)

  def _true_concepts(self, batch: dict[str, Array]) -> Array:
    """[B, C, K]: the batch's precomputed concepts, or the encoder's concept of each chunk."""
    if self.precomputed:
      return batch["concepts"].astype(jnp.float32)
    units_BxCxL = batch["units"]
    B, C, L = units_BxCxL.shape
    pooled_NxDe = chunked.encode_chunks(self, self.encoder_cfg, units_BxCxL.reshape(B * C, L),
                                        batch["unit_mask"].reshape(B * C, L))
    return unit_sphere(self.encoder_to_concept(pooled_NxDe)).reshape(B, C, self.concept_dim)

  def _forward(self, batch: dict[str, Array], with_true: bool) -> ModelOutputs:
    cfg = self.cfg
    dtype = dtype_of(cfg.dtype)
    true_BxCxK = self._true_concepts(batch)
    B, C, K = true_BxCxK.shape
    # Backbone: position c reads the concept of sentence c - 1 and predicts that of sentence c.
    start_D = self.backbone_start.astype(dtype)
    x_BxCxD = jnp.where((batch["positions"] > 0)[..., None],
                        chunked.shift_right_chunks(self.concept_to_backbone(true_BxCxK.astype(dtype))), start_D)
    x_BxCxD = constrain(x_BxCxD, ("batch", "length", "embed"))
    x_BxCxD = self.backbone(x_BxCxD, batch["positions"], batch["segment_ids"])
    pred_BxCxK = self.backbone_to_concept(self.backbone_norm(x_BxCxD)).astype(jnp.float32)

    # Decoder: [concept of sentence c, units of sentence c] -> [units of sentence c, end of sentence / document],
    # from the predicted concept and, for reconstruction, from the true one, in one pass.
    units_NxL = batch["units"].reshape(B * C, -1)
    mask_NxL = batch["unit_mask"].reshape(B * C, -1)
    L = units_NxL.shape[1]
    concepts = [pred_BxCxK, true_BxCxK] if with_true else [pred_BxCxK]
    ctx_MxDd = self.concept_to_decoder(jnp.concatenate([c.reshape(B * C, K) for c in concepts]).astype(dtype))
    n = len(concepts)
    logits = chunked.decode_chunks(self, self.decoder_cfg, ctx_MxDd, jnp.tile(units_NxL, (n, 1)),
                                   jnp.tile(mask_NxL, (n, 1)))
    logits = logits.reshape(n, B, C, L + 1, -1)
    aux = {"concept_pred": pred_BxCxK, "concept_target": true_BxCxK}
    if n > 1:
      aux["recon_logits"] = logits[1]
    return ModelOutputs(head_logits=logits[0], aux=aux)

  def __call__(self, batch: dict[str, Array], with_heads: bool = True) -> ModelOutputs:
    """Training and scoring; the reconstruction pass runs in training when an objective asked for it."""
    return self._forward(batch, with_true=with_heads and self.recon)

  def oracle(self, batch: dict[str, Array]) -> ModelOutputs:
    """Scoring with `recon_logits` too: the decoder given the true concepts (evaluation's oracle bpb)."""
    return self._forward(batch, with_true=True)

  def backbone_step(self, chunk: dict[str, Array]) -> dict[str, Array]:
    """Decoding: read one sentence (`units`/`unit_mask` [B, 1, L], or `concepts` [B, 1, K]) at `positions`
    [B, 1] (the start vector at 0) and predict the next concept; returns `context` [B, Dd], `concept_pred`."""
    dtype = dtype_of(self.cfg.dtype)
    true_BxCxK = self._true_concepts(chunk)
    x_BxCxD = jnp.where((chunk["positions"] > 0)[..., None], self.concept_to_backbone(true_BxCxK.astype(dtype)),
                        self.backbone_start.astype(dtype))
    x_BxCxD = self.backbone(x_BxCxD, chunk["positions"], None)
    pred_BxK = self.backbone_to_concept(self.backbone_norm(x_BxCxD)[:, -1]).astype(jnp.float32)
    return {"context": self.concept_to_decoder(pred_BxK.astype(dtype)), "concept_pred": pred_BxK,
            "concept_read": true_BxCxK[:, -1]}

  def decoder_step(self, context_BxDd: Array, inputs_Bx1: Array, positions_Bx1: Array) -> Array:
    """Decoding: one unit with the decoder's KV cache; logits [B, 1, V]."""
    return chunked.decode_one(self, self.decoder_cfg, context_BxDd, inputs_Bx1, positions_Bx1)

  @nn.nowrap
  def init_cache(self, batch_size: int, max_chunks: int, chunk_len: int):
    """Zeroed (backbone, decoder) KV caches: `max_chunks` sentences, one of up to `chunk_len` units."""
    return chunked.init_caches(self, batch_size, max_chunks, chunk_len, concept_dim=self.concept_dim if self.precomputed else 0)


class ConceptFamily(Family):
  config = dict(
      model=dict(encoder=dict(d_model=64, num_layers=1, num_heads=4, d_ff=192),   # sentence encoder
                 decoder=dict(d_model=64, num_layers=2, num_heads=4, d_ff=192),   # sentence decoder
                 concept_dim=0),        # concept vector size; 0 = d_model (precomputed: their width)
      data=dict(num_chunks=64, chunk_len=16,  # C sentences per row, at most L units each (longer ones split)
                concept_embeddings=""),       # precomputed concepts, one .npy per split: 'emb/{split}.npy'
  )

  def validate(self, config) -> None:
    check_chunked(config)
    if config.model.concept_dim < 0:
      raise ConfigError(f"config.model.concept_dim={config.model.concept_dim} must be 0 (= d_model) or positive")

  def tensor_split_fields(self, config) -> dict[str, int]:
    return chunked_split_fields(config)

  def concept_dim(self, config) -> int:
    return int(config.model.concept_dim) or int(config.model.d_model)

  def build_model(self, config, vocab_size: int, decode: bool = False,
                  needs: Requirements = Requirements()) -> ConceptLM:
    """`vocab_size` is the tokenizer's (bytes or BPE); one more id is the end-of-sentence event."""
    if needs.heads:
      raise ConfigError(f"model.family={config.model.family!r} has no {[h.kind for h in needs.heads]} head; its "
                        "objectives are concept_decode, concept_mse, concept_recon and concept_contrastive")
    backbone = transformer_config(config.model, vocab_size + 1)
    return ConceptLM(backbone, chunked.sub_config(backbone, config.model.encoder),
                     chunked.sub_config(backbone, config.model.decoder), concept_dim=self.concept_dim(config),
                     precomputed=bool(config.data.concept_embeddings), recon=needs.decoder_passes > 0, decode=decode)

  def load_data(self, config, tokenizer=None) -> ConceptData:
    d = config.data
    data = ConceptData.build(d.source, tokenizer if tokenizer is not None else d.tokenizer, d.vocab_size,
                             d.num_chunks, d.chunk_len, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                             split_seed=d.split_seed, eval_max_bytes=d.eval_max_bytes or None,
                             embeddings=d.concept_embeddings)
    if data.embeddings is not None:
      dim = next(iter(data.embeddings.values())).shape[1]
      if config.model.concept_dim != dim:
        raise ConfigError(f"data.concept_embeddings are {dim}-dimensional but model.concept_dim="
                          f"{config.model.concept_dim}; set --config.model.concept_dim={dim}")
    return data

  def batch_spec(self, config, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    K = self.concept_dim(config) if config.data.concept_embeddings else 0
    return chunked.batch_spec(rows, config.data.num_chunks, config.data.chunk_len, concept_dim=K)

  def units_per_row(self, config) -> int:
    return int(config.data.num_chunks)

  def flops_per_byte(self, config, vocab_size: int, n_bytes: float, rows, needs: Requirements) -> dict[str, float]:
    return chunked_flops(config, vocab_size, n_bytes, rows, needs, concept_dim=self.concept_dim(config),
                         with_encoder=not config.data.concept_embeddings)

  def eval_step(self, model: ConceptLM):
    """Also the decoder NLL given the true concepts (`oracle_nll_sum`), the L2 distance of predicted to true
    concepts (`l2_sum`), in-batch contrastive hits (`contrastive_correct`) and `chunks`."""
    def step(params, batch):
      outputs = model.apply({"params": params}, batch, method=model.oracle)
      nll, _, count = masked_nll(outputs.logits, batch["targets"], batch["loss_mask"])
      oracle, _ = token_nll(outputs.aux["recon_logits"], batch["targets"])
      pred, true = outputs.aux["concept_pred"], outputs.aux["concept_target"]
      chunk_mask = batch["chunk_mask"].astype(jnp.float32)
      _, correct, chunks = contrastive_scores(pred, true, chunk_mask, 1.0, "batch")
      return dict(nll_sum=nll, count=count, oracle_nll_sum=jnp.sum(oracle * batch["loss_mask"].astype(jnp.float32)),
                  contrastive_correct=correct, chunks=chunks,
                  l2_sum=jnp.sum(jnp.sqrt(jnp.sum(jnp.square(pred - true), axis=-1)) * chunk_mask))
    return step

  def eval_summary(self, sums: dict[str, float], n_bytes: int) -> dict[str, float]:
    chunks = max(sums["chunks"], 1.0)
    return dict(oracle_bpb=sums["oracle_nll_sum"] / (math.log(2) * max(n_bytes, 1)),
                l2=sums["l2_sum"] / chunks, contrastive_accuracy=sums["contrastive_correct"] / chunks,
                n_chunks=int(sums["chunks"]))

  def sample(self, run, params, prompt: str, *, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """Sentence by sentence; on precomputed concepts the predicted concept is fed back (there is no encoder)."""
    d, tok = run.config.data, run.tokenizer
    chunks = [ids.tolist() for _, ids in sentence_chunks(prompt.encode("utf-8"), d.chunk_len, tok)]
    out = sampler.generate_chunks(
        run.decode_model(), params, chunks, max_new=max_new, chunk_len=d.chunk_len,
        max_chunks=max(d.num_chunks, len(chunks) + max_new + 2), rng=jax.random.PRNGKey(seed), eod_id=tok.eos_id,
        end_id=tok.vocab_size, pad_id=tok.pad_id, stop_ids=(tok.pad_id, tok.bos_id),
        feed_predicted=bool(d.concept_embeddings), temperature=float(temperature), top_k=int(top_k),
        top_p=float(top_p))
    return tok.decode_bytes(out).decode("utf-8", errors="replace")

  def sentences(self, config, split: str) -> list[bytes]:
    """The chunk texts of one split in row order: what an external sentence encoder embeds for
    `data.concept_embeddings` (listing them must not need the embeddings)."""
    config = config.copy_and_resolve_references()
    config.data.concept_embeddings = ""
    return self.load_data(config).sentences(split)


FAMILY = ConceptFamily()
