"""Chinchilla approach-3 fit: recovers the law it was generated from (with noise), is stable
across grids of initialisations, derives the compute-optimal allocation, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlab.scaling import compute_optimal, fit_chinchilla, predict
from jaxlab.scaling.laws import INIT_GRID, fit_asymptote, isoflop_optima

TRUE = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}  # Hoffmann et al.'s fit
# Two disjoint subsets of the paper's 4,500 starts (122 each) keep the test fast.
GRID_A, GRID_B = INIT_GRID[::37], INIT_GRID[18::37]


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  n = np.exp(rng.uniform(np.log(1e6), np.log(1e10), 100))
  d = np.exp(rng.uniform(np.log(1e8), np.log(1e12), 100))
  loss, _ = predict(TRUE, n, d)
  return n, d, loss * np.exp(rng.normal(0.0, 0.005, loss.size))  # 0.5% multiplicative noise


@pytest.fixture(scope='module')
def fit(data):
  return fit_chinchilla(*data, init_grid=GRID_A)


def test_recovers_the_generating_law(fit):
  assert abs(fit['alpha'] - TRUE['alpha']) < 0.03
  assert abs(fit['beta'] - TRUE['beta']) < 0.03
  assert abs(fit['E'] - TRUE['E']) < 0.02
  assert np.sqrt(np.mean(fit['residuals'] ** 2)) < 0.01  # the noise is 0.005 in log space


def test_stable_across_initialisation_grids(data, fit):
  other = fit_chinchilla(*data, init_grid=GRID_B)
  for k in ('alpha', 'beta', 'E'):
    assert other[k] == pytest.approx(fit[k], rel=1e-3)


def test_compute_optimal_minimises_loss_on_the_isoflop_line(fit):
  C = 1e21
  n_opt, d_opt = compute_optimal(fit, C)
  assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-9)
  n = n_opt * np.exp(np.linspace(-1, 1, 41))  # along 6ND = C
  losses, _ = predict(fit, n, C / (6 * n))
  assert np.argmin(losses) == 20  # the middle one: N*(C)


@pytest.mark.parametrize(
  'n, d, loss, message',
  [
    ([1e6, np.nan, 1e8, 1e9, 1e10], [1e9] * 5, [3.0] * 5, 'N: expected finite'),
    ([1e6, 1e7, 1e8, 1e9, 1e10], [1e9, 0, 1e9, 1e9, 1e9], [3.0] * 5, 'D: expected positive'),
    ([1e6, 1e7, 1e8], [1e9] * 3, [3.0] * 3, 'at least 5 points'),
    ([1e6, 1e7, 1e8, 1e9, 1e10], [1e9] * 4, [3.0] * 5, 'one length'),
  ],
)
def test_bad_input_is_named(n, d, loss, message):
  with pytest.raises(ValueError, match=message):
    fit_chinchilla(n, d, loss)


def test_bootstrap_intervals_cover_the_fit(data):
  fit = fit_chinchilla(*data, init_grid=GRID_A, bootstrap=8, seed=1)
  for k in ('alpha', 'beta', 'E'):
    low, high = fit['ci'][k]
    # A percentile interval need not contain the estimate, but is centred near it.
    assert 0 < high - low < 0.1
    assert abs((low + high) / 2 - fit[k]) < high - low


def test_isoflop_optima_follow_the_closed_form():
  """Runs on IsoFLOP lines of the true law: the parabola vertices track `N*(C)` and the fitted
  exponents approach Hoffmann's `a = β/(α+β)`, `b = α/(α+β)`."""
  budgets, n, d = [], [], []
  for c in (1e18, 1e19, 1e20, 1e21):
    n_star, _ = compute_optimal(TRUE, c)
    for k in np.exp(np.linspace(-1.5, 1.5, 9)):
      budgets.append(c)
      n.append(n_star * k)
      d.append(c / (6 * n_star * k))
  loss, _ = predict(TRUE, np.array(n), np.array(d))
  out = isoflop_optima(n, d, loss, budgets)
  want_n, _ = compute_optimal(TRUE, out['C'])
  np.testing.assert_allclose(out['N_opt'], want_n, rtol=0.1)  # a parabola near the vertex
  alpha, beta = TRUE['alpha'], TRUE['beta']
  assert out['a'] == pytest.approx(beta / (alpha + beta), abs=0.02)
  assert out['b'] == pytest.approx(alpha / (alpha + beta), abs=0.02)


def test_asymptote_fit_recovers_the_power_law():
  x = np.array([1, 2, 4, 8, 16, 32], np.float64)
  loss = 0.8 / x**0.6 + 2.5
  fit = fit_asymptote(x, loss * (1 + 1e-4 * np.sin(np.arange(6))))
  assert fit['C'] == pytest.approx(2.5, abs=0.01)
  assert fit['B'] == pytest.approx(0.6, abs=0.03)
  assert fit['A'] == pytest.approx(0.8, abs=0.03)
  with pytest.raises(ValueError, match='at least 3'):
    fit_asymptote([1, 2], [3, 2])
