"""Pruning: groups, scorers, allocators, schedules, masks as an optax wrapper, and cropping.

Pruning methods differ in five independent choices, each a small module here:

- `groups`: what is removed together (weights, N:M blocks, zero-invariant channel groups found
  from the model's jaxpr);
- `scorers` (+ `lrp`, `bayesian`): how important each weight or unit is;
- `allocators`: how much to remove where (global, uniform, given ratios, N:M);
- `schedules`: when (one-shot, iterative, gradual cubic), at initialisation or later;
- enforcement: `masked(inner_tx, pruner)` keeps pruned entries exactly zero through any
  optimizer; `crop` removes them physically.

Optimizers that make groups sparse while training: `dhspg` (OTOv2/v3's dual half-space
projected gradient) and `turbo_vbi` (a clustered hierarchical Bayesian prior), with
`group_lasso` as the classic baseline.

`jaxlab.sparsity.plugin` exposes all of it to experiments as `config.plugins.prune`.
"""

from jaxlab.sparsity.allocators import ALLOCATORS, nm_keep
from jaxlab.sparsity.bayesian import group_lasso, keep_probabilities, turbo_vbi
from jaxlab.sparsity.crop import check_croppable, crop, cropped_model_config
from jaxlab.sparsity.dhspg import dhspg, group_sparsity
from jaxlab.sparsity.factorized import rank_group_lasso, rank_pruning, svd_truncate
from jaxlab.sparsity.flops import contraction_flops, xla_flops
from jaxlab.sparsity.groups import (
  Family,
  Member,
  group_matrix,
  unstructured_families,
  zero_invariant_families,
)
from jaxlab.sparsity.masking import (
  MaskedState,
  Pruner,
  alive_groups,
  apply_masks,
  find_masked_state,
  masked,
)
from jaxlab.sparsity.schedules import Schedule, gradual, iterative, one_shot
from jaxlab.sparsity.scorers import SCORERS, ScoreContext, Scorer

__all__ = [
  'ALLOCATORS',
  'SCORERS',
  'Family',
  'MaskedState',
  'Member',
  'Pruner',
  'Schedule',
  'ScoreContext',
  'Scorer',
  'alive_groups',
  'apply_masks',
  'check_croppable',
  'contraction_flops',
  'crop',
  'dhspg',
  'cropped_model_config',
  'find_masked_state',
  'gradual',
  'group_lasso',
  'group_matrix',
  'group_sparsity',
  'iterative',
  'keep_probabilities',
  'masked',
  'nm_keep',
  'one_shot',
  'rank_group_lasso',
  'rank_pruning',
  'svd_truncate',
  'turbo_vbi',
  'unstructured_families',
  'xla_flops',
  'zero_invariant_families',
]
