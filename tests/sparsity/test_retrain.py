"""Retraining regimes on a tiny LM: only the chosen leaves change (the rest bitwise equal), the
merged model keeps exactly the pruned zeros, and the trained-parameter counts are exact."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxlab.core.plugins import flat_paths
from jaxlab.core.task import build_task
from jaxlab.nn.kernels import as_matrix
from jaxlab.sparsity import lowrank, retrain
from jaxlab.sparsity.masking import apply_masks
from jaxlab.sparsity.perp_plugin import prune_masks
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def setup():
  task = build_task(tiny_config())
  params = nn.unbox(task.init_params(jax.random.key(0)))
  masks = prune_masks(params, 'magnitude', '0.5', {})
  return task, params, masks


def _flat(tree) -> dict:
  return {k: np.asarray(x) for k, x in flat_paths(tree).items()}


def test_norms_regime_changes_only_norm_scales(setup):
  task, params, masks = setup
  r = retrain.retrain(task, params, masks, 'norms', steps=3, lr=1e-2)
  before, after = _flat(apply_masks(params, masks)), _flat(r.params)
  norm_paths = [k for k in before if k.endswith('norm/scale')]
  assert norm_paths and r.trained_params == sum(before[k].size for k in norm_paths)
  for k in before:
    if k in norm_paths:
      assert not np.array_equal(before[k], after[k])
    else:
      np.testing.assert_array_equal(before[k], after[k])
  assert r.exact_sparsity


@pytest.mark.parametrize('regime', ['masklora', 'scalelora', 'full'])
def test_sparsity_preserving_regimes_keep_exact_zeros(setup, regime):
  task, params, masks = setup
  cfg = lowrank.LoraConfig(rank=2, alpha=4.0)
  r = retrain.retrain(task, params, masks, regime, steps=3, lr=1e-2, lora=cfg)
  assert r.exact_sparsity  # zero at every pruned entry before the final masking
  before, after, m = _flat(apply_masks(params, masks)), _flat(r.params), _flat(masks)
  adapted = lowrank.adapted_paths(params, cfg.pattern)
  for k in before:
    assert np.all(after[k][~m[k]] == 0)
    if regime != 'full' and k not in adapted and not k.endswith('norm/scale'):
      np.testing.assert_array_equal(before[k], after[k])  # the embedding is frozen
  kernel = 'block_0/ffn/wi/kernel'
  assert not np.array_equal(before[kernel], after[kernel])
  total = sum(x.size for x in before.values())
  norms = sum(v.size for k, v in before.items() if k.endswith('norm/scale'))
  adapters = sum(2 * (a + b) for a, b in (as_matrix(p, before[p])[0].shape for p in adapted))
  want = total if regime == 'full' else norms + adapters
  assert r.trained_params == want


def test_plain_lora_is_dense_until_masked_at_the_end(setup):
  task, params, masks = setup
  r = retrain.retrain(task, params, masks, 'lora', steps=3, lr=1e-2)
  assert not r.exact_sparsity  # W + s·ab filled the pruned entries during training
  for w, m in zip(jax.tree.leaves(r.params), jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0)  # ... and the final merge masked them


def test_unknown_regime_is_named(setup):
  task, params, masks = setup
  with pytest.raises(ValueError, match='regime: expected one of'):
    retrain.retrain(task, params, masks, 'bitfit', steps=1, lr=1e-3)
