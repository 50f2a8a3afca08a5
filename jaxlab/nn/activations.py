"""Elementwise activations, looked up by name from `config.model.activation`.

Later papers (PolyCom, series-informed activations) register theirs here; an activation is
any function `x -> y` of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlab.core.registry import Registry

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: Registry[Activation] = Registry('activation')

ACTIVATIONS.register('relu')(jax.nn.relu)
ACTIVATIONS.register('gelu')(jax.nn.gelu)  # tanh approximation, as in GPT-2
ACTIVATIONS.register('silu')(jax.nn.silu)


@ACTIVATIONS.register('squared_relu')
def squared_relu(x: jax.Array) -> jax.Array:
  """ReLU(x)^2 (So et al., 2021, "Primer")."""
  return jnp.square(jax.nn.relu(x))
