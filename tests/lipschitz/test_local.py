"""Local Lipschitz bounds: soundness, ordering, exactness of BaB, monotonicity in ε.

Reference values are computed here independently of the library: gradients of the Flax model
with `jax.jacrev`, and the exact maximum over activation patterns by enumeration plus a
feasibility LP (scipy).
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxlab.lipschitz import bab, baselines, crown, local
from jaxlab.lipschitz.graph import trace_chain
from jaxlab.nn import certifiable as C

METHODS = ('naive', 'ibp', 'recurjac', 'crown')
ACTS = {
  'relu': C.relu,
  'leaky': lambda z: C.leaky_relu(z, 0.1),
  'tanh': C.tanh,
  'sigmoid': C.sigmoid,
  'maxmin': C.maxmin,
  'groupsort': lambda z: C.groupsort(z, 4),
  'householder': lambda z: C.householder(z, jnp.array([0.6, 0.8])),
}


@pytest.fixture(autouse=True, scope='module')
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


class MLP(nn.Module):
  widths: tuple[int, ...]
  act: str

  @nn.compact
  def __call__(self, x):
    for w in self.widths[:-1]:
      x = ACTS[self.act](nn.Dense(w)(x))
    return nn.Dense(self.widths[-1])(x)


@functools.cache
def make(act, widths, seed, d_in=16):
  """(model, params, x0, chain); cached so tests share traces and compiled functions."""
  model = MLP(widths, act)
  x0 = jnp.full((d_in,), 0.5)
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), x0)
  return model, params, x0, trace_chain(lambda x: model.apply(params, x), x0)


@functools.cache
def _model_outputs_and_jacobians(model):
  def one(x, p):
    return model.apply(p, x), jax.jacrev(lambda a: model.apply(p, a))(x)

  return jax.jit(jax.vmap(one, in_axes=(0, None)))


def model_outputs(model, params, xs):
  """Outputs of the Flax model itself: (m, n_out)."""
  return np.asarray(_model_outputs_and_jacobians(model)(xs, params)[0])


def model_jacobians(model, params, xs):
  """Jacobians of the Flax model itself (not the traced chain): (m, n_out, d)."""
  return np.asarray(_model_outputs_and_jacobians(model)(xs, params)[1])


def uniform(key, xl, xu, m):
  return jnp.asarray(xl) + jax.random.uniform(key, (m, xl.size), jnp.float64) * (xu - xl)


CASES = [
  ('relu', (8, 8, 3), 0),
  ('relu', (16, 16, 16, 2), 1),
  ('leaky', (8, 8, 3), 2),
  ('tanh', (8, 8, 3), 3),
  ('sigmoid', (16, 3), 4),
  ('maxmin', (8, 8, 3), 5),
  ('groupsort', (8, 8, 3), 6),
  ('householder', (8, 8, 3), 7),
]


@pytest.mark.parametrize('act, widths, seed', CASES)
def test_bounds_are_sound_on_samples_and_pairs(act, widths, seed):
  model, params, x0, chain = make(act, widths, seed)
  for eps in (0.05, 0.3):
    xl, xu = local.input_box(x0, eps, (-1.0, 2.0))
    bounds = {
      m: np.asarray(local.chain_lipschitz(chain, xl, xu, m, alpha_steps=0)) for m in METHODS
    }
    xs = uniform(jax.random.PRNGKey(seed), xl, xu, 10_000)
    grads = np.abs(model_jacobians(model, params, xs))
    sampled = grads.sum(-1).max(0)
    for m, b in bounds.items():
      assert np.all(sampled <= b * (1 + 1e-9) + 1e-9), (m, eps, sampled, b)
    # Pairs: |f_j(x) − f_j(y)| ≤ L_j ‖x − y‖_∞.
    ys = uniform(jax.random.PRNGKey(seed + 100), xl, xu, 10_000)
    fx, fy = (model_outputs(model, params, a) for a in (xs, ys))
    dist = np.abs(np.asarray(xs - ys)).max(-1, keepdims=True)
    assert np.all(np.abs(fx - fy) <= bounds['crown'] * dist + 1e-9)
    # Ordering among the upper bounds.
    for loose, tight in zip(METHODS, METHODS[1:], strict=False):
      assert np.all(bounds[tight] <= bounds[loose] + 1e-12), (loose, tight)


def test_pgd_lower_bound_never_exceeds_the_bound():
  _, _, x0, chain = make(*CASES[0])
  xl, xu = local.input_box(x0, 0.3, (-1.0, 2.0))
  lower = baselines.sampled_lower_bound(
    chain, xl, xu, jax.random.PRNGKey(0), num_samples=500, pgd_steps=10, pgd_restarts=4
  )
  upper = local.chain_lipschitz(chain, xl, xu, 'crown', alpha_steps=0)
  assert np.all(np.asarray(lower) > 0)
  assert np.all(np.asarray(lower) <= np.asarray(upper) + 1e-9)


def test_full_ordering_with_bab_and_alpha_optimisation():
  _, _, x0, chain = make(*CASES[0])
  xl, xu = local.input_box(x0, 0.1, (-1.0, 2.0))
  b = {m: np.asarray(local.chain_lipschitz(chain, xl, xu, m)) for m in local.METHODS}
  plain = np.asarray(local.chain_lipschitz(chain, xl, xu, 'crown', alpha_steps=0))
  lower = np.asarray(
    baselines.sampled_lower_bound(
      chain, xl, xu, jax.random.PRNGKey(1), num_samples=2000, pgd_steps=0
    )
  )
  order = [lower, b['bab'], b['crown'], b['recurjac'], b['ibp'], b['naive']]
  for tight, loose in zip(order, order[1:], strict=False):
    assert np.all(tight <= loose + 1e-9)
  assert np.all(b['crown'] <= plain + 1e-12)
  assert np.any(b['crown'] < 0.9 * b['ibp'])  # CROWN-Jac is strictly tighter here


@pytest.mark.parametrize('case', [CASES[0], CASES[3], CASES[5]])
def test_tiny_eps_bounds_equal_the_gradient_norm(case):
  model, params, x0, chain = make(*case)
  xl, xu = local.input_box(x0, 1e-9, None)
  exact = np.abs(np.asarray(jax.jacrev(lambda x: model.apply(params, x))(x0))).sum(-1)
  for m in ('ibp', 'recurjac', 'crown'):
    np.testing.assert_allclose(
      local.chain_lipschitz(chain, xl, xu, m, alpha_steps=0), exact, atol=1e-6
    )
  assert np.all(np.asarray(local.chain_lipschitz(chain, xl, xu, 'naive')) > exact + 1e-3)


def _enumerate(chain, xl, xu):
  """Exact max over activation patterns of a ReLU chain: enumerate + LP feasibility."""
  ws, bs = chain.weights, chain.biases
  hl, hu, bounds = xl, xu, []
  for w, b in zip(ws[:-1], bs[:-1], strict=False):
    c, r = (hl + hu) / 2, (hu - hl) / 2
    zl, zu = w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r
    bounds.append((zl, zu))
    hl, hu = np.maximum(zl, 0), np.maximum(zu, 0)
  unstable = [np.nonzero((zl < 0) & (zu > 0))[0] for zl, zu in bounds]
  best = 0.0
  for bits in itertools.product([0.0, 1.0], repeat=sum(len(u) for u in unstable)):
    it = iter(bits)
    a, c, rows, rhs = np.eye(xl.size), np.zeros(xl.size), [], []
    for k, ((zl, _), u) in enumerate(zip(bounds, unstable, strict=False)):
      a, c = ws[k] @ a, ws[k] @ c + bs[k]
      d = (zl >= 0).astype(float)
      for i in u:
        d[i] = next(it)
        sign = 1 if d[i] else -1
        rows.append(-sign * a[i])
        rhs.append(sign * c[i])
      a, c = d[:, None] * a, d * c
    value = np.abs(ws[-1] @ a).sum(-1).max()
    if value <= best:
      continue
    if rows:
      res = optimize.linprog(
        np.zeros(xl.size),
        A_ub=np.array(rows),
        b_ub=np.array(rhs),
        bounds=list(zip(xl, xu, strict=False)),
      )
      if res.status != 0:
        continue
    best = value
  return best, sum(len(u) for u in unstable)


@pytest.mark.parametrize('seed', [0, 2])
def test_full_bab_equals_enumeration(seed):
  _, _, x0, chain = make('relu', (8, 8, 1), seed)
  xl, xu = (np.asarray(a) for a in local.input_box(x0, 0.05, (-1.0, 2.0)))
  np_chain = crown.to_numpy(chain)
  exact, n_unstable = _enumerate(np_chain, xl, xu)
  assert 3 <= n_unstable <= 12
  value, stats = bab.bab_output(np_chain, xl, xu, 0, timeout=60)
  assert stats['exact']
  np.testing.assert_allclose(value, exact, rtol=1e-5)
  assert exact < float(local.chain_lipschitz(chain, xl, xu, 'crown', alpha_steps=0)[0]) + 1e-9


@pytest.mark.parametrize('case', [CASES[0], CASES[3]])
def test_bounds_are_monotone_in_eps(case):
  _, _, x0, chain = make(*case)
  epss = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
  for m in ('ibp', 'recurjac', 'crown'):
    values = []
    for eps in epss:
      xl, xu = local.input_box(x0, eps, (-1.0, 2.0))
      values.append(np.asarray(local.chain_lipschitz(chain, xl, xu, m, alpha_steps=0)))
    assert np.all(np.diff(np.stack(values), axis=0) >= -1e-9), m


def test_l2_bounds_are_sound():
  model, params, x0, chain = make(*CASES[0])
  xl, xu = local.input_box(x0, 0.2, (-1.0, 2.0))
  xs = uniform(jax.random.PRNGKey(0), xl, xu, 5_000)
  grads = model_jacobians(model, params, xs)
  sampled = np.linalg.norm(grads, axis=-1).max(0)
  naive = np.asarray(local.chain_lipschitz(chain, xl, xu, 'naive', norm='2'))
  bound = np.asarray(local.chain_lipschitz(chain, xl, xu, 'crown', norm='2', alpha_steps=0))
  assert np.all(sampled <= bound + 1e-9) and np.all(bound <= naive + 1e-9)


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = C.relu(nn.Conv(2, (3, 3), strides=2)(x))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_public_api_on_a_cnn_with_a_batch_of_one():
  model, x0 = CNN(), jnp.full((1, 6, 6, 1), 0.5)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x0)
  bounds = local.local_lipschitz(model, params, x0, 0.1, box=(0.0, 1.0), alpha_steps=0)
  assert bounds.shape == (3,)
  xl, xu = local.input_box(x0, 0.1, (0.0, 1.0))
  xs = uniform(jax.random.PRNGKey(0), xl, xu, 2_000).reshape(-1, 1, 6, 6, 1)
  grads = model_jacobians(model, params, xs)
  sampled = np.abs(np.asarray(grads)).reshape(2_000, 3, -1).sum(-1).max(0)
  assert np.all(sampled <= np.asarray(bounds) + 1e-9)
  with pytest.raises(ValueError, match='method: expected one of'):
    local.local_lipschitz(model, params, x0, 0.1, method='lipmip')
  with pytest.raises(ValueError, match='eps: expected'):
    local.local_lipschitz(model, params, x0, -1.0)
