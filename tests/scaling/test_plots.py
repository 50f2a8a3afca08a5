"""Scaling-law plots: each writes a non-empty PNG, and the numbers drawn (frontier, IsoFLOP
parabolas, asymptote curves) are the fit's, checked through the helpers that compute them."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlab.scaling import compute_optimal, fit_asymptote, isoflop_optima, plots, predict

TRUE = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}  # Hoffmann et al.'s fit
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _is_png(path) -> bool:
  data = path.read_bytes()
  return data.startswith(PNG_MAGIC) and len(data) > 5000


def _isoflop_runs():
  budgets, n, d = [], [], []
  for c in (1e18, 1e19, 1e20):
    n_star, _ = compute_optimal(TRUE, c)
    for k in np.exp(np.linspace(-1.5, 1.5, 7)):
      budgets.append(c)
      n.append(n_star * k)
      d.append(c / (6 * n_star * k))
  n, d = np.array(n), np.array(d)
  return n, d, predict(TRUE, n, d)[0], np.array(budgets)


def test_frontier_curve_is_the_fits_compute_optimal_loss():
  curve = plots.frontier_curve(TRUE, 1e18, 1e22, num=5)
  np.testing.assert_allclose(curve['C'], [1e18, 1e19, 1e20, 1e21, 1e22])
  np.testing.assert_allclose(6 * curve['N_opt'] * curve['D_opt'], curve['C'])
  for c, loss in zip(curve['C'], curve['loss'], strict=True):
    n = np.geomspace(1e6, 1e13, 4001)
    on_line, _ = predict(TRUE, n, c / (6 * n))  # every allocation of this budget
    assert loss == pytest.approx(on_line.min(), rel=1e-6)
  with pytest.raises(ValueError, match='c_min < c_max'):
    plots.frontier_curve(TRUE, 1e20, 1e18)


def test_plot_compute_frontier_writes_a_png(tmp_path):
  n, d, loss, _ = _isoflop_runs()
  path = plots.plot_compute_frontier(n, d, loss, TRUE, tmp_path / 'sub' / 'frontier.png')
  assert _is_png(path)


def test_isoflop_curves_are_the_fitted_parabolas(tmp_path):
  n, d, loss, budgets = _isoflop_runs()
  optima, curves = plots.isoflop_curves(n, d, loss, budgets, num=201)
  want = isoflop_optima(n, d, loss, budgets)
  np.testing.assert_allclose(optima['N_opt'], want['N_opt'])
  for c, curve, n_opt in zip(optima['C'], curves, optima['N_opt'], strict=True):
    pick = budgets == c
    assert curve['N'][0] == pytest.approx(n[pick].min())
    assert curve['N'][-1] == pytest.approx(n[pick].max())
    # The curve's lowest point sits at the vertex N_opt (up to the sampling grid).
    assert curve['N'][np.argmin(curve['loss'])] == pytest.approx(n_opt, rel=0.02)
  assert _is_png(plots.plot_isoflop(n, d, loss, budgets, tmp_path / 'isoflop.png'))


def test_plot_fit_vs_observed_accepts_one_or_several_laws(tmp_path):
  obs = np.array([3.0, 2.8, 2.5, 2.4])
  assert _is_png(plots.plot_fit_vs_observed(obs, obs * 1.01, tmp_path / 'one.png'))
  both = {'final': obs * 1.05, 'average': obs * 0.99}
  assert _is_png(plots.plot_fit_vs_observed(obs, both, tmp_path / 'dict.png'))
  stacked = np.stack([obs * 1.05, obs * 0.99])
  path = plots.plot_fit_vs_observed(obs, stacked, tmp_path / 'k.png', labels=['f', 'a'])
  assert _is_png(path)
  with pytest.raises(ValueError, match='one per predicted series'):
    plots.plot_fit_vs_observed(obs, stacked, tmp_path / 'bad.png', labels=['f'])
  with pytest.raises(ValueError, match="predicted\\['short'\\]"):
    plots.plot_fit_vs_observed(obs, {'short': obs[:3]}, tmp_path / 'bad.png')


def test_asymptote_curve_is_the_fit_and_plots(tmp_path):
  x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
  loss = 0.8 / x**0.6 + 2.5
  fit = fit_asymptote(x, loss)
  xs, ys = plots.asymptote_curve(fit, 1.0, 64.0, num=7)
  np.testing.assert_allclose(xs, 2.0 ** np.arange(7))
  np.testing.assert_allclose(ys, fit['A'] / xs ** fit['B'] + fit['C'])
  np.testing.assert_allclose(ys, 0.8 / xs**0.6 + 2.5, rtol=1e-3)  # and the fit is the law
  assert _is_png(plots.plot_asymptote(x, loss, fit, tmp_path / 'one.png', label='params'))
  ens = 0.3 / x + 2.4
  several = plots.plot_asymptote(
    {'params': x, 'ensemble': x},
    {'params': loss, 'ensemble': ens},
    {'params': fit, 'ensemble': fit_asymptote(x, ens)},
    tmp_path / 'two.png',
    xlabel='parameters / members',
  )
  assert _is_png(several)
  with pytest.raises(ValueError, match='same labels'):
    plots.plot_asymptote({'a': x}, {'b': loss}, {'a': fit}, tmp_path / 'bad.png')
