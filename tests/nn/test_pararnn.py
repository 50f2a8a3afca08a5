"""ParaRNN: parallel (Newton + associative scan) equals sequential, in values and gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxlab.core.errors import ConfigError
from jaxlab.nn.rnn import (
  GRUParams,
  LSTMParams,
  NewtonConfig,
  ParaGRU,
  ParaLSTM,
  dense_jacobian,
  diagonal_jacobian,
  gru_jacobian,
  gru_step,
  linear_recurrence,
  lstm_jacobian,
  lstm_step,
  newton_scan,
  newton_solve,
  sequential,
  sequential_linear_recurrence,
)


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def _python_loop(structure, a, b, y0):
  ys, y = [], y0
  for t in range(b.shape[0]):
    y = (a[t] * y if structure == 'diag' else np.einsum('...ij,...j->...i', a[t], y)) + b[t]
    ys.append(y)
  return np.stack(ys)


@pytest.mark.parametrize(
  'structure, a_shape, b_shape',
  [
    ('diag', (100, 4), (100, 4)),
    ('block', (100, 3, 2, 2), (100, 3, 2)),
    ('block', (100, 2, 3, 3), (100, 2, 3)),
    ('dense', (100, 4, 4), (100, 4)),
  ],
)
def test_scan_equals_python_loop(x64, structure, a_shape, b_shape):
  rng = np.random.default_rng(0)
  a = rng.normal(size=a_shape) / 3
  b, y0 = rng.normal(size=b_shape), rng.normal(size=b_shape[1:])
  want = _python_loop(structure, a, b, y0)
  np.testing.assert_allclose(linear_recurrence(structure, jnp.array(a), jnp.array(b), y0), want)
  np.testing.assert_allclose(sequential_linear_recurrence(structure, a, b, y0), want)
  # reverse: y_t = A_t y_{t+1} + b_t == the forward recurrence on the flipped sequence
  rev = linear_recurrence(structure, jnp.array(a), jnp.array(b), y0, reverse=True)
  np.testing.assert_allclose(rev, _python_loop(structure, a[::-1], b[::-1], y0)[::-1])


def test_scan_shape_errors_say_what_was_expected():
  with pytest.raises(ValueError, match=r'expected A of shape \(5, 3, 3\)'):
    linear_recurrence('dense', jnp.zeros((5, 3)), jnp.zeros((5, 3)), jnp.zeros(3))


def _gru(params, h, x):
  """A standard GRU (dense recurrent weights): its Jacobian is dense."""
  wz, wr, wh, uz, ur, uh = params
  z = jax.nn.sigmoid(wz @ h + uz @ x)
  r = jax.nn.sigmoid(wr @ h + ur @ x)
  return z * jnp.tanh(wh @ (r * h) + uh @ x) + (1 - z) * h


def _gru_problem(dtype, d=5, t=100, nx=3, scale=0.5, seed=0):
  rng = np.random.default_rng(seed)
  params = tuple(jnp.array(rng.normal(size=s) * scale, dtype) for s in [(d, d)] * 3 + [(d, nx)] * 3)
  xs = jnp.array(rng.normal(size=(t, nx)), dtype)
  h0 = jnp.array(rng.normal(size=d) * 0.1, dtype)
  return params, xs, h0


def test_deer_on_a_dense_gru_matches_lax_scan(x64):
  params, xs, h0 = _gru_problem(jnp.float64)
  config = NewtonConfig(iterations=100, tol=(1e-10, 1e-8), init='h0')
  h, info = newton_solve(_gru, dense_jacobian(_gru), 'dense', params, xs, h0, config)
  np.testing.assert_allclose(h, sequential(_gru, params, xs, h0), atol=1e-6)
  assert bool(info.converged) and int(info.iterations) < 20


def test_k_iterations_make_the_first_k_states_exact(x64):
  params, xs, h0 = _gru_problem(jnp.float64, scale=1.5)  # a hard, far-from-converged case
  want = sequential(_gru, params, xs, h0)
  guess = jnp.array(np.random.default_rng(1).normal(size=want.shape) * 3)
  for k in (1, 4, 9):
    h, _ = newton_solve(
      _gru, dense_jacobian(_gru), 'dense', params, xs, h0, NewtonConfig(iterations=k), guess=guess
    )
    np.testing.assert_allclose(h[:k], want[:k], atol=1e-8)


def test_quasi_deer_converges_to_the_same_states(x64):
  params, xs, h0 = _gru_problem(jnp.float64)
  want = sequential(_gru, params, xs, h0)
  config = NewtonConfig(iterations=200, tol=(1e-10, 1e-8))
  exact, info_exact = newton_solve(_gru, dense_jacobian(_gru), 'dense', params, xs, h0, config)
  quasi, info_quasi = newton_solve(_gru, diagonal_jacobian(_gru), 'diag', params, xs, h0, config)
  np.testing.assert_allclose(quasi, want, atol=1e-7)
  assert bool(info_quasi.converged)
  assert int(info_quasi.iterations) >= int(info_exact.iterations)  # quasi-Newton: more steps


def _gru_cell(d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return GRUParams(a=jnp.array(rng.uniform(-0.5, 0.5, (3, d)), dtype))


def _lstm_cell(d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return LSTMParams(
    a=jnp.array(rng.uniform(-0.5, 0.5, (3, d)), dtype),
    p=jnp.array(rng.uniform(-0.5, 0.5, (2, d)), dtype),
  )


def test_analytic_jacobians_equal_jacfwd_blocks():
  d = 6
  rng = np.random.default_rng(0)
  u = jnp.array(rng.normal(size=(3, d)), jnp.float32)
  h = jnp.array(rng.normal(size=d), jnp.float32)
  full = jax.jacfwd(gru_step, argnums=1)(_gru_cell(d), h, u)  # [D, D]
  np.testing.assert_allclose(gru_jacobian(_gru_cell(d), h, u), jnp.diagonal(full), atol=1e-6)
  assert np.all(np.asarray(full)[~np.eye(d, dtype=bool)] == 0.0)

  s = jnp.array(rng.normal(size=(d, 2)), jnp.float32)
  full = jax.jacfwd(lstm_step, argnums=1)(_lstm_cell(d), s, u)  # [D, 2, D, 2]
  blocks = jnp.stack([full[i, :, i, :] for i in range(d)])
  np.testing.assert_allclose(lstm_jacobian(_lstm_cell(d), s, u), blocks, atol=1e-6)
  off = np.asarray(full).copy()
  for i in range(d):
    off[i, :, i, :] = 0.0
  assert np.all(off == 0.0)


@pytest.mark.parametrize('layer', [ParaGRU, ParaLSTM])
def test_layers_parallel_equals_sequential_at_t2048(layer):
  x = jax.random.normal(jax.random.key(0), (2, 2048, 8))
  model = layer(16)
  variables = model.init(jax.random.key(1), x)
  parallel, state = model.apply(variables, x, mutable=['intermediates'])
  reference = layer(16, mode='sequential').apply(variables, x)
  assert parallel.shape == (2, 2048, 16)
  assert float(jnp.max(jnp.abs(parallel - reference))) <= 1e-4
  assert float(state['intermediates']['newton_residual'][0]) <= 1e-4
  assert int(state['intermediates']['newton_iterations'][0]) == 3


def _grad_case(cell, dtype):
  d, t = 4, 50
  rng = np.random.default_rng(3)
  if cell == 'gru':
    params, step, jac, structure = _gru_cell(d, dtype=dtype), gru_step, gru_jacobian, 'diag'
    h0 = jnp.array(rng.normal(size=d) * 0.5, dtype)
  else:
    params, step, jac, structure = _lstm_cell(d, dtype=dtype), lstm_step, lstm_jacobian, 'block'
    h0 = jnp.array(rng.normal(size=(d, 2)) * 0.5, dtype)
  us = jnp.array(rng.normal(size=(t, 3, d)), dtype)
  weights = jnp.array(rng.normal(size=(t, *h0.shape)), dtype)
  return params, step, jac, structure, us, h0, weights


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_implicit_gradients_equal_bptt_f64(x64, cell):
  params, step, jac, structure, us, h0, w = _grad_case(cell, jnp.float64)
  config = NewtonConfig(iterations=50, tol=(1e-12, 1e-10))

  def parallel_loss(params, us, h0):
    return jnp.sum(w * jnp.sin(newton_scan(step, jac, structure, params, us, h0, config)[0]))

  def sequential_loss(params, us, h0):
    return jnp.sum(w * jnp.sin(sequential(step, params, us, h0)))

  got = jax.grad(parallel_loss, argnums=(0, 1, 2))(params, us, h0)
  want = jax.grad(sequential_loss, argnums=(0, 1, 2))(params, us, h0)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-12)
  check_grads(parallel_loss, (params, us, h0), order=1, modes=['rev'], atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_implicit_gradients_equal_bptt_f32(cell):
  params, step, jac, structure, us, h0, w = _grad_case(cell, jnp.float32)

  def loss(solve):
    return lambda params, us, h0: jnp.sum(w * jnp.sin(solve(params, us, h0)))

  got = jax.grad(
    loss(lambda p, u, h: newton_scan(step, jac, structure, p, u, h)[0]), argnums=(0, 1, 2)
  )(params, us, h0)
  want = jax.grad(loss(lambda p, u, h: sequential(step, p, u, h)), argnums=(0, 1, 2))(
    params, us, h0
  )
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('layer', [ParaGRU, ParaLSTM])
def test_layer_gradients_parallel_equal_sequential(layer):
  x = jax.random.normal(jax.random.key(0), (2, 64, 8))
  variables = layer(8).init(jax.random.key(1), x)

  def loss(mode):
    return lambda v, x: jnp.sum(jnp.tanh(layer(8, mode=mode).apply(v, x)) ** 2)

  got = jax.grad(loss('parallel'), argnums=(0, 1))(variables, x)
  want = jax.grad(loss('sequential'), argnums=(0, 1))(variables, x)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)


def test_fallback_returns_the_sequential_solution_when_newton_has_not_converged(x64):
  params, xs, h0 = _gru_problem(jnp.float64, scale=1.5)
  config = NewtonConfig(iterations=1, fallback=True, fallback_tol=1e-9)
  h, info = newton_solve(_gru, dense_jacobian(_gru), 'dense', params, xs, h0, config)
  assert bool(info.used_fallback) and not bool(info.converged)
  np.testing.assert_allclose(h, sequential(_gru, params, xs, h0))


def test_jit_vmap_and_bad_config():
  x = jax.random.normal(jax.random.key(0), (3, 32, 4))
  model = ParaGRU(4)
  variables = model.init(jax.random.key(1), x)
  jitted = jax.jit(model.apply)(variables, x)
  per_row = jax.vmap(lambda row: model.apply(variables, row[None])[0])(x)
  np.testing.assert_allclose(jitted, per_row, atol=1e-6)
  with pytest.raises(ConfigError, match='mode'):
    ParaGRU(4, mode='fast').init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match='features: expected a multiple of heads=2, got 5'):
    ParaGRU(5).init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match='omega'):
    NewtonConfig(omega=1.5)


@pytest.mark.parametrize('mixer', ['paragru', 'paralstm'])
def test_recurrent_mixer_in_the_lm_parallel_equals_sequential(mixer):
  from jaxlab.nn import TransformerConfig, TransformerLM

  tokens = jax.random.randint(jax.random.key(0), (2, 48), 0, 259)
  cfg = TransformerConfig(vocab_size=259, width=16, depth=2, heads=2, mlp_dim=32, mixer=mixer)
  variables = TransformerLM(cfg).init(jax.random.key(1), tokens)
  assert 'cell' in variables['params']['block_0'][mixer]
  seq = TransformerLM(TransformerConfig(**{**cfg.__dict__, 'rnn_mode': 'sequential'}))

  def loss(model):
    return lambda v: jnp.mean(jax.nn.logsumexp(model.apply(v, tokens), -1))

  np.testing.assert_allclose(loss(TransformerLM(cfg))(variables), loss(seq)(variables), rtol=1e-5)
  got = jax.grad(loss(TransformerLM(cfg)))(variables)
  want = jax.grad(loss(seq))(variables)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-6)


def test_trust_region_step_is_the_least_squares_solution(x64):
  from jaxlab.nn.rnn.trust_region import trust_region_step

  rng = np.random.default_rng(0)
  t, d, lam = 40, 3, 0.7
  a, b, guess = (rng.normal(size=(t, d)) for _ in range(3))
  h0 = rng.normal(size=d)
  got = trust_region_step(jnp.array(a), jnp.array(b), jnp.array(h0), jnp.array(guess), lam)
  for i in range(d):  # rows: h_t − a_t h_{t−1} = b_t, and sqrt(λ) h_t = sqrt(λ) guess_t
    m, y = np.zeros((2 * t, t)), np.zeros(2 * t)
    for s in range(t):
      m[s, s], y[s] = 1.0, b[s, i] + (a[0, i] * h0[i] if s == 0 else 0.0)
      if s:
        m[s, s - 1] = -a[s, i]
      m[t + s, s], y[t + s] = np.sqrt(lam), np.sqrt(lam) * guess[s, i]
    np.testing.assert_allclose(got[:, i], np.linalg.lstsq(m, y, rcond=None)[0], atol=1e-12)


def test_elk_converges_to_the_deer_solution_and_recovers_deer_as_lambda_vanishes(x64):
  params, xs, h0 = _gru_problem(jnp.float64)
  jac = diagonal_jacobian(_gru)
  want = sequential(_gru, params, xs, h0)
  elk, info = newton_solve(
    _gru,
    jac,
    'diag',
    params,
    xs,
    h0,
    NewtonConfig(iterations=300, tol=(1e-10, 1e-8), trust_region=0.1),
  )
  assert bool(info.converged)
  np.testing.assert_allclose(elk, want, atol=1e-8)
  three = NewtonConfig(iterations=3)
  quasi, _ = newton_solve(_gru, jac, 'diag', params, xs, h0, three)
  tiny, _ = newton_solve(
    _gru, jac, 'diag', params, xs, h0, dataclasses.replace(three, trust_region=1e-12)
  )
  np.testing.assert_allclose(tiny, quasi, atol=1e-8)


def test_elk_stays_bounded_where_undamped_newton_blows_up(x64):
  """tanh(3h + x) from a zero guess: Jacobians ~3 multiply to 3^T along the sequence."""

  def step(w, h, x):
    return jnp.tanh(w * h + x)

  def jac(w, h, x):
    return w * (1.0 - jnp.tanh(w * h + x) ** 2)

  xs = jnp.array(np.random.default_rng(0).normal(size=(2000, 2)) * 0.3)
  w, h0 = jnp.array([3.0, 2.5]), jnp.zeros(2)
  newton, _ = newton_solve(step, jac, 'diag', w, xs, h0, NewtonConfig(iterations=1, init='zeros'))
  assert float(jnp.max(jnp.abs(newton))) >= 1e7  # hit the ±1e8 clip: inf without it
  elk, _ = newton_solve(
    step, jac, 'diag', w, xs, h0, NewtonConfig(iterations=1, init='zeros', trust_region=1.0)
  )
  assert bool(jnp.all(jnp.isfinite(elk))) and float(jnp.max(jnp.abs(elk))) <= 1.0
  with pytest.raises(ConfigError, match='trust_region'):
    newton_solve(step, dense_jacobian(step), 'dense', w, xs, h0, NewtonConfig(trust_region=1.0))
