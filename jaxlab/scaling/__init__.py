"""Scaling laws: fits of loss against parameters, data and compute (`laws`)."""

from jaxlab.scaling.laws import (
  compute_optimal,
  fit_asymptote,
  fit_chinchilla,
  isoflop_optima,
  predict,
)

__all__ = ['compute_optimal', 'fit_asymptote', 'fit_chinchilla', 'isoflop_optima', 'predict']
