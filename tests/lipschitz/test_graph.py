"""Tracing Flax models into chains of affine maps and certifiable activations."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.lipschitz.graph import trace_chain
from jaxlab.nn import certifiable as C


class Mixed(nn.Module):
  """Conv → ReLU → Dense → MaxMin → Dense → tanh → Householder → leaky → sigmoid → max(·, 0)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(2, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    x = C.maxmin(nn.Dense(8)(x))
    x = jnp.tanh(nn.Dense(6)(x))
    x = C.householder(x, self.param('v', nn.initializers.normal(1.0), (2,)))
    x = jax.nn.sigmoid(C.leaky_relu(nn.Dense(4)(x), 0.2))
    return nn.Dense(3)(jnp.maximum(x, 0))


def test_trace_reproduces_the_model_and_finds_every_activation():
  model, x0 = Mixed(), jnp.ones((1, 4, 4, 1))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x0)
  chain = trace_chain(lambda x: model.apply(params, x), x0)
  names = [a.act.name for a in chain.acts]
  assert names == ['relu', 'maxmin', 'tanh', 'householder', 'leaky_relu', 'sigmoid', 'relu']
  assert [w.shape for w in chain.weights] == [
    (32, 16),
    (8, 32),
    (6, 8),
    (6, 6),
    (4, 6),
    (4, 4),
    (4, 4),
    (3, 4),
  ]
  xs = jax.random.normal(jax.random.PRNGKey(1), (4, 1, 4, 4, 1))
  ours = jax.jit(jax.vmap(chain))(xs.reshape(4, -1))
  ref = jax.jit(jax.vmap(lambda x: model.apply(params, x)))(xs).reshape(4, -1)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  np.testing.assert_allclose(float(chain.acts[4].params[0]), 0.2, rtol=1e-6)


def test_a_user_activation_is_recognised_by_its_rule():
  name = 'test_softsign'

  def slope(lb, ub):
    d = lambda z: 1 / (1 + jnp.abs(z)) ** 2  # noqa: E731
    return jnp.minimum(d(lb), d(ub)), d(jnp.clip(0.0, lb, ub))

  try:
    softsign = C.certifiable(name, slope=slope)(lambda x: x / (1 + jnp.abs(x)))
    model = nn.Sequential([nn.Dense(4), softsign, nn.Dense(2)])
    x0 = jnp.ones(3)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x0)
    chain = trace_chain(lambda x: model.apply(params, x), x0)
    assert [a.act.name for a in chain.acts] == [name]
  finally:
    C.CERTIFIABLE.pop(name, None)


def test_uncertifiable_primitive_and_residual_are_rejected():
  x0 = jnp.ones(3)
  w = jnp.ones((3, 3))
  with pytest.raises(ValueError, match='sin'):
    trace_chain(lambda x: jnp.sin(w @ x), x0)
  with pytest.raises(ValueError, match='residual'):
    trace_chain(lambda x: C.relu(w @ C.relu(w @ x)) + C.relu(w @ x), x0)
