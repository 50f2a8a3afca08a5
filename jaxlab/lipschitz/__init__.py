"""Lipschitz bounds: local (bound propagation) and global (LipSDP) for ReLU, MaxMin, GroupSort."""

from jaxlab.lipschitz.graph import Chain, trace_chain
from jaxlab.lipschitz.local import METHODS, chain_lipschitz, compare_methods, local_lipschitz
from jaxlab.lipschitz.sdp import LipSDPResult, lipsdp, lipsdp_info, matrix_product_bound

__all__ = [
  'METHODS',
  'Chain',
  'LipSDPResult',
  'chain_lipschitz',
  'compare_methods',
  'lipsdp',
  'lipsdp_info',
  'local_lipschitz',
  'matrix_product_bound',
  'trace_chain',
]
