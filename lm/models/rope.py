"""Rotary position embedding (Su et al. 2021) and the frequency scalings real checkpoints use.

The two halves of each head rotate together (the layout Hugging Face's Llama, Qwen and Mistral checkpoints
are stored in), so imported q/k projections need no permutation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _rotate(x: Array, cos: Array, sin: Array) -> Array:
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@jax.custom_vjp
def _rotate_halves(x: Array, cos: Array, sin: Array) -> Array:
  return _rotate(x, cos, sin)


def _rotate_fwd(x, cos, sin):
  return _rotate(x, cos, sin), (cos, sin)


def _rotate_bwd(res, g):
  # A rotation's transpose is the rotation by minus the angle: one fused elementwise op, where autodiff
  # of the slices and concatenation gives pads and adds (~4% of a CPU train step at T=64). The angles are
  # functions of the positions, which take no gradient.
  cos, sin = res
  return _rotate(g, cos, -sin), jnp.zeros_like(cos), jnp.zeros_like(sin)


_rotate_halves.defvjp(_rotate_fwd, _rotate_bwd)


def inverse_frequencies(head_width: int, base: float = 10_000.0, scaling: str = "none", factor: float = 8.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                        original_positions: int = 8192) -> np.ndarray:
  """float32 [E/2]: base^(-2i/E), rescaled by `scaling`.

  `llama3` (Llama 3.1): wavelengths longer than original_positions / low_freq_factor are stretched by
  `factor`, those shorter than original_positions / high_freq_factor kept, and the band between interpolates
  linearly in original_positions / wavelength. Computed in float64 on the host (a constant of the model).
  """
  half = head_width // 2
  inv = base ** (-np.arange(half, dtype=np.float64) / half)
  if scaling == "llama3":
    wavelength = 2 * math.pi / inv
    low_wavelength = original_positions / low_freq_factor
    high_wavelength = original_positions / high_freq_factor
    ramp = (original_positions / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - ramp) * inv / factor + ramp * inv
    inv = np.where(wavelength > low_wavelength, inv / factor, np.where(wavelength < high_wavelength, inv, blended))
  elif scaling == "linear":
    inv = inv / factor
  return inv.astype(np.float32)


def rope(x_BxTxHxE: Array, positions_BxT: Array, base: float = 10_000.0,
         inv_freq_E2: np.ndarray | None = None) -> Array:
  """Rotate each head's two halves by position * frequency (`inv_freq_E2`, default: unscaled from `base`)."""
  if inv_freq_E2 is None:
    half = x_BxTxHxE.shape[-1] // 2
    inv_freq_E2 = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxTxE2 = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_E2)[None, None, :]
  sin = jnp.sin(angle_BxTxE2)[:, :, None, :]
  cos = jnp.cos(angle_BxTxE2)[:, :, None, :]
  return _rotate_halves(x_BxTxHxE.astype(jnp.float32), cos, sin).astype(x_BxTxHxE.dtype)
