"""jaxlab.sparsity.factorized: ordered dropout, the rank group-lasso prox, progressive pruning
with physical removal, and SVD truncation (Eckart–Young)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.core.errors import ConfigError
from jaxlab.nn import build_model
from jaxlab.sparsity import factorized as fz
from tests.conftest import REPO


def _layer(rank=4, features=5, n_in=6, seed=0):
  layer = fz.FactorizedDense(features, rank)
  x = jax.random.normal(jax.random.key(seed + 1), (3, n_in))
  return layer, layer.init(jax.random.key(seed), x), x


def test_full_rank_equals_the_dense_product_and_rank_k_its_leading_components():
  layer, variables, x = _layer()
  p = variables['params']
  u, v, b = p['u'], p['v'], p['bias']
  np.testing.assert_allclose(layer.apply(variables, x), x @ u @ v.T + b, rtol=1e-5, atol=1e-6)
  # k traced, as inside the jitted train step
  apply = jax.jit(lambda k: layer.apply(variables, x, k))
  for k in range(1, 5):
    want = x @ u[:, :k] @ v[:, :k].T + b
    np.testing.assert_allclose(apply(jnp.int32(k)), want, rtol=1e-5, atol=1e-6)


def test_rank_k_counts_live_components_only():
  layer, variables, x = _layer()
  p = variables['params']
  dead = {**p, 'u': p['u'].at[:, 1].set(0.0), 'v': p['v'].at[:, 1].set(0.0)}
  u, v, b = dead['u'], dead['v'], dead['bias']
  keep = jnp.array([0, 2])  # the first two live components skip the zero one
  want = x @ u[:, keep] @ v[:, keep].T + b
  np.testing.assert_allclose(layer.apply({'params': dead}, x, 2), want, rtol=1e-5, atol=1e-6)


def test_init_is_the_svd_of_a_dense_init():
  layer, variables, _ = _layer(rank=5, features=5, n_in=6)
  u, v = variables['params']['u'], variables['params']['v']
  w = u @ v.T
  s = np.linalg.svd(np.asarray(w), compute_uv=False)
  # each factor carries √S: ‖u_j‖² = ‖v_j‖² = σ_j, in descending order
  np.testing.assert_allclose(jnp.sum(u**2, 0), s, rtol=1e-4)
  np.testing.assert_allclose(jnp.sum(v**2, 0), s, rtol=1e-4)
  np.testing.assert_allclose(fz.importance(u, v), s, rtol=1e-4)


def test_rank_above_min_dimension_is_rejected():
  with pytest.raises(ConfigError, match='rank: expected an int in \\[1, 5\\]'):
    _layer(rank=6, features=5, n_in=6)
  with pytest.raises(ValueError, match='rank'):
    fz.svd_factors(jnp.ones((3, 4)), 0)


def test_ordered_dropout_samples_one_layer_uniformly_over_layer_rank_pairs():
  ranks = [3, 2]
  draw = jax.jit(jax.vmap(lambda k: jnp.stack(fz.sample_ordered_ranks(k, ranks))))
  got = np.asarray(draw(jax.random.split(jax.random.key(0), 20000)))
  # exactly one layer below full rank at most, and each (layer, k) pair has probability 1/5
  assert ((got < np.array(ranks)).sum(1) <= 1).all()
  pairs = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
  for layer, k in pairs:
    other = 1 - layer
    hit = (got[:, layer] == k) & (got[:, other] == ranks[other])
    if k == ranks[layer]:  # the full-rank pairs of both layers give the same sample
      assert hit.mean() == pytest.approx(2 / 5, abs=0.02)
    else:
      assert hit.mean() == pytest.approx(1 / 5, abs=0.02)


def test_factorized_mlp_train_mode_is_one_truncated_layer_eval_is_full():
  cfg = fz.factorized_mlp_config(hidden=(6,), ranks=(4, 3))
  model = build_model(cfg, 3)
  x = jax.random.normal(jax.random.key(0), (2, 5))
  variables = model.init(jax.random.key(1), x)
  p = variables['params']
  full = model.apply(variables, x)
  h = jax.nn.relu(x @ p['dense0']['u'] @ p['dense0']['v'].T + p['dense0']['bias'])
  np.testing.assert_allclose(
    full, h @ p['head']['u'] @ p['head']['v'].T + p['head']['bias'], rtol=1e-5, atol=1e-6
  )

  # a training pass is the model with one layer at some rank k (the others full): one of the
  # (layer, k) candidates, and different keys reach different ones
  def truncated(k0, k1):
    h = x @ p['dense0']['u'] @ (p['dense0']['v'] * (jnp.arange(4) < k0)).T + p['dense0']['bias']
    head = p['head']['v'] * (jnp.arange(3) < k1)
    return jax.nn.relu(h) @ p['head']['u'] @ head.T + p['head']['bias']

  candidates = [truncated(k, 3) for k in range(1, 5)] + [truncated(4, k) for k in range(1, 3)]
  train = jax.jit(jax.vmap(lambda k: model.apply(variables, x, train=True, rngs={'dropout': k})))
  seen = set()
  for got in train(jax.random.split(jax.random.key(0), 12)):
    match = [i for i, c in enumerate(candidates) if np.allclose(got, c, rtol=1e-5, atol=1e-6)]
    assert match, 'a training pass is not a single-layer truncation'
    seen.add(match[0])
  assert len(seen) >= 3
  with pytest.raises(ConfigError, match='model.ranks'):
    build_model(fz.factorized_mlp_config(hidden=(6,), ranks=(4,)), 3)


def test_group_soft_threshold_closed_form_on_a_hand_example():
  # component 0: ‖[3, 0; 4, 0]‖ → groups [u_0; v_0] = [3, 0, 4] norm 5; component 1: [0, 1, 0] 1
  u = jnp.array([[3.0, 0.0], [0.0, 1.0]])
  v = jnp.array([[4.0, 0.0]])
  np.testing.assert_allclose(fz.group_norms(u, v), [5.0, 1.0])
  pu, pv = fz.group_soft_threshold(u, v, 2.0)
  # component 0 scaled by 1 - 2/5 = 0.6; component 1 (norm 1 ≤ 2) exactly zero
  np.testing.assert_allclose(pu, [[1.8, 0.0], [0.0, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(pv, [[2.4, 0.0]], rtol=1e-6)
  assert float(pu[1, 1]) == 0.0 and float(pv[0, 1]) == 0.0

  # it is the prox: it minimises ½‖z − x‖² + τ Σ‖z_j‖ (better than nearby points)
  def objective(zu, zv):
    return 0.5 * (jnp.sum((zu - u) ** 2) + jnp.sum((zv - v) ** 2)) + 2.0 * jnp.sum(
      fz.group_norms(zu, zv)
    )

  best = objective(pu, pv)
  du = jax.random.normal(jax.random.key(0), (50, 2, 2)) * 1e-2
  dv = jax.random.normal(jax.random.key(1), (50, 1, 2)) * 1e-2
  assert bool(jnp.all(jax.vmap(objective)(pu + du, pv + dv) >= best - 1e-6))


def test_group_lasso_prox_drives_trailing_components_to_exactly_zero():
  # A layer whose components have norms σ_j descending; the loss is 0 (updates 0), so the prox
  # alone acts: after enough steps the small (trailing) groups are exactly zero, the big ones not.
  u = jnp.diag(jnp.array([3.0, 1.0, 0.3]))
  params = {'layer': {'u': u, 'v': u, 'bias': jnp.ones(3)}}
  tx = fz.rank_group_lasso(strength=1.0, step_size=0.1)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  step = jax.jit(tx.update)
  for _ in range(10):  # total threshold 1.0
    updates, state = step(zero, state, params)
    params = optax.apply_updates(params, updates)
  norms = np.asarray(fz.group_norms(params['layer']['u'], params['layer']['v']))
  # group norms were √2·σ = 4.24, 1.41, 0.42: each shrinks by 1.0 in total, floored at 0
  np.testing.assert_allclose(norms, [np.sqrt(2) * 3 - 1.0, np.sqrt(2) - 1.0, 0.0], atol=1e-5)
  assert (np.asarray(params['layer']['u'])[:, 2] == 0).all()
  np.testing.assert_array_equal(params['layer']['bias'], np.ones(3))  # not a factor: untouched


def test_rank_pruning_masks_then_physical_removal_keeps_outputs():
  cfg = fz.factorized_mlp_config(hidden=(8,), ordered_dropout=False)
  model = build_model(cfg, 4)
  x = jax.random.normal(jax.random.key(0), (5, 6))
  params = model.init(jax.random.key(1), x)['params']
  # make components 1 and 4 of dense0 and 2 of the head small (but not zero)
  u = params['dense0']['u'].at[:, jnp.array([1, 4])].multiply(1e-4)
  hu = params['head']['u'].at[:, 2].multiply(1e-4)
  params = {**params, 'dense0': {**params['dense0'], 'u': u}, 'head': {**params['head'], 'u': hu}}
  tx = fz.rank_pruning(every=2, threshold=1e-3)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  updates, state = update(zero, state, params)  # update 1: not due, nothing pruned
  assert all(bool(m.all()) for m in state.masks.values())
  updates, state = update(zero, state, params)  # update 2: shrink
  params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(state.masks['dense0'], [1, 0, 1, 1, 0, 1])
  np.testing.assert_array_equal(state.masks['head'], [1, 1, 0, 1])
  assert float(jnp.abs(params['dense0']['u'][:, 1]).max()) == 0.0
  # a later update that would revive a pruned component is undone
  push = jax.tree.map(jnp.ones_like, params)
  updates, state = update(push, state, params)
  assert float(jnp.abs(optax.apply_updates(params, updates)['head']['v'][:, 2]).max()) == 0.0
  found = fz.find_rank_pruning_state(optax.chain(optax.sgd(0.1), tx).init(params))
  assert isinstance(found, fz.RankPruningState)
  # physical removal: a rank-(4, 3) model with the same outputs
  small = fz.prune_ranks(params, state.masks)
  assert fz.layer_ranks(small) == {'dense0': 4, 'head': 3}
  small_model = build_model(fz.factorized_mlp_config(hidden=(8,), ranks=(4, 3)), 4)
  y_full = model.apply({'params': params}, x)
  y_small = small_model.apply({'params': small}, x)
  np.testing.assert_allclose(y_small, y_full, atol=1e-6)


def test_rank_pruning_keeps_one_component_per_layer():
  params = {'l': {'u': jnp.zeros((3, 2)), 'v': jnp.zeros((2, 2))}}
  tx = fz.rank_pruning(every=1)
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert int(state.masks['l'].sum()) == 1


@pytest.mark.parametrize('shape,rank', [((7, 5), 2), ((4, 9), 3), ((6, 6), 5)])
def test_svd_truncation_is_the_best_rank_r_approximation(shape, rank):
  w = jax.random.normal(jax.random.key(rank), shape)
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  wr = fz.svd_truncate(w, rank)
  assert np.linalg.matrix_rank(np.asarray(wr), tol=1e-4) == rank
  # Eckart–Young: the Frobenius error is the tail of the spectrum, the spectral error σ_{r+1}
  err = np.asarray(w - wr, np.float64)
  np.testing.assert_allclose(np.sum(err**2), np.sum(s[rank:] ** 2), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(err, 2), s[rank], rtol=1e-4)
  # and no other rank-r matrix does better (random factors, and perturbed optimum)
  for k in jax.random.split(jax.random.key(9), 2):
    a, b = jax.random.normal(k, (shape[0], rank)), jax.random.normal(k, (rank, shape[1]))
    assert np.sum(np.asarray(w - a @ b) ** 2) > np.sum(err**2)
    u, v = fz.svd_factors(w, rank)
    worse = (u + 1e-2 * a) @ v.T
    assert np.sum(np.asarray(w - worse) ** 2) >= np.sum(err**2) - 1e-6


def test_transforms_compose_under_jit_and_keep_shapes():
  cfg = fz.factorized_mlp_config(hidden=(8,))
  model = build_model(cfg, 3)
  x = jnp.ones((2, 4))
  params = model.init(jax.random.key(0), x)['params']
  tx = optax.chain(
    optax.adam(1e-2),
    fz.rank_group_lasso(0.1, optax.constant_schedule(1e-2)),
    fz.rank_pruning(every=3),
  )
  state = tx.init(params)
  grads = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x) ** 2))(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  chex_shapes = jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
  assert chex_shapes
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_bad_arguments_say_what_was_expected():
  with pytest.raises(ValueError, match='strength'):
    fz.rank_group_lasso(-1.0, 0.1)
  with pytest.raises(ValueError, match='every'):
    fz.rank_pruning(0)
  with pytest.raises(ValueError, match='fraction'):
    fz.truncation_ranks({'a': 3}, 0.0)
  assert fz.truncation_ranks({'a': 10, 'b': 3}, 0.5) == {'a': 5, 'b': 2}


def test_benchmark_smoke_prints_finite_positive_ratios(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      'benchmarks/factorized_dense.py',
      '--batch',
      '4',
      '--n-in',
      '16',
      '--n-out',
      '8',
      '--fractions',
      '0.25,1.0',
      '--steps',
      '2',
      '--warmup',
      '1',
      '--json',
      str(tmp_path / 'b.json'),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads((tmp_path / 'b.json').read_text())
  assert [r['rank'] for r in result['rows']] == [2, 8]
  for r in result['rows']:
    assert np.isfinite(r['speedup']) and r['speedup'] > 0 and r['ms'] > 0 and r['dense_ms'] > 0
    assert r['speedup'] == pytest.approx(r['dense_ms'] / r['ms'])
  # FLOP ratio (in + out) r / (in · out): 24·2/128 and 24·8/128
  assert [r['flop_ratio'] for r in result['rows']] == pytest.approx([0.375, 1.5])
  assert 'speedup' in out.stdout and 'dense ms' in out.stdout
