"""Polynomial composition activations (PolyCom; Zhuo et al., 2024, arXiv:2411.03884, Sec. 3).

Two activations with learnable scalar coefficients, of order `r` (the paper uses r = 3):

  PolyReLU(x) = Σ_{i=0..r} a_i · ReLU(x)^i
  PolyNorm(x) = Σ_{i=1..r} a_i · x^i / RMS(x^i) + b,   RMS(u) = sqrt(mean_last_axis(u²) + eps)

with `a_1..a_r` initialised to 1/r and the constant term (`a_0` of PolyReLU, `b` of PolyNorm)
to 0, as in the official code (BryceZhuo/PolyCom). PolyNorm's normalisation is RMSNorm without
a learnable scale, over the FFN's hidden units.

They are registered in `ACTIVATIONS` as 'polyrelu' and 'polynorm'. An activation there is a
function `x -> y`; these two create their Flax module in the scope of the module that calls them
(Flax binds a module built inside a compact method to that method's module), so
`model.activation='polyrelu'` gives every FFN its own learnable coefficients
(`block_0/ffn/PolyReLU_0/a`) with no change to the FFN.

The paper compares activations at equal parameters against SwiGLU: a 2-matrix FFN
`W_o ρ(W_i x)` is made 3/2 as wide as the gated width of the SwiGLU FFN `W_o (silu(W_g x) ⊙
W_u x)` (3·d·m parameters each). `model.ffn='matched'` does that for any activation:
`model.mlp_dim` is the gated width `m` of the SwiGLU it matches, and the activation 'swiglu'
(registered here: `silu(a) ⊙ b` of the two halves of its input) makes it the SwiGLU itself.
"""

from __future__ import annotations

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.transformer import FFNS, TransformerConfig

# Activations that halve their input's last axis (gate ⊙ value).
GATED_ACTIVATIONS = frozenset({'swiglu'})


def poly_relu(x: jax.Array, a: jax.Array, a0: jax.Array) -> jax.Array:
  """`a0 + Σ_{i=1..r} a[i-1] · ReLU(x)^i` (PolyCom Eq. 3), by Horner's rule.

  Args:
    x: any shape.
    a: `[r]` coefficients of the powers 1..r.
    a0: scalar constant term.
  """
  relu = jax.nn.relu(x)
  y = jnp.zeros_like(x)
  for coeff in a[::-1]:
    y = (y + coeff) * relu
  return y + a0


def _rms_normalize(u: jax.Array, eps: float) -> jax.Array:
  u32 = u.astype(jnp.float32)
  return u32 * jax.lax.rsqrt(jnp.mean(jnp.square(u32), axis=-1, keepdims=True) + eps)


def poly_norm(x: jax.Array, a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
  """`Σ_{i=1..r} a[i-1] · x^i / RMS(x^i) + b` (PolyCom Eq. 4), RMS over the last axis.

  Args:
    x: `[..., hidden]`.
    a: `[r]` coefficients of the normalised powers 1..r.
    b: scalar bias.
    eps: added to the mean square inside the square root.
  """
  y = sum(a[i - 1] * _rms_normalize(x**i, eps) for i in range(1, a.shape[0] + 1))
  return (y + b).astype(x.dtype)


class PolyReLU(nn.Module):
  """PolyReLU of order `order` with learnable `a` (`[order]`, init 1/order) and `a0` (init 0)."""

  order: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.param('a', nn.initializers.constant(1.0 / self.order), (self.order,), jnp.float32)
    a0 = self.param('a0', nn.initializers.zeros, (), jnp.float32)
    return poly_relu(x, a.astype(x.dtype), a0.astype(x.dtype))


class PolyNorm(nn.Module):
  """PolyNorm of order `order` with learnable `a` (`[order]`, init 1/order) and `b` (init 0)."""

  order: int = 3
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.param('a', nn.initializers.constant(1.0 / self.order), (self.order,), jnp.float32)
    b = self.param('b', nn.initializers.zeros, (), jnp.float32)
    return poly_norm(x, a, b, self.eps)


def in_calling_module(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
  """Applies a learnable activation `module` built inside the caller's compact method."""
  try:
    return module(x)
  except flax.errors.CallCompactUnboundModuleError:
    raise ValueError(
      f'activation {name!r} has learnable parameters: call it inside a Flax module '
      '(an FFN), not on a bare array'
    ) from None


@ACTIVATIONS.register('polyrelu')
def polyrelu(x: jax.Array) -> jax.Array:
  """PolyReLU of order 3 with its coefficients in the calling module (see the module doc)."""
  return in_calling_module(PolyReLU(), 'polyrelu', x)


@ACTIVATIONS.register('polynorm')
def polynorm(x: jax.Array) -> jax.Array:
  """PolyNorm of order 3 with its coefficients in the calling module (see the module doc)."""
  return in_calling_module(PolyNorm(), 'polynorm', x)


@ACTIVATIONS.register('swiglu')
def swiglu(x: jax.Array) -> jax.Array:
  """`silu(x[..., :m]) ⊙ x[..., m:]` for `x` of width 2m (Shazeer, 2020): gate, then value."""
  if x.shape[-1] % 2:
    raise ValueError(f'swiglu: expected an even last axis (gate and value), got {x.shape}')
  gate, value = jnp.split(x, 2, axis=-1)
  return jax.nn.silu(gate) * value


def matched_hidden_width(mlp_dim: int, activation: str) -> int:
  """Width of `W_i`'s output in the 'matched' FFN: 2m for a gated activation, round(3m/2)
  otherwise, so both have the 3·d·m parameters of a SwiGLU FFN of gated width m = `mlp_dim`."""
  return 2 * mlp_dim if activation in GATED_ACTIVATIONS else round(1.5 * mlp_dim)


@FFNS.register('matched')
class MatchedFFN(nn.Module):
  """`W_o act(W_i x)` at the parameter count of a SwiGLU FFN of gated width `model.mlp_dim`."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    del deterministic
    cfg = self.cfg
    hidden = matched_hidden_width(cfg.mlp_dim, cfg.activation)
    h = cfg.dense(hidden, ('embed', 'mlp'), 'wi')(x)
    h = nn.with_logical_constraint(ACTIVATIONS.get(cfg.activation)(h), ('batch', 'length', 'mlp'))
    return cfg.dense(cfg.width, ('mlp', 'embed'), 'wo', scale=cfg.residual_scale)(h)
