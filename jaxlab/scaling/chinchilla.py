"""The `chinchilla` sweep analysis: scaling laws of any LM sweep, and an IsoFLOP sweep design.

Over a sweep's finished runs (`N` = `params/count`, `D` = tokens `train/items`, loss =
`eval/loss`) it fits approach 3 (`fit_chinchilla`, with bootstrap intervals) and, where runs
share compute budgets (within 10%), approach 2 (`isoflop_optima`) — Hoffmann et al. (2022),
Sec. 3.2-3.3 — and reports both allocation exponents `N_opt ∝ C^a`, `D_opt ∝ C^b` (the paper:
a ≈ b ≈ 0.5), the compute-optimal sizes at the sweep's budgets, and three plots: loss vs
compute with the fitted frontier, the IsoFLOP profiles, and fitted vs observed.

`isoflop_points` designs the sweep: for each budget `C` and model width, the number of steps
that spends `C ≈ 6·N·D` (`experiments/lm.py:isoflop`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from jaxlab.core.plugins import ReportPart
from jaxlab.core.sweep import ANALYSES, AnalysisResult
from jaxlab.scaling import laws, plots

BOOTSTRAP = 20  # resamples for the 95% intervals of approach 3 (warm-started refits)


def isoflop_points(
  budgets: Sequence[float],
  widths: Sequence[int],
  count_params: Callable[[int], int],
  tokens_per_step: int,
  *,
  min_steps: int = 10,
  warmup_fraction: float = 0.1,
) -> list[str]:
  """Sweep points `'model.width=w model.mlp_dim=4w train.steps=s optim.warmup_steps=...'`
  with `6·N(w)·s·tokens ≈ C` (warmup a fixed fraction of each run's steps).

  Args:
    budgets: compute budgets in FLOPs.
    widths: model widths (each with a 4x MLP).
    count_params: width -> parameter count `N` of that model.
    tokens_per_step: tokens in one global batch.
    min_steps: a (budget, width) pair that would train fewer steps is left out.
    warmup_fraction: each run's warmup steps, as a fraction of its steps.
  """
  points = []
  for c in budgets:
    for w in widths:
      steps = round(c / (6 * count_params(w) * tokens_per_step))
      if steps >= min_steps:
        warmup = max(1, round(warmup_fraction * steps))
        points.append(
          f'model.width={w} model.mlp_dim={4 * w} train.steps={steps} optim.warmup_steps={warmup}'
        )
  return points


def budget_labels(C: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
  """Each run's budget label: runs whose compute lies within `tolerance` of the smallest in a
  group share that group's geometric-mean compute (step counts are rounded, so an IsoFLOP
  design's runs spend nearly, not exactly, the same)."""
  order = np.argsort(C)
  labels = np.empty_like(C)
  start, group = C[order[0]], []
  for i in order:
    if C[i] > start * (1 + tolerance):
      labels[group] = np.exp(np.mean(np.log(C[group])))
      start, group = C[i], []
    group.append(i)
  labels[group] = np.exp(np.mean(np.log(C[group])))
  return labels


@ANALYSES.register('chinchilla')
def chinchilla_analysis(
  rows: list[dict], workdir: pathlib.Path, config: ml_collections.ConfigDict
) -> AnalysisResult:
  """Approach 3 (and 2 when budgets repeat) over the sweep's finished, finite runs."""
  del config
  ok = [r for r in rows if np.isfinite(float(r.get('eval/loss', np.nan)))]
  if len(ok) < 6:
    raise ValueError(
      f'chinchilla analysis: expected at least 6 finished finite runs, got {len(ok)}'
    )
  N, D, L = laws.runs_from_rows(ok)
  fit = laws.fit_chinchilla(N, D, L, bootstrap=BOOTSTRAP)
  predicted, _ = laws.predict(fit, N, D)
  rmse = float(np.sqrt(np.mean((np.log(predicted) - np.log(L)) ** 2)))
  a3 = fit['beta'] / (fit['alpha'] + fit['beta'])
  metrics = {
    'chinchilla/E': fit['E'],
    'chinchilla/A': fit['A'],
    'chinchilla/B': fit['B'],
    'chinchilla/alpha': fit['alpha'],
    'chinchilla/beta': fit['beta'],
    'chinchilla/a': a3,
    'chinchilla/abs_a_minus_half': abs(a3 - 0.5),
    'chinchilla/rmse_log_loss': rmse,
  }
  C = 6 * N * D
  labels = budget_labels(C)
  budgets, counts = np.unique(labels, return_counts=True)
  plot_paths = [
    plots.plot_compute_frontier(N, D, L, fit, workdir / 'frontier.png'),
    plots.plot_fit_vs_observed(L, predicted, workdir / 'fit_vs_observed.png', labels='approach 3'),
  ]
  iso_note = 'fewer than two budgets with at least 3 runs: no IsoFLOP (approach 2) fit'
  iso = None
  keep = np.isin(labels, budgets[counts >= 3])
  if (counts >= 3).sum() >= 2:
    try:
      iso = laws.isoflop_optima(N[keep], D[keep], L[keep], labels[keep])
    except ValueError as e:  # e.g. a profile that is not convex: no optimum inside the sizes
      iso_note = f'IsoFLOP fit failed: {e}'
  if iso is not None:
    metrics.update({'isoflop/a': float(iso['a']), 'isoflop/b': float(iso['b'])})
    plot_paths.append(
      plots.plot_isoflop(N[keep], D[keep], L[keep], labels[keep], workdir / 'isoflop.png')
    )
    outside = sum(
      not N[keep][labels[keep] == c].min() <= n <= N[keep][labels[keep] == c].max()
      for c, n in zip(iso['C'], iso['N_opt'], strict=True)
    )
    metrics['isoflop/extrapolated_optima'] = float(outside)
    iso_note = (
      f'IsoFLOP profiles over {len(iso["C"])} budgets: N_opt ∝ C^{iso["a"]:.3f}, '
      f'D_opt ∝ C^{iso["b"]:.3f} (Hoffmann et al. approach 2: 0.49 / 0.51); '
      f'{outside} of {len(iso["C"])} parabola optima lie outside the sizes trained at their '
      'budget (extrapolated: the exponents are then unreliable)'
    )
  ci = fit.get('ci', {})

  def cell(name: str) -> str:
    low, high = ci.get(name, (np.nan, np.nan))
    return f'{fit[name]:.4g} [{low:.3g}, {high:.3g}]'

  table = '\n'.join(
    [
      '| Parameter | Fit [95% bootstrap interval] | Hoffmann et al. (2022) |',
      '| --- | --- | --- |',
      f'| E | {cell("E")} | 1.69 |',
      f'| A | {cell("A")} | 406.4 |',
      f'| B | {cell("B")} | 410.7 |',
      f'| α | {cell("alpha")} | 0.34 |',
      f'| β | {cell("beta")} | 0.28 |',
    ]
  )
  n_opt, d_opt = laws.compute_optimal(fit, budgets)
  optimal = '\n'.join(
    ['| Budget C (FLOPs) | N* (approach 3) | D* (approach 3) | Runs |', '| --- | --- | --- | --- |']
    + [
      f'| {c:.3g} | {n:.3g} | {d:.3g} | {k} |'
      for c, n, d, k in zip(budgets, n_opt, d_opt, counts, strict=True)
    ]
  )
  section = (
    f'## Scaling law (Chinchilla approach 3)\n\n'
    f'{len(ok)} runs (N = all parameters, D = training tokens, loss = eval loss in nats); '
    f'RMSE of log loss {rmse:.4f}; N_opt ∝ C^{a3:.3f}.\n\n{table}\n\n'
    f"### Compute-optimal allocation at the sweep's budgets\n\n{optimal}\n\n{iso_note}."
  )
  return AnalysisResult(metrics, ReportPart([section], plot_paths))
