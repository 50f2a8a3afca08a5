"""LipSDP and the new MaxMin/GroupSort/Householder QCs: sound (above every sampled slope), below
the matrix product, exact where the answer is known, equal to an independent naive SDP, and the
same with either solver."""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.lipschitz.sdp import (
  lipsdp,
  lipsdp_info,
  matrix_product_bound,
  network_fn,
  sampled_lower_bound,
)


def random_kernels(shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [
    rng.normal(size=(shape[i + 1], shape[i])) / np.sqrt(shape[i]) for i in range(len(shape) - 1)
  ]


def pair_ratio(fn, n: int, norm: str, seed: int, pairs: int = 10_000) -> float:
  """max over random pairs of ||f(x) - f(y)|| / ||x - y|| (pairs at several distances)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(pairs, n))
  y = x + rng.normal(size=(pairs, n)) * np.exp(rng.uniform(-4, 1, size=(pairs, 1)))
  f = jax.vmap(fn)
  df = np.asarray(f(jnp.asarray(x, jnp.float32)) - f(jnp.asarray(y, jnp.float32)), np.float64)
  o = None if norm == 'l2' else np.inf
  return float(np.max(np.linalg.norm(df, ord=o, axis=1) / np.linalg.norm(x - y, ord=o, axis=1)))


def sampled(fn, n: int, norm: str, seed: int, samples: int = 2000) -> float:
  xs = np.random.default_rng(seed).normal(size=(samples, n)).astype(np.float32)
  return sampled_lower_bound(fn, jnp.asarray(xs), norm=norm)


def test_single_maxmin_layer_new_qc_recovers_one_residual_relu_does_not():
  for n in (2, 6):
    eye = [np.eye(n), np.eye(n)]
    assert lipsdp(eye, activation='maxmin', method='qc') == pytest.approx(1.0, abs=1e-4)
    # l_inf: the QC is an l2 statement, and with T = lam I + mu 11^T <= diag(tau) the last LMI
    # needs rho >= t + 1/(2t) for the pair's shared tau = t, minimised at t = 1/sqrt(2): the
    # SDP's optimum is sqrt(2), while the true l_inf constant (and the matrix product) is 1.
    assert lipsdp(eye, activation='maxmin', norm='linf') == pytest.approx(np.sqrt(2), abs=1e-4)
    # The residual rewrite gives sqrt(2) for one pair: well above the true constant 1.
    assert lipsdp(eye, activation='maxmin', method='residual_relu') > 1.1


NETS = [
  ('maxmin', (6, 8, 4), 0),
  ('maxmin', (10, 8, 8, 3), 1),
  ('maxmin', (5, 6, 6, 6, 2), 2),
  ('groupsort', (6, 8, 8, 3), 3),
  ('relu', (6, 8, 8, 3), 4),
]


@pytest.mark.parametrize('activation,shape,seed', NETS)
@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_bound_is_sound_and_below_the_matrix_product(activation, shape, seed, norm):
  ws = random_kernels(shape, seed)
  g = 4 if activation == 'groupsort' else 2
  fn = network_fn(ws, activation, group_size=g)
  bound = lipsdp(ws, activation=activation, norm=norm, group_size=g)
  lower = max(pair_ratio(fn, shape[0], norm, seed), sampled(fn, shape[0], norm, seed))
  assert lower <= bound * (1 + 1e-5)
  assert bound <= matrix_product_bound(ws, norm=norm) * (1 + 1e-6)
  if activation != 'relu':
    # Dropping the free mu restricts the multipliers: never a smaller bound.
    no_mu = lipsdp(ws, activation=activation, norm=norm, group_size=g, mu_free=False)
    assert no_mu >= bound * (1 - 1e-6)
  if activation == 'maxmin':
    residual = lipsdp(ws, activation='maxmin', norm=norm, method='residual_relu')
    assert lower <= residual * (1 + 1e-5)


def test_fazlyab_relu_two_layers():
  for seed in range(3):
    w0, w1 = random_kernels((7, 12, 4), seed)
    root_rho = lipsdp([w0, w1], activation='relu')
    lower = sampled(network_fn([w0, w1], 'relu'), 7, 'l2', seed)
    assert lower <= root_rho <= np.linalg.norm(w1, 2) * np.linalg.norm(w0, 2) * (1 + 1e-6)


@pytest.mark.parametrize(
  'activation,method,norm',
  [('maxmin', 'qc', 'l2'), ('maxmin', 'qc', 'linf'), ('maxmin', 'residual_relu', 'l2')],
)
def test_clarabel_and_scs_agree(activation, method, norm):
  ws = random_kernels((6, 8, 8, 3), 5)
  kw = {'activation': activation, 'method': method, 'norm': norm}
  a = lipsdp_info(ws, solver='clarabel', **kw)
  b = lipsdp_info(ws, solver='scs', **kw)
  assert (a.solver, b.solver) == ('CLARABEL', 'SCS')
  assert b.bound == pytest.approx(a.bound, rel=1e-3)


def naive_maxmin_sdp(w0: np.ndarray, w1: np.ndarray) -> float:
  """min rho s.t. rho I - W0^T T W0 >= 0, T - W1^T W1 >= 0, T = blkdiag(lam_j I + mu_j 11^T),
  written entry by entry over the full input dimension (no QR, no vectorised basis)."""
  n = w0.shape[0]
  lam, mu, rho = cp.Variable(n // 2, nonneg=True), cp.Variable(n // 2), cp.Variable()
  t = sum(
    lam[j] * np.diag(np.isin(np.arange(n), [2 * j, 2 * j + 1]).astype(float))
    + mu[j] * np.outer(*(2 * [np.isin(np.arange(n), [2 * j, 2 * j + 1]).astype(float)]))
    for j in range(n // 2)
  )
  first = rho * np.eye(w0.shape[1]) - w0.T @ t @ w0
  last = t - w1.T @ w1
  cons = [(first + first.T) / 2 >> 0, (last + last.T) / 2 >> 0]
  cp.Problem(cp.Minimize(rho), cons).solve(solver='CLARABEL')
  return float(np.sqrt(rho.value))


def test_equals_a_naive_sdp_on_a_wide_input():
  # 20 inputs, 6 hidden: the thin-QR reduction turns the 20x20 LMI into a 6x6 one, exactly.
  w0, w1 = random_kernels((20, 6, 3), 7)
  info = lipsdp_info([w0, w1], activation='maxmin')
  assert info.lmi_sizes == (6, 6)
  assert info.bound == pytest.approx(naive_maxmin_sdp(w0, w1), rel=1e-5)


def test_householder_with_the_maxmin_vector_is_maxmin():
  # v = (1, -1)/sqrt(2): z if a > b else (b, a), i.e. (max, min).
  v = np.array([1.0, -1.0]) / np.sqrt(2.0)
  ws = random_kernels((6, 8, 8, 3), 8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)), jnp.float32)
  hh, mm = network_fn(ws, 'householder', householder_v=v), network_fn(ws, 'maxmin')
  np.testing.assert_allclose(jax.vmap(hh)(x), jax.vmap(mm)(x), rtol=1e-5, atol=1e-5)
  for norm in ('l2', 'linf'):
    a = lipsdp(ws, activation='householder', householder_v=v, norm=norm)
    assert a == pytest.approx(lipsdp(ws, activation='maxmin', norm=norm), rel=1e-5)


def test_householder_general_vector_is_sound():
  v = np.array([0.3, -1.0, 0.5])
  ws = random_kernels((6, 9, 9, 2), 9)
  fn = network_fn(ws, 'householder', householder_v=v)
  bound = lipsdp(ws, activation='householder', householder_v=v)
  assert max(pair_ratio(fn, 6, 'l2', 9), sampled(fn, 6, 'l2', 9)) <= bound * (1 + 1e-5)
  assert bound <= matrix_product_bound(ws) * (1 + 1e-6)


def test_output_row_and_matrix_product_rows():
  ws = random_kernels((6, 8, 3), 10)
  info = lipsdp_info(ws, activation='maxmin', norm='linf')
  assert len(info.row_bounds) == 3 and info.bound == max(info.row_bounds)
  one = lipsdp(ws, activation='maxmin', norm='linf', output_row=1)
  assert one == pytest.approx(info.row_bounds[1], rel=1e-6)
  rows = [matrix_product_bound(ws, norm='linf', output_row=r) for r in range(3)]
  assert max(rows) == pytest.approx(matrix_product_bound(ws, norm='linf'))


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'kernels': [np.eye(3)]}, 'kernels: expected >= 2'),
    ({'kernels': [np.eye(3), np.eye(2)]}, 'kernel 1 is'),
    ({'kernels': [np.eye(3), np.eye(3)], 'activation': 'maxmin'}, 'group_size'),
    ({'kernels': [np.eye(2), np.eye(2)], 'activation': 'tanh'}, 'activation: expected'),
    ({'kernels': [np.eye(2), np.eye(2)], 'norm': 'l1'}, 'norm: expected'),
    ({'kernels': [np.eye(2), np.eye(2)], 'method': 'residual_relu'}, 'MaxMin network'),
    ({'kernels': [np.eye(2), np.eye(2)], 'solver': 'mosek'}, 'solver: expected'),
    ({'kernels': [np.eye(2), np.eye(2)], 'norm': 'linf', 'output_row': 2}, 'output_row'),
    ({'kernels': [np.eye(2), np.eye(2)], 'activation': 'householder'}, 'householder_v'),
  ],
)
def test_bad_input_says_what_was_expected(kwargs, match):
  kernels = kwargs.pop('kernels')
  with pytest.raises(ValueError, match=match):
    lipsdp(kernels, **kwargs)


def test_benchmark_smoke(capsys):
  import importlib.util  # noqa: PLC0415

  from tests.conftest import REPO  # noqa: PLC0415

  spec = importlib.util.spec_from_file_location('lipsdp_solve', REPO / 'benchmarks/lipsdp_solve.py')
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  args = ['--input', '6', '--widths', '4', '--depths', '2,3', '--outputs', '3']
  assert bench.main(args) == 0
  rows = [line for line in capsys.readouterr().out.splitlines() if line[0].isdigit()]
  assert len(rows) == 4  # 2 depths x 2 solvers
  for line in rows:
    numbers = [float(x) for cell in line.split('|')[1:] for x in cell.split(',')]
    assert len(numbers) == 7 and all(np.isfinite(numbers)) and min(numbers) > 0
    mp, qc, res = numbers[0], numbers[1], numbers[3]
    assert qc <= mp * (1 + 1e-6) and numbers[6] == pytest.approx(qc / res, rel=1e-3)
