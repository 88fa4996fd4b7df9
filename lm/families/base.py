"""What a family is asked (`Family`), and what only some families can do (protocols).

Every family answers `Family`'s methods. A capability that some families have and others lack is a protocol
that shared code asks for, never a stub on `Family` that raises: a family has it by defining its method.

- `UnitDecoder`: the decode-mode model is a next-unit distribution with a KV cache, units being tokenizer ids
  read from a start-of-document id. Sequence-level decoding (`lm.decoding`: beam, SMC, power sampling, MBR,
  exact enumeration), RL rollouts (`lm.rl`) and exact byte-level probabilities (`lm.eval.byte_exact`) work for
  any family that has it (today: token).
- `Speculative`: greedy decoding drafted by the model's own heads (token, with `mtp` or `dsmtp` heads).
- `SentenceLister`: the chunk texts of a split, for an external sentence encoder (concept).

Where the line falls: a protocol is drawn where a second family could reuse the shared code unchanged (a
diffusion or byte model with a KV-cached unit decoder gets beam search for free); what only one family's own
parts can do (drafting with its heads) stays in that family's folder behind a protocol the CLI can name.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lm.errors import ConfigError, LMError
from lm.objectives.base import Requirements, masked_nll


class Family:
  """What a family is asked. Subclass it in the family's module and set `FAMILY = MyFamily()`."""

  # The family's own config fields, merged into the base config when a run names this family:
  # {"model": {...}, "data": {...}}. Experiments and overrides then set them like any other field.
  config: dict[str, dict[str, Any]] = {}
  # Whether the model is the plain decoder Hugging Face causal LMs map onto (`lm.interop`: import, export,
  # init_from a Hugging Face directory): embed -> decoder -> final norm -> unembed, params named as token.py's.
  hf_decoder = False

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """One-line `ConfigError`s for values of the family's fields that cannot work (no devices, no data)."""

  def tensor_split_fields(self, config: ml_collections.ConfigDict) -> dict[str, int]:
    """Extra `config` fields (dotted name -> value) that `mesh.tensor` must divide."""
    return {}

  def build_model(self, config: ml_collections.ConfigDict, vocab_size: int, decode: bool = False,
                  needs: Requirements = Requirements()) -> nn.Module:
    raise NotImplementedError

  def load_data(self, config: ml_collections.ConfigDict, tokenizer=None):
    """The run's data (splits, tokenizer, train iterator, eval batches); `tokenizer` reuses a trained one."""
    raise NotImplementedError

  def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a batch of `rows` rows: what `init` traces the model with."""
    raise NotImplementedError

  def units_per_row(self, config: ml_collections.ConfigDict) -> int:
    """What the progress line's tokens/s counts per row (units for the token family, chunks otherwise)."""
    return int(config.data.seq_len)

  def flops_per_byte(self, config: ml_collections.ConfigDict, vocab_size: int, n_bytes: float,
                     rows: list[dict[str, np.ndarray]], needs: Requirements) -> dict[str, float]:
    """`flops_per_byte_train`, `flops_per_byte_inference` (and per component) of text holding `n_bytes` bytes
    packed into `rows` (host batches), counted over every slot the compiled step computes (padding included),
    with `flops_per_byte_data` / `flops_per_byte_inference_data` over the positions holding data
    (`flops.per_byte_entries`); training counts the objectives' heads and extra passes."""
    raise NotImplementedError

  def eval_step(self, model: nn.Module):
    """(params, batch) -> sums: `nll_sum` and `count` of the main next-unit head, plus any extras."""
    def step(params, batch):
      outputs = model.apply({"params": params}, batch, with_heads=False)
      nll, _, count = masked_nll(outputs, batch["targets"], batch["loss_mask"])
      return dict(nll_sum=nll, count=count)
    return step

  def eval_summary(self, sums: dict[str, float], n_bytes: int) -> dict[str, float]:  # pylint: disable=unused-argument
    """Extra entries of the evaluation result from the extra sums of `eval_step`."""
    return {}

  def sample(self, run, params, prompt: str, *, max_new: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0) -> str:
    """Continue `prompt` (text) by up to `max_new` units with a trained run's params."""
    raise NotImplementedError


def no_extra_passes(config, needs: Requirements) -> None:
  """For families without a chunk decoder to run twice: objectives asking for extra passes are an error."""
  if needs.decoder_passes:
    raise ConfigError(f"model.family={config.model.family!r} has no chunk decoder for the {needs.decoder_passes} "
                      "extra decoder pass(es) the objectives ask for (concept_recon); use a concept-family experiment")


@runtime_checkable
class UnitDecoder(Protocol):
  """The family's decode-mode model predicts tokenizer units one at a time from a KV cache.

  `unit_decoder(run)` is that model: called on `{"inputs", "positions", "segment_ids"}` [B, n] with the `cache`
  collection mutable (made by its `init_cache(batch, length)`), it appends to the cache and returns the next
  units' logits (`.logits`). Units are read from a start-of-document id, so a text's byte-level probability is
  the sum over its tokenizations."""

  def unit_decoder(self, run) -> nn.Module: ...


@runtime_checkable
class Speculative(Protocol):
  """Greedy decoding drafted by the model's own heads: (text, {units, forward_passes, units_per_pass})."""

  def speculative(self, run, params, prompt: str, max_new: int) -> tuple[str, dict]: ...


@runtime_checkable
class SentenceLister(Protocol):
  """The chunk texts (sentences) of one split of an experiment's data, row for row."""

  def sentences(self, config: ml_collections.ConfigDict, split: str) -> list[bytes]: ...


def require(family: Family, capability: type, what: str, config: ml_collections.ConfigDict) -> Family:
  """`family` if it has `capability` (a protocol above), else one line naming what is missing: `what` is the
  thing asked for (e.g. '--method beam'), `config` the run's."""
  if isinstance(family, capability):
    return family
  doc = (capability.__doc__ or "").split("\n")[0].rstrip(".")
  raise LMError(f"{what} needs a family with {capability.__name__} ({doc[0].lower() + doc[1:]}); "
                f"{config.experiment!r} is model.family={config.model.family!r}, which has none: use a run of a "
                "family that has it, or drop the option")
