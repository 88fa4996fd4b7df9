"""Token family: a decoder over units (bytes or BPE tokens), plus the heads its objectives train.

Model: embed -> Transformer -> RMSNorm -> unembed (tied by default), each auxiliary head (`lm.families.token.heads`,
or any `lm.objectives.Head` a user objective registers) in its own parameter subtree `<kind>_head`.
Batch: `inputs, targets, segment_ids, positions, loss_mask` [B, T] (`lm.data.pipeline.TokenData`).
Sampling: one jitted KV-cache loop (`lm.decoding.generate`); greedy self-speculation with the heads
(`speculative.py`). A `UnitDecoder` (lm.families.base): sequence-level decoding and RL rollouts work on it.
Its own objectives (`objectives.py`: ntp, mtp, top, ...) and heads (`heads.py`) live beside it.

To fork: copy this folder to `mypkg/myfamily/` and train with `--config.model.family=mypkg.myfamily`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import parallel
from lm.data.pipeline import TokenData
from lm.errors import ConfigError, LMError
from lm.decoding import generate
from lm.families.base import Family, no_extra_passes
from lm.models import flops
from lm.models.base import ModelOutputs, transformer_config
from lm.models.layers import (Array, Embedding, TransformerConfig, Unembed, constrain, make_norm,
                              mask_padded_vocab)
from lm.models.transformer import Transformer
from lm.objectives.base import Head, Requirements, TrunkOutputs

from . import objectives  # noqa: F401  (registers this family's objectives; a forked folder's too)
from . import speculative as speculative_lib


def trunk_layers(cfg: TransformerConfig, heads: tuple[Head, ...]) -> int:
  """Layers left in the trunk once heads that keep the parameter count equal took theirs."""
  given = sum(head.give_up_layers for head in heads)
  if given >= cfg.num_layers:
    raise ConfigError(f"heads take {given} of model.num_layers={cfg.num_layers} layers from the trunk, which needs at "
                      f"least one; raise model.num_layers above {given} or drop equal_params")
  return cfg.num_layers - given


class TokenLM(nn.Module):
  """`inputs, positions, segment_ids` [B, T] -> next-unit logits [B, T, V] (+ the heads' outputs in `aux`)."""
  cfg: TransformerConfig
  decode: bool = False
  heads: tuple[Head, ...] = ()

  def setup(self):
    cfg = self.cfg
    self.embed = Embedding(cfg)
    if not cfg.tie_embeddings:
      self.unembed = Unembed(cfg)
    self.decoder = Transformer(dataclasses.replace(cfg, num_layers=trunk_layers(cfg, self.heads)), causal=True,
                               decode=self.decode)
    self.final_norm = make_norm(cfg)
    for head in self.heads:
      setattr(self, f"{head.kind}_head", head.build(cfg, decode=self.decode))

  def _logits(self, h_BxTxD: Array) -> Array:
    logits = self.embed.attend(h_BxTxD) if self.cfg.tie_embeddings else self.unembed(h_BxTxD)
    return mask_padded_vocab(logits.astype(jnp.float32), self.cfg.vocab_size)

  def __call__(self, batch: dict[str, Array], with_heads: bool = True) -> ModelOutputs:
    """Training and scoring; `with_heads=False` skips the auxiliary heads (evaluation, plain decoding)."""
    ids_BxT = batch["inputs"]
    positions_BxT = batch.get("positions")
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(ids_BxT.shape[1], dtype=jnp.int32), ids_BxT.shape)
    segment_ids_BxT = batch.get("segment_ids")
    x_BxTxD = self.embed.add_positions(self.embed(ids_BxT), positions_BxT)
    x_BxTxD = self.decoder(x_BxTxD, positions_BxT, segment_ids_BxT)
    h_BxTxD = self.final_norm(x_BxTxD)
    aux = {"hidden": h_BxTxD, "trunk_out": x_BxTxD}
    if with_heads:
      aux.update(self._heads(TrunkOutputs(x_BxTxD, h_BxTxD, ids_BxT, positions_BxT, segment_ids_BxT, self.embed,
                                          self._logits)))
    if self.cfg.logits_chunk > 0 and not self.decode:  # lazy: the loss unembeds tile by tile
      unembedding = self.embed.unembedding() if self.cfg.tie_embeddings else self.unembed()
      return ModelOutputs(aux=aux, hidden=h_BxTxD, unembedding=unembedding, vocab_size=self.cfg.vocab_size,
                          logits_chunk=self.cfg.logits_chunk)
    logits_BxTxV = constrain(self._logits(h_BxTxD), ("batch", "length", "vocab"))
    return ModelOutputs(head_logits=logits_BxTxV, aux=aux, vocab_size=self.cfg.vocab_size)

  def run_heads(self, trunk_out_BxTxD: Array, inputs_BxT: Array, positions_BxT: Array,
                next_inputs_BxT: Array | None = None) -> dict[str, Array]:
    """The heads alone on a trunk output (`aux["trunk_out"]`), with unit t+1 at each position where the
    caller knows it: speculative decoding drafts this way with the sequential `dsmtp` modules."""
    trunk = TrunkOutputs(trunk_out_BxTxD, self.final_norm(trunk_out_BxTxD), inputs_BxT, positions_BxT, None,
                         self.embed, self._logits, next_inputs_BxT)
    return self._heads(trunk)

  def _heads(self, trunk: TrunkOutputs) -> dict[str, Array]:
    aux = {}
    for head in self.heads:
      aux.update(getattr(self, f"{head.kind}_head")(trunk))
    return aux

  @nn.nowrap
  def init_cache(self, batch_size: int, length: int, with_heads: bool = False):
    """Zeroed KV caches for `batch_size` rows of up to `length` units (and the heads' blocks if asked)."""
    ids = jnp.zeros((batch_size, length), jnp.int32)
    return generate.zero_cache(lambda: self.init(jax.random.PRNGKey(0), {"inputs": ids}, with_heads=with_heads))


