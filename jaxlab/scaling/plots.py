"""Scaling-law plots (PNG): loss vs compute with the fitted frontier, IsoFLOP profiles, fitted vs
observed, asymptote curves.

Like `jaxlab.core.report.plot_curves`, figures use `matplotlib.figure.Figure` (the Agg canvas, no
pyplot state). Each plot's numbers come from a helper that returns them (`frontier_curve`,
`isoflop_curves`, `asymptote_curve`), so tests check what is drawn without reading pixels.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxlab.scaling import laws


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


def frontier_curve(
  fit: Mapping[str, Any], c_min: float, c_max: float, num: int = 100
) -> dict[str, np.ndarray]:
  """The fitted compute-optimal frontier on `num` log-spaced budgets in `[c_min, c_max]`.

  Returns:
    `'C'`, `'N_opt'`, `'D_opt'` (Hoffmann et al., Eq. 4, via `laws.compute_optimal`) and
    `'loss'` = `L(N_opt, D_opt)`, the least loss the law predicts at each budget.
  """
  if not 0 < c_min < c_max:
    raise ValueError(f'c_min, c_max: expected 0 < c_min < c_max, got {c_min}, {c_max}')
  C = np.geomspace(c_min, c_max, num)
  n_opt, d_opt = laws.compute_optimal(dict(fit), C)
  return {'C': C, 'N_opt': n_opt, 'D_opt': d_opt, 'loss': laws.frontier_loss(dict(fit), C)}


def plot_compute_frontier(
  N: Any,
  D: Any,
  loss: Any,
  fit: Mapping[str, Any],
  path: str | os.PathLike,
  *,
  title: str = 'Loss vs compute',
) -> pathlib.Path:
  """Runs' loss against compute `C = 6ND` (coloured by `N`) with the Chinchilla fit's
  compute-optimal frontier `L(N*(C), D*(C))`. Get `(N, D, loss)` from sweep rows with
  `laws.runs_from_rows`."""
  n, d, obs = laws._check(N, D, loss)
  C = 6 * n * d
  curve = frontier_curve(fit, C.min() / 2, C.max() * 2)
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.add_subplot()
  points = ax.scatter(C, obs, c=np.log10(n), cmap='viridis', s=18, zorder=3)
  fig.colorbar(points, ax=ax, label='log10 N (parameters)')
  ax.plot(curve['C'], curve['loss'], 'k-', label='fitted frontier L(N*(C), D*(C))')
  ax.set_xscale('log')
  ax.set_xlabel('compute C = 6ND (FLOPs)')
  ax.set_ylabel('loss')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  return _save(fig, path)


def isoflop_curves(
  N: Any, D: Any, loss: Any, budgets: Any, num: int = 50
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
  """The fitted IsoFLOP parabolas, sampled for plotting.

  Returns:
    `(optima, curves)`: `optima` is `laws.isoflop_optima(N, D, loss, budgets)`; `curves[i]`
    (budget `optima['C'][i]`) has `'N'` (`num` log-spaced sizes over the budget's runs) and
    `'loss'` (the parabola in `log N` there).
  """
  optima = laws.isoflop_optima(N, D, loss, budgets)
  n = np.asarray(N, np.float64).reshape(-1)
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  curves = []
  for c, coeffs in zip(optima['C'], optima['coeffs'], strict=True):
    sizes = n[budgets == c]
    grid = np.geomspace(sizes.min(), sizes.max(), num)
    curves.append({'N': grid, 'loss': np.polyval(coeffs, np.log(grid))})
  return optima, curves


def plot_isoflop(
  N: Any,
  D: Any,
  loss: Any,
  budgets: Any,
  path: str | os.PathLike,
  *,
  title: str = 'IsoFLOP profiles',
) -> pathlib.Path:
  """Approach 2's IsoFLOP profiles: per budget the runs' loss against `N`, the fitted parabola in
  `log N` and its vertex `N_opt(C)` (star)."""
  optima, curves = isoflop_curves(N, D, loss, budgets)
  n, obs = (np.asarray(x, np.float64).reshape(-1) for x in (N, loss))
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.add_subplot()
  colors = [f'C{i % 10}' for i in range(len(curves))]
  for i, (c, curve) in enumerate(zip(optima['C'], curves, strict=True)):
    pick = budgets == c
    ax.scatter(n[pick], obs[pick], color=colors[i], s=14, zorder=3)
    ax.plot(curve['N'], curve['loss'], color=colors[i], label=f'C = {c:.2g}')
    vertex = np.polyval(optima['coeffs'][i], np.log(optima['N_opt'][i]))
    ax.plot(optima['N_opt'][i], vertex, '*', color=colors[i], markersize=12, zorder=4)
  ax.set_xscale('log')
  ax.set_xlabel('parameters N')
  ax.set_ylabel('loss')
  exponents = f'N_opt ∝ C^{optima["a"]:.2f}' if np.isfinite(optima['a']) else ''
  ax.set_title(f'{title} {exponents}'.strip())
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def _series(predicted: Any, labels: Sequence[str] | str | None) -> dict[str, np.ndarray]:
  if isinstance(predicted, Mapping):
    return {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in predicted.items()}
  arr = np.asarray(predicted, np.float64)
  arr = arr[None] if arr.ndim == 1 else arr
  if isinstance(labels, str):
    labels = [labels]
  labels = list(labels) if labels is not None else [f'fit {i}' for i in range(len(arr))]
  if len(labels) != len(arr):
    raise ValueError(f'labels: expected one per predicted series ({len(arr)}), got {len(labels)}')
  return dict(zip(labels, arr, strict=True))


def plot_fit_vs_observed(
  observed: Any,
  predicted: Any,
  path: str | os.PathLike,
  *,
  labels: Sequence[str] | str | None = None,
  title: str = 'Fitted vs observed loss',
) -> pathlib.Path:
  """Parity plot: predicted against observed loss with the `y = x` line.

  Args:
    observed: losses, `[n]`.
    predicted: one law's predictions `[n]`, several as `[k, n]` / a sequence (named by
      `labels`), or a mapping name -> `[n]`. The legend gives each law's RMSE of log loss.
    path: the PNG to write.
    labels: names of the predicted series (default `fit 0`, `fit 1`, …).
    title: the figure title.
  """
  obs = np.asarray(observed, np.float64).reshape(-1)
  series = _series(predicted, labels)
  for name, pred in series.items():
    if pred.shape != obs.shape:
      raise ValueError(f'predicted[{name!r}]: expected {obs.size} values, got {pred.size}')
  fig = Figure(figsize=(5.5, 5), layout='constrained')
  ax = fig.add_subplot()
  for name, pred in series.items():
    rmse = float(np.sqrt(np.mean(np.log(pred / obs) ** 2)))
    ax.scatter(obs, pred, s=16, label=f'{name} (RMSE log L {rmse:.3g})', zorder=3)
  lo = min(obs.min(), *(p.min() for p in series.values()))
  hi = max(obs.max(), *(p.max() for p in series.values()))
  ax.plot([lo, hi], [lo, hi], 'k--', linewidth=1, label='y = x')
  ax.set_xlabel('observed loss')
  ax.set_ylabel('predicted loss')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def asymptote_curve(
  fit: Mapping[str, Any], x_min: float, x_max: float, num: int = 100
) -> tuple[np.ndarray, np.ndarray]:
  """`(x, L(x))` of `L = A/x^B + C` (`laws.predict_asymptote`) on `num` log-spaced points."""
  if not 0 < x_min < x_max:
    raise ValueError(f'x_min, x_max: expected 0 < x_min < x_max, got {x_min}, {x_max}')
  x = np.geomspace(x_min, x_max, num)
  return x, laws.predict_asymptote(fit, x)


def plot_asymptote(
  x: Any,
  loss: Any,
  fit: Mapping[str, Any],
  path: str | os.PathLike,
  *,
  label: str = '',
  xlabel: str = 'x',
  title: str = 'Asymptote fits L(x) = A/x^B + C',
) -> pathlib.Path:
  """Measured loss against `x` (parameters, ensemble members, tokens), the fitted
  `A/x^B + C` extended 4× past the largest `x`, and the asymptote `C` (dashed).

  Several recipes on one figure: pass `x`, `loss` and `fit` as mappings label -> value (same
  keys); `label` then goes unused.
  """
  if isinstance(x, Mapping):
    if not (isinstance(loss, Mapping) and isinstance(fit, Mapping)) or not (
      set(x) == set(loss) == set(fit)
    ):
      raise ValueError('x, loss, fit: expected mappings with the same labels, or three arrays')
    series = {k: (x[k], loss[k], fit[k]) for k in x}
  else:
    series = {label: (x, loss, fit)}
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.add_subplot()
  for i, (name, (xs, ys, f)) in enumerate(series.items()):
    xs = np.asarray(xs, np.float64).reshape(-1)
    color = f'C{i % 10}'
    curve_x, curve_y = asymptote_curve(f, xs.min(), xs.max() * 4)
    law = f'{f["A"]:.3g}/x^{f["B"]:.3g} + {f["C"]:.4g}'
    ax.scatter(xs, ys, color=color, s=18, zorder=3)
    ax.plot(curve_x, curve_y, color=color, label=f'{name}: {law}'.lstrip(': '))
    ax.axhline(f['C'], color=color, linestyle='--', linewidth=1)
  ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('loss')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
