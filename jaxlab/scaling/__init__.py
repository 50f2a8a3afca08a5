"""Scaling laws: fits of loss against parameters, data and compute."""

from jaxlab.scaling.laws import compute_optimal, fit_chinchilla, predict

__all__ = ['compute_optimal', 'fit_chinchilla', 'predict']
