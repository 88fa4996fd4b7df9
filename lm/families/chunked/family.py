"""What the chunked families (hierarchical, concept) share as families: their checks, tensor-split fields and
FLOPs over the `[C, L]` grid. Their model parts are `model.py`, their data `data.py`, their sampler `sampler.py`."""

from __future__ import annotations

from lm.errors import ConfigError
from lm.models import flops
from lm.objectives.base import Requirements


def check_chunked(config) -> None:
  """The encoder/decoder sizes and chunk grid of a chunked family (hierarchical, concept) are positive."""
  sizes = {f"model.{part}.{k}": config.model[part][k] for part in ("encoder", "decoder")
           for k in ("d_model", "num_layers", "num_heads", "d_ff")}
  sizes.update({f"data.{k}": config.data[k] for k in ("num_chunks", "chunk_len")})
  if config.data.completion_after:
    raise ConfigError(f"data.completion_after={config.data.completion_after!r} is read by the token family only; "
                      f"set it to '' for model.family={config.model.family!r}")
  for key, value in sizes.items():
    if value <= 0:
      raise ConfigError(f"config.{key}={value} must be positive")
  if config.model.positions != "rope":
    raise ConfigError(f"model.positions={config.model.positions!r}: chunked families place units and chunks "
                      "with RoPE only; set model.positions=rope")


def chunked_split_fields(config) -> dict[str, int]:
  """A chunked family's encoder and decoder split over `mesh.tensor` by the backbone's rules."""
  return {f"model.{part}.{k}": config.model[part][k] for part in ("encoder", "decoder") for k in ("num_heads", "d_ff")}


def chunked_flops(config, vocab_size: int, n_bytes: float, rows, needs: Requirements, concept_dim: int = 0,
                  with_encoder: bool = True) -> dict[str, float]:
  """`Family.flops_per_byte` of a chunked family: executed over every slot of the rows' `[C, L]` grids (the
  compiled step computes padding too), data-position over the units and chunks their masks hold."""
  d = config.data

  def count(n_units, n_chunks):
    return flops.chunked_per_byte(config.model, vocab_size, d.chunk_len, d.num_chunks, n_bytes, n_units, n_chunks,
                                  concept_dim=concept_dim, decoder_passes=1 + needs.decoder_passes,
                                  with_encoder=with_encoder)

  n_chunks = sum(float(r["chunk_mask"].sum()) for r in rows)
  executed = count(sum(float(r["unit_mask"].size) for r in rows), sum(float(r["chunk_mask"].size) for r in rows))
  data = count(sum(float(r["unit_mask"].sum()) for r in rows), n_chunks)
  return dict(flops.per_byte_entries(executed, data), bytes_per_chunk=n_bytes / max(n_chunks, 1))
