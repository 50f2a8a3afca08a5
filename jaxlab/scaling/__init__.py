"""Scaling laws: fits of loss against parameters, data and compute (`laws`); their plots
(`jaxlab.scaling.plots`, imported on its own: it loads matplotlib)."""

from jaxlab.scaling.laws import (
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

__all__ = [
  'compare_laws',
  'compute_optimal',
  'data_efficiency_multiplier',
  'fit_asymptote',
  'fit_chinchilla',
  'frontier_loss',
  'isoflop_optima',
  'predict',
  'predict_asymptote',
  'runs_from_rows',
]
