"""Normalization layers, looked up by name from `config.model.norm`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.core.registry import Registry

NORMS: Registry[type[nn.Module]] = Registry('normalization')


@NORMS.register('rmsnorm')
class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich, 2019): `y = x / sqrt(mean(x^2) + eps) * scale`.

  Statistics are computed in float32 whatever the compute dtype.
  """

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
      'scale',
      nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      (x.shape[-1],),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


@NORMS.register('layernorm')
class LayerNorm(nn.Module):
  """LayerNorm (Ba et al., 2016): `y = (x - mean) / sqrt(var + eps) * scale + bias`."""

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param(
      'scale',
      nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      (d,),
      self.param_dtype,
    )
    bias = self.param(
      'bias',
      nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
      (d,),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype)
