"""Scaling-law fits: Chinchilla approach 3 recovers the law it was generated from (with noise), is
stable across grids of initialisations, derives the compute-optimal allocation, rejects bad input;
`compare_laws` picks the parameter measure the data follow and its leave-one-out equals a refit;
IsoFLOP and asymptote fits return residuals and bootstrap intervals covering the truth; the
data-efficiency multiplier inverts the baseline's data law."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlab.scaling import (
  compare_laws,
  compute_optimal,
  data_efficiency_multiplier,
  fit_asymptote,
  fit_chinchilla,
  frontier_loss,
  isoflop_optima,
  predict,
  predict_asymptote,
  runs_from_rows,
)
from jaxlab.scaling.laws import INIT_GRID, _objective

TRUE = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}  # Hoffmann et al.'s fit
# Two disjoint subsets of the paper's 4,500 starts (122 each) keep the test fast.
GRID_A, GRID_B = INIT_GRID[::37], INIT_GRID[18::37]
# 16 runs x (7 + 1) leave-one-out starts fill the same padded program as the 122-start fit.
LOO_KWARGS = {'init_grid': GRID_A, 'loo_starts': 7}


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


def test_weighted_objective_equals_the_resampled_one():
  """Bootstrap and leave-one-out refits weight points instead of resampling them: a point
  drawn k times has weight k, a left-out point 0."""
  rng = np.random.default_rng(3)
  n, d = np.geomspace(1e6, 1e9, 7), np.geomspace(1e9, 1e11, 7)
  loss, _ = predict(TRUE, n, d)
  idx = rng.integers(0, 7, 7)
  theta = np.array([0.3, 0.3, 0.5, 6.0, 6.0])
  logs = [np.log(x) for x in (n, d, loss)]
  with jax.enable_x64(True):
    weighted = _objective(theta, np.bincount(idx, minlength=7), *logs)
    resampled = _objective(theta, np.ones(7), *(x[idx] for x in logs))
  assert float(weighted) == pytest.approx(float(resampled), rel=1e-12)


def _journey_runs(law_in: str, seed: int):
  """Dense and pruned runs (sparsity s reached by a linear ramp from 25% to 75% of training, so
  the average density is 1 − s/2): loss generated from the law in `N̄` or in `N_final`."""
  rng = np.random.default_rng(seed)
  dense = np.repeat(np.geomspace(1e6, 1e8, 4), 4)
  sparsity = np.tile([0.0, 0.5, 0.75, 0.9], 4)
  tokens = 20 * dense * np.exp(rng.uniform(-1, 1, dense.size))
  n_final, n_bar = dense * (1 - sparsity), dense * (1 - sparsity / 2)
  loss, _ = predict(TRUE, n_bar if law_in == 'average' else n_final, tokens)
  loss = loss * np.exp(rng.normal(0.0, 0.005, loss.size))
  return loss, tokens, {'final': n_final, 'average': n_bar}


@pytest.mark.parametrize('law_in', ['average', 'final'])
def test_compare_laws_picks_the_measure_the_data_follow(law_in):
  loss, tokens, candidates = _journey_runs(law_in, seed=4)
  out = compare_laws(loss, tokens, candidates, **LOO_KWARGS)
  assert out['best'] == law_in
  other = 'final' if law_in == 'average' else 'average'
  assert out[law_in]['loo_rmse'] < 0.5 * out[other]['loo_rmse']
  assert out[law_in]['rmse'] < 0.01  # the noise is 0.005 in log space
  for name in candidates:
    r = out[name]
    np.testing.assert_array_equal(r['residuals'], r['fit']['residuals'])
    assert r['rmse'] == pytest.approx(np.sqrt(np.mean(r['residuals'] ** 2)))
    assert r['loo_rmse'] >= r['rmse']  # out-of-sample error is no smaller


def test_compare_laws_leave_one_out_equals_a_refit_without_the_point():
  loss, tokens, candidates = _journey_runs('average', seed=5)
  out = compare_laws(loss, tokens, {'average': candidates['average']}, **LOO_KWARGS)
  i = 3
  keep = np.arange(loss.size) != i
  refit = fit_chinchilla(candidates['average'][keep], tokens[keep], loss[keep], init_grid=GRID_A)
  _, log_pred = predict(refit, candidates['average'][i], tokens[i])
  assert out['average']['loo_residuals'][i] == pytest.approx(log_pred - np.log(loss[i]), abs=1e-4)


def test_compare_laws_rejects_bad_candidates():
  loss, tokens, candidates = _journey_runs('average', seed=6)
  with pytest.raises(ValueError, match='reserved'):
    compare_laws(loss, tokens, {'best': candidates['final']})
  with pytest.raises(ValueError, match='non-empty mapping'):
    compare_laws(loss, tokens, {})
  with pytest.raises(ValueError, match="candidate 'short'.*one length"):
    compare_laws(loss, tokens, {'short': candidates['final'][:-1]})
  with pytest.raises(ValueError, match='at least 6 runs'):
    compare_laws(loss[:5], tokens[:5], {'final': candidates['final'][:5]})


def test_frontier_loss_is_the_least_loss_on_each_isoflop_line():
  for C in (1e19, 1e22):
    n = np.geomspace(1e7, 1e12, 2001)
    losses, _ = predict(TRUE, n, C / (6 * n))
    assert frontier_loss(TRUE, C) == pytest.approx(losses.min(), rel=1e-6)
    assert frontier_loss(TRUE, C) <= losses.min()


def test_asymptote_residuals_and_bootstrap_interval_cover_the_truth():
  rng = np.random.default_rng(7)
  x = np.geomspace(1, 256, 9)
  clean = 0.8 / x**0.6 + 2.5
  noisy = clean + rng.normal(0.0, 0.01, x.size)
  fit = fit_asymptote(x, noisy, bootstrap=200, seed=1)
  np.testing.assert_allclose(fit['residuals'], predict_asymptote(fit, x) - noisy)
  for k, true in (('A', 0.8), ('B', 0.6), ('C', 2.5)):
    low, high = fit['ci'][k]
    assert low <= true <= high, (k, low, high)
    assert low <= fit[k] <= high
  less_noise = fit_asymptote(x, clean + 0.1 * (noisy - clean), bootstrap=200, seed=1)
  width = {k: fit['ci'][k][1] - fit['ci'][k][0] for k in 'ABC'}
  assert all(less_noise['ci'][k][1] - less_noise['ci'][k][0] < 0.3 * width[k] for k in 'ABC')


def test_asymptote_bootstrap_with_three_points_says_why_it_has_no_interval():
  fit = fit_asymptote([1, 4, 16], [3.3, 2.9, 2.7], bootstrap=10)
  assert np.all(np.isnan(fit['ci']['C'])) and '3 points' in fit['ci_note']
  np.testing.assert_allclose(fit['residuals'], 0.0, atol=1e-6)  # 3 parameters interpolate
  with pytest.raises(ValueError, match='at least 3 distinct'):
    fit_asymptote([1, 1, 2, 2], [3.0, 3.0, 2.5, 2.5])


def _isoflop_runs(noise: float, runs: int = 9, seed: int = 0):
  rng = np.random.default_rng(seed)
  budgets, n, d = [], [], []
  for c in (1e18, 1e19, 1e20, 1e21):
    n_star, _ = compute_optimal(TRUE, c)
    for k in np.exp(np.linspace(-1.5, 1.5, runs)):
      budgets.append(c)
      n.append(n_star * k)
      d.append(c / (6 * n_star * k))
  loss, _ = predict(TRUE, np.array(n), np.array(d))
  return np.array(n), np.array(d), loss + rng.normal(0.0, noise, loss.size), np.array(budgets)


def test_isoflop_residuals_and_bootstrap_cover_the_noiseless_estimate():
  n, d, loss, budgets = _isoflop_runs(noise=0.0)
  clean = isoflop_optima(n, d, loss, budgets)
  for c, co in zip(clean['C'], clean['coeffs'], strict=True):
    pick = budgets == c
    np.testing.assert_allclose(co, np.polyfit(np.log(n[pick]), loss[pick], 2))
    np.testing.assert_allclose(
      clean['residuals'][pick], np.polyval(co, np.log(n[pick])) - loss[pick], atol=1e-12
    )
  noisy = isoflop_optima(
    n, d, loss + np.random.default_rng(1).normal(0, 0.01, loss.size), budgets, bootstrap=200, seed=2
  )
  assert noisy['ci_samples'] > 190
  for k in ('a', 'b'):  # the noise-free estimate of the same procedure
    low, high = noisy['ci'][k]
    assert low <= clean[k] <= high, (k, low, high)
    assert 0 < high - low < 0.2
  low, high = noisy['ci']['N_opt']
  assert np.all(low <= clean['N_opt']) and np.all(clean['N_opt'] <= high)


def test_isoflop_bootstrap_with_three_runs_per_budget_says_why():
  n, d, loss, budgets = _isoflop_runs(noise=0.0, runs=3)
  out = isoflop_optima(n, d, loss, budgets, bootstrap=5)
  assert np.isnan(out['ci']['a'][0]) and '3 runs' in out['ci_note']


def _baseline(tokens):
  return 40.0 / tokens**0.3 + 1.9  # a data scaling law L(D) = A/D^B + C


def test_data_efficiency_multiplier_inverts_the_baseline_law():
  tokens = np.array([1e6, 2e6, 4e6, 8e6])
  target = _baseline(5 * 8e6)  # the baseline needs 5x the largest budget to get there
  out = data_efficiency_multiplier(tokens, _baseline(tokens), target)
  assert out['reference_tokens'] == 8e6
  assert out['multiplier'] == pytest.approx(5.0, rel=1e-3)
  assert out['tokens_needed'] == pytest.approx(4e7, rel=1e-3)
  assert out['fit']['C'] == pytest.approx(1.9, abs=1e-3)
  assert 'extrapolated' in out['note']
  # One target per budget, measured at the first three only: D_ref is the largest measured.
  per_budget = [_baseline(2 * t) for t in tokens[:3]] + [np.nan]
  out = data_efficiency_multiplier(tokens, _baseline(tokens), per_budget)
  assert out['reference_tokens'] == 4e6
  assert out['multiplier'] == pytest.approx(2.0, rel=1e-3)
  assert out['note'] == ''  # 8e6 tokens: inside the measured budgets


def test_data_efficiency_multiplier_below_the_asymptote_is_infinite_with_a_note():
  tokens = np.array([1e6, 2e6, 4e6])
  out = data_efficiency_multiplier(tokens, _baseline(tokens), 1.85)
  assert out['multiplier'] == np.inf and out['tokens_needed'] == np.inf
  assert 'below the baseline asymptote' in out['note']
  with pytest.raises(ValueError, match='at least 3 distinct token budgets'):
    data_efficiency_multiplier([1e6, 1e6, 2e6], [3.0, 3.0, 2.9], 2.5)
  with pytest.raises(ValueError, match='one value per budget'):
    data_efficiency_multiplier(tokens, _baseline(tokens), [2.5, 2.4])


def test_runs_from_rows_reads_the_sweep_columns():
  rows = [{'params/count': 10, 'train/items': 100, 'eval/loss': 3.0, 'point': 'a'}] * 2
  n, d, loss = runs_from_rows(rows)
  np.testing.assert_array_equal(n, [10.0, 10.0])
  with pytest.raises(ValueError, match=r"rows\[0\].*'train/items'"):
    runs_from_rows([{'params/count': 1, 'eval/loss': 3.0}])
