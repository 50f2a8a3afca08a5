"""Robustness: certified radii and accuracy from Lipschitz bounds, and FGSM/PGD attacks."""

from jaxlab.robust.attacks import fgsm, pgd
from jaxlab.robust.certify import certified_accuracy, certified_radius

__all__ = ['certified_accuracy', 'certified_radius', 'fgsm', 'pgd']
