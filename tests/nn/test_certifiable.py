"""Certifiable activations: their values, their custom JVPs, and their slope rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn import certifiable as C

KEY = jax.random.PRNGKey(0)


def test_maxmin_pairs_and_equals_groupsort2():
  x = jnp.array([1.0, 2.0, 5.0, 3.0, -1.0, -1.0])
  np.testing.assert_array_equal(C.maxmin(x), [2.0, 1.0, 5.0, 3.0, -1.0, -1.0])
  y = jax.random.normal(KEY, (4, 10))
  np.testing.assert_array_equal(C.maxmin(y), C.groupsort(y, 2))


def test_groupsort_sorts_each_group_descending():
  x = jax.random.normal(KEY, (3, 12))
  out = np.asarray(C.groupsort(x, 4)).reshape(3, 3, 4)
  ref = -np.sort(-np.asarray(x).reshape(3, 3, 4), axis=-1)
  np.testing.assert_array_equal(out, ref)
  with pytest.raises(ValueError, match='group size 5'):
    C.groupsort(x, 5)


def test_householder_matches_formula_and_rejects_bad_v():
  v = jnp.array([0.6, 0.8])
  x = jax.random.normal(KEY, (5, 6))
  out = np.asarray(C.householder(x, v)).reshape(5, 3, 2)
  z = np.asarray(x).reshape(5, 3, 2)
  reflect = np.eye(2) - 2 * np.outer(v, v)
  ref = np.where((z @ np.asarray(v))[..., None] > 0, z, z @ reflect.T)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='v: expected'):
    C.householder(x, jnp.ones(4))


def test_jvps_are_the_derivatives():
  x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
  ones = jnp.ones_like(x)
  cases = {
    C.relu: (x > 0).astype(x.dtype),
    (lambda a: C.leaky_relu(a, 0.1)): jnp.where(x > 0, 1.0, 0.1),
    C.tanh: 1 - jnp.tanh(x) ** 2,
    C.sigmoid: jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x)),
  }
  for fn, deriv in cases.items():
    tangent = jax.jit(lambda a, fn=fn: jax.jvp(fn, (a,), (ones,))[1])(x)
    np.testing.assert_allclose(tangent, deriv, rtol=1e-6)
  # Gradients flow into a Householder vector (it is a trained parameter).
  g = jax.grad(lambda v: C.householder(jnp.array([1.0, -3.0]), v).sum())(jnp.array([0.6, 0.8]))
  assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


@pytest.mark.parametrize(
  'name, params',
  [
    ('relu', ()),
    ('leaky_relu', (0.1,)),
    ('tanh', ()),
    ('sigmoid', ()),
    ('maxmin', ()),
    ('householder', (np.array([0.6, 0.8]),)),
  ],
)
def test_builtin_slope_rules_contain_every_sampled_derivative(name, params):
  C.check_slope_rule(name, KEY, params=params, num_intervals=32, num_samples=16)


def test_groupsort_slope_rule_contains_sampled_jacobians():
  C.groupsort(jnp.zeros(4), 4)  # registers 'groupsort4'
  C.check_slope_rule('groupsort4', KEY, num_intervals=32, num_samples=16)


def test_slope_rules_are_exact_where_the_slope_is_fixed():
  lb, ub = jnp.array([0.5, -3.0]), jnp.array([2.0, -1.0])
  np.testing.assert_array_equal(C.CERTIFIABLE['relu'].slope(lb, ub), ([1.0, 0.0], [1.0, 0.0]))
  # A separated MaxMin pair has one permutation: the identity or the swap.
  jlo, jhi = C.CERTIFIABLE['maxmin'].slope(jnp.array([2.0, 0.0]), jnp.array([3.0, 1.0]))
  np.testing.assert_array_equal(jlo[0], np.eye(2))
  np.testing.assert_array_equal(jhi[0], np.eye(2))
  jlo, jhi = C.CERTIFIABLE['maxmin'].slope(jnp.array([0.0, 2.0]), jnp.array([1.0, 3.0]))
  np.testing.assert_array_equal(jlo[0], [[0, 1], [1, 0]])


def test_checker_catches_a_too_narrow_rule():
  name = 'test_softsign_narrow'

  def softsign(x):
    return x / (1 + jnp.abs(x))

  try:
    # True derivative 1 / (1 + |x|)^2 is in (0, 1]; claiming [0, 0.5] is wrong near 0.
    C.certifiable(name, slope=lambda lb, ub: (0 * lb, 0 * ub + 0.5))(softsign)
    with pytest.raises(C.SlopeRuleError, match=name):
      C.check_slope_rule(name, KEY, num_intervals=16, num_samples=8)
  finally:
    C.CERTIFIABLE.pop(name, None)


def test_registering_a_name_twice_is_an_error():
  with pytest.raises(ValueError, match='already registered'):
    C.certifiable('relu', slope=lambda lb, ub: (lb, ub))(jnp.abs)
