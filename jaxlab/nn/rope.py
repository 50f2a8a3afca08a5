"""Rotary position embedding (Su et al., 2021, "RoFormer", Sec. 3.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotates feature pairs `(x_i, x_{i+H/2})` by angle `pos * base^(-2i/H)`.

  Args:
    x: `[batch, length, heads, head_dim]`, `head_dim` even.
    positions: `[batch, length]` integer positions.
    base: the wavelength base `theta`.

  Returns:
    `x` rotated, in `x.dtype` (the rotation itself is computed in float32).
  """
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # [B, T, 1, H/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