def flops_per_unit(model_cfg, vocab_size: int, seq_len: int, heads: tuple[Head, ...] = ()) -> dict[str, float]:
  """Matmul FLOPs per predicted unit: forward (trunk and unembedding; the embedding lookup is free) and
  training (3x forward, with the auxiliary heads' forward). Heads that take trunk layers shorten it."""
  m = model_cfg
  cfg = transformer_config(m, vocab_size)
  trunk = m.num_layers - sum(head.give_up_layers for head in heads)
  forward = flops.transformer_per_position(m.d_model, trunk, m.num_heads, m.num_kv_heads, m.d_ff,
                                           keys=seq_len / 2, head_dim=m.head_dim, gated=cfg.mlp == "swiglu")
  forward += flops.unembed_per_position(cfg)
  return dict(forward=forward, train=3 * (forward + sum(head.flops_per_unit(cfg, seq_len) for head in heads)))


# A chunked loss holds at most this many float32 logits per row at once (64 MiB; 128 positions of a 128k vocabulary).
LOGITS_PER_TILE = 1 << 24


def logits_chunk(setting: int, padded_vocab: int, seq_len: int) -> int:
  """Positions per tile of the main head's loss: `model.logits_chunk` N > 0 as given, -1 dense, 0 (auto) tiles
  of at most `LOGITS_PER_TILE` logits per row, dense when a whole row fits in one (small vocabularies)."""
  if setting:
    return max(setting, 0)
  per_tile = max(LOGITS_PER_TILE // padded_vocab, 1)
  return 0 if per_tile >= seq_len else per_tile


class TokenFamily(Family):
  hf_decoder = True

  def build_model(self, config, vocab_size: int, decode: bool = False,
                  needs: Requirements = Requirements()) -> TokenLM:
    no_extra_passes(config, needs)
    cfg = transformer_config(config.model, vocab_size)
    cfg = dataclasses.replace(cfg, logits_chunk=logits_chunk(config.model.logits_chunk, cfg.padded_vocab,
                                                             config.data.seq_len))
    if cfg.positions == "learned":
      cfg = dataclasses.replace(cfg, max_positions=config.model.max_positions or config.data.seq_len)
    trunk_layers(cfg, needs.heads)  # a head that takes every layer fails here, before any compile
    return TokenLM(cfg, decode=decode, heads=tuple(needs.heads))

  def load_data(self, config, tokenizer=None) -> TokenData:
    d = config.data
    return TokenData.build(d.source, tokenizer if tokenizer is not None else d.tokenizer, d.vocab_size,
                           d.seq_len, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                           split_seed=d.split_seed, eval_max_bytes=d.eval_max_bytes or None,
                           completion_after=d.completion_after)

  def batch_spec(self, config, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = jax.ShapeDtypeStruct((rows, config.data.seq_len), jnp.int32)
    return {k: shape for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}

  def flops_per_byte(self, config, vocab_size: int, n_bytes: float, rows, needs: Requirements) -> dict[str, float]:
    per_unit = flops_per_unit(config.model, vocab_size, config.data.seq_len, needs.heads)
    # Executed: every position of every row (padding too); data: every position of a segment, scored or not
    # (completion-only context included).
    executed = sum(float(r["segment_ids"].size) for r in rows) / max(n_bytes, 1)
    data = sum(float((r["segment_ids"] > 0).sum()) for r in rows) / max(n_bytes, 1)
    return flops.per_byte_entries({k: v * executed for k, v in per_unit.items()},
                                  {k: v * data for k, v in per_unit.items()})

  def sample(self, run, params, prompt: str, *, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    tok = run.tokenizer
    ids = tok.prompt_ids(prompt)
    out, lengths = generate.generate(run.decode_model(), params, jnp.asarray(ids)[None], jax.random.PRNGKey(seed),
                                   max_new=max_new, eos_id=tok.eos_id, temperature=float(temperature),
                                   top_k=int(top_k), top_p=float(top_p))
    out, lengths = parallel.to_host(out), parallel.to_host(lengths)
    out = out[0][: int(lengths[0])]
    return tok.decode(out[out != tok.eos_id])

  def unit_decoder(self, run) -> nn.Module:
    """`lm.families.base.UnitDecoder`: the decode-mode model, one unit at a time from its KV cache."""
    return run.decode_model()

  def speculative(self, run, params, prompt: str, max_new: int) -> tuple[str, dict]:
    """Greedy decoding drafted by the run's `mtp` heads (or first `dsmtp` module); stats of accepted units."""
    tok = run.tokenizer
    model = run.decode_model()
    if speculative_lib.draft_heads(model) < 1:
      raise LMError(f"--speculative drafts with the run's `mtp` heads or `dsmtp` modules, and "
                    f"{run.config.experiment!r} was trained without them; train with one (e.g. token_mtp) or drop "
                    "--speculative")
    ids = tok.prompt_ids(prompt)
    out, lengths, passes = speculative_lib.speculative_greedy(model, params, jnp.asarray(ids)[None], max_new=max_new,
                                                           eos_id=tok.eos_id)
    out, lengths, passes = parallel.to_host(out), parallel.to_host(lengths), parallel.to_host(passes)
    out = out[0][: int(lengths[0])]
    n, passes = int(lengths[0]), int(passes)
    stats = dict(units=n, forward_passes=passes, units_per_pass=n / max(passes, 1))
    return tok.decode(out[out != tok.eos_id]), stats


FAMILY = TokenFamily()
