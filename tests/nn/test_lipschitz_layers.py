"""Lipschitz-constrained layers: orthonormal (Björck) and spectrally normalised kernels, and the
MaxMin MLP classifier built from them (1-Lipschitz when constrained, trains on digits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core.errors import ConfigError
from jaxlab.lipschitz.sdp import matrix_product_bound, network_fn, sampled_lower_bound
from jaxlab.nn import build_model
from jaxlab.nn.lipschitz_layers import (
  bjorck_orthonormalize,
  effective_kernels,
  lipschitz_mlp_config,
  spectral_normalize,
)
from jaxlab.tasks.classification import classification_config


@pytest.mark.parametrize('shape', [(8, 8), (12, 5), (5, 12)])
def test_bjorck_kernel_has_unit_singular_values(shape):
  w = jax.random.normal(jax.random.key(0), shape)
  q = bjorck_orthonormalize(w, iters=30)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(q), compute_uv=False), 1.0, atol=1e-4)


def test_bjorck_is_the_polar_factor():
  # The iteration converges to U V^T of the SVD W = U S V^T (the nearest orthonormal matrix).
  w = jax.random.normal(jax.random.key(1), (6, 6))
  u, _, vt = np.linalg.svd(np.asarray(w))
  np.testing.assert_allclose(bjorck_orthonormalize(w, iters=40), u @ vt, atol=1e-4)


@pytest.mark.parametrize('shape', [(8, 8), (3, 9)])
def test_spectral_normalize_has_norm_at_most_one(shape):
  w = 5.0 * jax.random.normal(jax.random.key(2), shape)
  s = np.linalg.svd(np.asarray(spectral_normalize(w)), compute_uv=False)
  assert s.max() <= 1.0 + 1e-6 and s.max() == pytest.approx(1.0, abs=1e-6)
  ref = np.linalg.svd(np.asarray(w), compute_uv=False)
  np.testing.assert_allclose(s, ref / ref.max(), rtol=1e-5)


def init(constraint: str, **kw):
  cfg = lipschitz_mlp_config(width=8, depth=3, constraint=constraint, **kw)
  model = build_model(cfg, 4)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 6)))['params']
  return cfg, model, params


@pytest.mark.parametrize('constraint', ['bjorck', 'spectral'])
def test_constrained_mlp_is_one_lipschitz(constraint):
  cfg, model, params = init(constraint)
  # Perturb the raw kernels away from the orthogonal init: the constraint must still hold.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), params)
  kernels = effective_kernels(cfg, params)
  assert matrix_product_bound(kernels) <= 1.0 + 1e-4
  fn = lambda x: model.apply({'params': params}, x[None])[0]  # noqa: E731
  xs = jax.random.normal(jax.random.key(4), (100, 6))
  assert sampled_lower_bound(fn, xs) <= 1.0 + 1e-4


def test_effective_kernels_reproduce_the_model():
  cfg, model, params = init('bjorck', use_bias=False, activation='groupsort', group_size=4)
  kernels = effective_kernels(cfg, params)
  assert [k.shape for k in kernels] == [(8, 6), (8, 8), (4, 8)]
  x = jax.random.normal(jax.random.key(5), (7, 6))
  net = jax.vmap(network_fn(kernels, 'groupsort', group_size=4))
  np.testing.assert_allclose(model.apply({'params': params}, x), net(x), atol=1e-5)


@pytest.mark.parametrize('constraint', ['bjorck', 'spectral', 'none'])
def test_gradients_flow_through_the_constraint(constraint):
  _, model, params = init(constraint)
  x = jax.random.normal(jax.random.key(6), (5, 6))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x) ** 2)))(params)
  g = np.concatenate([np.ravel(v) for v in jax.tree.leaves(grads)])
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_classification_config_builds_the_model_on_digits():
  c = classification_config('digits', lipschitz_mlp_config(width=16, depth=2), steps=2)
  assert c.model.name == 'lipschitz_mlp' and c.model.constraint == 'none'
  model = build_model(c.model, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  assert model.apply(variables, jnp.zeros((2, 8, 8, 1))).shape == (2, 10)


@pytest.mark.parametrize(
  'overrides,match',
  [
    ({'width': 7}, 'multiples of the group size 2'),
    ({'activation': 'relu'}, 'model.activation'),
    ({'constraint': 'qr'}, 'model.constraint'),
    ({'depth': 1}, 'model.depth'),
  ],
)
def test_bad_config(overrides, match):
  with pytest.raises(ConfigError, match=match):
    build_model(lipschitz_mlp_config(**overrides), 10)
