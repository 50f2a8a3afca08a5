"""Nonlinearity compensation (PanGu-π; Wang et al., 2023, arXiv:2312.17276, Sec. 4).

Two additions that raise a transformer's nonlinearity at a tiny parameter cost:

- **Series-informed activation** (Sec. 4.2), for the FFN:
  `σ_s(x) = Σ_{i=1..n} a_i · σ(x + b_i)`, a sum of `n` shifted and scaled copies of a base
  activation `σ` with learnable scalars `a_i, b_i` (n = 2 as in the paper's models).
  Registered in `ACTIVATIONS` as 'series_gelu' and 'series_relu'; like PolyCom's activations,
  the module holding `a, b` is built in the scope of the FFN that calls it.
  Initialisation (ours; the paper does not pin it down): `a_i = 1/n`, `b_i` evenly spaced in
  `[-0.5, 0.5]` (0 for n = 1), so the copies differ from the first step (equal shifts would get
  equal gradients forever).
- **Augmented shortcut** (Sec. 4.1), for attention:
  `AugMSA(Z) = MSA(Z) + Z + Σ_{i=1..T} τ_i(Z)`, `τ_i(Z) = σ(Z Θ_i) Θ'_i` through a rank-`r`
  bottleneck (`model.aug_shortcuts` = T, `model.aug_rank` = r). `Θ'_i` starts at zero, so at
  initialisation the block is exactly the pre-norm block. Registered in `BLOCKS` as 'augmented';
  in our pre-norm layout the branches read the normalised input, as attention does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.polycom import in_calling_module
from jaxlab.nn.transformer import BLOCKS, PreNormBlock, TransformerConfig

SERIES_TERMS = 2  # n of the registered series activations (the paper's models)


def series_activation(
  x: jax.Array, base: str | object, scales: jax.Array, shifts: jax.Array
) -> jax.Array:
  """`Σ_i scales[i] · base(x + shifts[i])` (PanGu-π Eq. 12).

  Args:
    x: any shape.
    base: an `ACTIVATIONS` name or an elementwise function.
    scales: `[n]` the `a_i`.
    shifts: `[n]` the `b_i`.
  """
  fn = ACTIVATIONS.get(base) if isinstance(base, str) else base
  return sum(scales[i] * fn(x + shifts[i]) for i in range(scales.shape[0]))


class SeriesActivation(nn.Module):
  """Series-informed activation of `terms` copies of `base` with learnable `a` and `b`."""

  base: str = 'gelu'
  terms: int = SERIES_TERMS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.terms < 1:
      raise ValueError(f'SeriesActivation.terms: expected a positive integer, got {self.terms}')
    a = self.param('a', nn.initializers.constant(1.0 / self.terms), (self.terms,), jnp.float32)
    spread = jnp.linspace(-0.5, 0.5, self.terms) if self.terms > 1 else jnp.zeros(1)
    b = self.param('b', lambda *_: spread.astype(jnp.float32))
    return series_activation(x, self.base, a.astype(x.dtype), b.astype(x.dtype))


def _register_series(base: str) -> None:
  name = f'series_{base}'

  def activation(x: jax.Array) -> jax.Array:
    return in_calling_module(SeriesActivation(base), name, x)

  activation.__doc__ = f'Series-informed {base} with n = {SERIES_TERMS} terms (PanGu-π).'
  ACTIVATIONS.register(name)(activation)


for _base in ('gelu', 'relu'):
  _register_series(_base)


class AugmentedShortcut(nn.Module):
  """`Σ_{i=1..T} gelu(z Θ_i) Θ'_i` with `Θ_i: [d, r]`, `Θ'_i: [r, d]` (zero at init)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.cfg
    t, d, r = cfg.aug_shortcuts, cfg.width, cfg.aug_rank
    down = self.param('down', cfg.kernel_init(None, 'embed', None), (t, d, r), cfg.weight_dtype)
    up = self.param(
      'up',
      nn.with_logical_partitioning(nn.initializers.zeros, (None, None, 'embed')),
      (t, r, d),
      cfg.weight_dtype,
    )
    dt = cfg.compute_dtype
    h = jax.nn.gelu(jnp.einsum('bld,tdr->bltr', z.astype(dt), down.astype(dt)))
    return jnp.einsum('bltr,trd->bld', h, up.astype(dt))


@BLOCKS.register('augmented')
class AugmentedBlock(PreNormBlock):
  """Pre-norm block with augmented shortcuts around the mixer:
  `x += mixer(n(x)) + Σ_i τ_i(n(x)); x += ffn(norm(x))`, `n` the mixer's norm
  (`model.aug_shortcuts = 0` is the plain pre-norm block)."""

  def mixer_shortcuts(self, z: jax.Array) -> jax.Array | None:
    if not self.cfg.aug_shortcuts:
      return None
    return AugmentedShortcut(self.cfg, name='shortcut')(z)
