"""`masked(inner, pruner)`: pruned weights are exactly zero through AdamW with weight decay, the
achieved sparsity is exact, masks only shrink, fixed masks leave the inner optimizer untouched
elsewhere, the parameter-step count is exact, channel pruning zeroes whole groups, and 8 fake
CPU devices holding sharded parameters give the unsharded answer."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.sparsity import (
  SCORERS,
  Pruner,
  ScoreContext,
  find_masked_state,
  gradual,
  group_matrix,
  masked,
  one_shot,
  unstructured_families,
  zero_invariant_families,
)
from jaxlab.sparsity.groups import flat_arrays

REPO = pathlib.Path(__file__).resolve().parents[2]
IN, HIDDEN, CLASSES, BATCH = 16, (16, 16), 8, 64
SPARSITY = 0.75
SCHEDULE = gradual(10, 110, 10, SPARSITY)  # 11 events: steps 10, 20, ..., 110
STEPS = 200


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(HIDDEN):
      x = nn.relu(nn.Dense(w, name=f'dense{i}')(x))
    return nn.Dense(CLASSES, name='head')(x)


MODEL = MLP()


@functools.cache
def _problem():
  """`(params, inputs, labels)`: numpy-drawn weights, labels from a random teacher."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), jnp.zeros((1, IN))))['params']
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
  x = rng.normal(size=(BATCH, IN)).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(IN, CLASSES)), -1)
  return params, x, y


def _loss(params, x, y):
  logits = MODEL.apply({'params': params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _context(params, extra):
  """What the train loop gives a data-driven scorer: the batch passed to `update`."""
  batch = extra['batch']
  return ScoreContext(
    params,
    lambda p: _loss(p, batch['inputs'], batch['labels']),
    lambda p, x: MODEL.apply({'params': p}, x),
    (IN,),
    jax.random.key(0),
    extra,
  )


def _run(tx, params, x, y, steps: int):
  """`steps` full-batch updates in one jitted scan: (params after each step, its masks, state)."""

  @jax.jit
  def run(params, x, y):
    def step(carry, _):
      params, opt_state = carry
      grads = jax.grad(_loss)(params, x, y)
      batch = {'inputs': x, 'labels': y}
      updates, opt_state = tx.update(grads, opt_state, params, batch=batch)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (params, find_masked_state(opt_state).masks)

    (params, opt_state), (trace, masks) = jax.lax.scan(
      step, (params, tx.init(params)), None, length=steps
    )
    return trace, masks, opt_state

  return run(params, x, y)


def _stack(tree) -> np.ndarray:
  """`[steps, N]`: every leaf of a stacked tree side by side, in flat_arrays order."""
  flat = flat_arrays({'params': tree})
  return np.concatenate([np.asarray(v).reshape(v.shape[0], -1) for v in flat.values()], axis=1)


def _kernel_columns(params) -> np.ndarray:
  """Which columns of `_stack` hold kernel entries."""
  flat = flat_arrays({'params': params})
  return np.concatenate([np.full(v.size, k.endswith('/kernel')) for k, v in flat.items()])


def _unstructured_pruner(params, scorer: str = 'magnitude') -> Pruner:
  return Pruner(unstructured_families(params), SCORERS.get(scorer), 'global', SCHEDULE)


@pytest.fixture(scope='module')
def gradual_run():
  params, x, y = _problem()
  pruner = _unstructured_pruner(params)
  tx = masked(optax.adamw(1e-2, weight_decay=0.1), pruner)
  trace, masks, state = _run(tx, params, x, y, STEPS)
  return params, _stack(trace), _stack(masks), find_masked_state(state)


def test_pruned_weights_are_exactly_zero_at_every_step(gradual_run):
  params, trace, masks, _ = gradual_run
  assert masks.dtype == bool and trace.shape == masks.shape == (STEPS, trace.shape[1])
  # Bitwise zero (not small) at every step after the entry was pruned.
  assert np.all(trace[~masks] == 0.0)
  # The rest did train: AdamW moved every surviving entry away from its initial value.
  initial = _stack(jax.tree.map(lambda v: v[None], params))[0]
  assert np.all(trace[-1][masks[-1]] != initial[masks[-1]])
  assert np.all(trace[-1][masks[-1]] != 0.0)


def _removed_at_events(n: int) -> dict[int, int]:
  """`{event step: kernel entries removed after it}` as the schedule asks (rounded counts)."""
  return {
    SCHEDULE.start + i * SCHEDULE.every: int(np.round(float(SCHEDULE.sparsity(i)) * n))
    for i in range(SCHEDULE.events)
  }


def test_masks_are_monotone_and_change_only_at_pruning_events(gradual_run):
  params, _, masks, _ = gradual_run
  assert np.all(masks[1:] <= masks[:-1])  # once pruned, always pruned
  previous = np.concatenate([np.ones_like(masks[:1]), masks[:-1]])
  changed = [t for t in range(STEPS) if not np.array_equal(masks[t], previous[t])]
  # The event at step 10 prunes to s_i = 0; the one at 110 to 480 of 640, as the one before.
  counts = _removed_at_events(int(_kernel_columns(params).sum()))
  steps = list(counts)
  want = [t for t, prev in zip(steps, [0, *counts.values()], strict=False) if counts[t] != prev]
  assert changed == want == list(range(20, 101, 10))


def test_achieved_sparsity_is_exact(gradual_run):
  params, _, masks, _ = gradual_run
  kernels = _kernel_columns(params)
  n = int(kernels.sum())
  assert np.all(masks[:, ~kernels])  # biases are in no family: never pruned
  for step, count in _removed_at_events(n).items():
    assert int((~masks[step, kernels]).sum()) == count, step
  assert int((~masks[-1]).sum()) == round(SPARSITY * n) == 480


def test_prunes_the_smallest_magnitudes_of_the_live_weights(gradual_run):
  params, trace, masks, _ = gradual_run
  initial = _stack(jax.tree.map(lambda v: v[None], params))[0]
  kernels = _kernel_columns(params)
  for step in range(20, 101, 10):
    # Update `step` scores the parameters it receives: those after update step - 1.
    before, live = np.abs(trace[step - 1] if step else initial), masks[step - 1]
    removed = live & ~masks[step] & kernels
    kept = masks[step] & kernels
    assert removed.any()
    assert before[removed].max() <= before[kept].min(), step


def test_param_steps_over_count_is_the_mean_unmasked_count(gradual_run):
  _, _, masks, state = gradual_run
  assert int(state.count) == STEPS
  per_step = masks.sum(axis=1)
  assert float(state.param_steps) == per_step.sum()  # exact: integers below 2^24
  assert float(state.param_steps / state.count) == pytest.approx(per_step.mean(), rel=1e-7)
  assert per_step[0] == masks.shape[1] and per_step[-1] == masks.shape[1] - 480


def test_fixed_masks_leave_the_inner_optimizer_alone_elsewhere():
  params, x, y = _problem()
  rng = np.random.default_rng(3)
  fixed = jax.tree.map(lambda p: rng.uniform(size=p.shape) > 0.4, params)
  start = jax.tree.map(lambda p, m: np.where(m, p, 0.0).astype(np.float32), params, fixed)
  inner = optax.adamw(1e-2, weight_decay=0.1)
  trace, masks, _ = _run(masked(inner, masks=fixed), start, x, y, 50)
  trace, masks = _stack(trace), _stack(masks)
  np.testing.assert_array_equal(
    masks, np.broadcast_to(_stack(jax.tree.map(lambda m: m[None], fixed)), masks.shape)
  )
  assert np.all(trace[~masks] == 0.0)

  # Reference: plain AdamW on masked gradients from the masked start. AdamW is elementwise, so
  # on the kept entries it is exactly what `masked` does.
  @jax.jit
  def reference(params):
    def step(carry, _):
      params, state = carry
      grads = jax.tree.map(jnp.multiply, jax.grad(_loss)(params, x, y), fixed)
      updates, state = inner.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params

    return jax.lax.scan(step, (params, inner.init(params)), None, length=50)[1]

  want = _stack(reference(start))
  np.testing.assert_allclose(trace[masks], want[masks], rtol=1e-6, atol=1e-7)
  # Started from the unmasked weights, the first update sets the masked ones to exactly 0.
  trace2, masks2, _ = _run(masked(inner, masks=fixed), params, x, y, 1)
  assert np.all(_stack(trace2)[~_stack(masks2)] == 0.0)


def test_update_needs_params():
  params, _, _ = _problem()
  tx = masked(optax.sgd(0.1), _unstructured_pruner(params))
  with pytest.raises(ValueError, match='needs the parameters'):
    tx.update(params, tx.init(params))


def test_channel_pruning_zeroes_whole_groups():
  params, x, y = _problem()
  families = zero_invariant_families(
    lambda v, inp: MODEL.apply(v, inp), {'params': params}, jnp.asarray(x[:2])
  )
  assert [f.name for f in families] == ['dense0', 'dense1']
  # SNIP on the batch `update` receives (through context_fn), scored on the whole group.
  pruner = Pruner(families, SCORERS.get('snip'), 'global', SCHEDULE, score_members='all')
  tx = masked(optax.adamw(1e-2, weight_decay=0.1), pruner, context_fn=_context)
  trace, masks, _ = _run(tx, params, x, y, 120)
  final = jax.tree.map(lambda v: np.asarray(v[-1]), trace)
  final_masks = jax.tree.map(lambda v: np.asarray(v[-1]), masks)
  alive = [np.asarray(a) for a in pruner.alive(final_masks)]
  assert sum(int((~a).sum()) for a in alive) == round(SPARSITY * sum(f.size for f in families))
  # The masks are exactly the member slices of the pruned groups, every one of them zero.
  want = {k: np.ones(v.shape, bool) for k, v in flat_arrays({'params': params}).items()}
  for f, a in zip(families, alive, strict=True):
    assert 0 < a.sum() < f.size, f.name
    for m in f.param_members:
      assert m.tile == 1
      index = [slice(None)] * want[m.path].ndim
      index[m.axis] = ~a
      want[m.path][tuple(index)] = False
    rows = np.asarray(group_matrix({'params': final}, f))
    assert np.all(rows[~a] == 0.0), f.name  # every member slice of a pruned group
    assert np.all(np.abs(rows[a]).sum(1) > 0), f.name
  got = flat_arrays({'params': final_masks})
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # Entries outside every pruned group are untouched by the masks (the head's bias, say).
  assert final_masks['head']['bias'].all()


_SHARDED = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
sys.path.insert(0, sys.argv[1])
from tests.sparsity import test_masking as t
params, x, y = t._problem()
tx = t.masked(t.optax.adamw(1e-2, weight_decay=0.1), t._unstructured_pruner(params))
mesh = Mesh(np.array(jax.devices()), ('x',))
shard = lambda p: jax.device_put(p, NamedSharding(mesh, P(*([None] * (p.ndim - 1)), 'x')))
sharded = jax.tree.map(shard, params)
trace, masks, state = t._run(tx, sharded, x, y, t.STEPS)
ms = t.find_masked_state(state)
np.savez(sys.argv[2], trace=t._stack(trace), masks=t._stack(masks))
print(json.dumps({
  'devices': jax.device_count(),
  'param_shards': len(sharded['dense0']['kernel'].addressable_shards),
  'mask_spec': [str(s) for s in ms.masks['dense0']['kernel'].sharding.spec],
  'mask_shard': list(ms.masks['dense0']['kernel'].addressable_shards[0].data.shape),
}))
"""


def test_sharded_parameters_give_the_unsharded_masks(gradual_run, tmp_path):
  out = tmp_path / 'sharded.npz'
  proc = subprocess.run(
    [sys.executable, '-c', _SHARDED, str(REPO), str(out)],
    cwd=REPO,
    env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info['devices'] == 8 and info['param_shards'] == 8
  # The masks live in the optimizer state and shard like the parameters they mask.
  assert info['mask_spec'] == ['None', 'x'] and info['mask_shard'] == [IN, HIDDEN[0] // 8]
  got = np.load(out)
  _, trace, masks, _ = gradual_run
  np.testing.assert_array_equal(got['masks'], masks)
  np.testing.assert_allclose(got['trace'], trace, rtol=1e-5, atol=1e-6)
  assert np.all(got['trace'][~got['masks']] == 0.0)


def test_movement_scores_the_summed_movement_and_prunes_its_lowest():
  """Movement pruning (Sanh et al., 2020): S = −Σ_t g_t ⊙ w_t over the steps up to the event."""
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  params = {'dense': {'kernel': jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}}

  def loss(p):
    return 0.5 * jnp.sum(jnp.square(p['dense']['kernel'] - target))

  families = unstructured_families(params)
  pruner = Pruner(families, SCORERS.get('movement'), 'global', one_shot(3, 0.5))
  tx = masked(optax.sgd(0.1), pruner)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
  expected = np.zeros((6, 5))
  p = params
  for _ in range(4):  # the event is the update of step 3; its own gradient counts
    w = np.asarray(p['dense']['kernel'])
    expected -= np.asarray(jax.grad(loss)(p)['dense']['kernel']) * w
    updates, state = step(p, state)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(state.accumulated['dense']['kernel'], expected, rtol=1e-5, atol=1e-6)
  kept = np.asarray(state.masks['dense']['kernel'])
  assert kept.sum() == 15  # exactly half of 30
  assert expected[kept].min() >= expected[~kept].max()
  assert np.all(np.asarray(p['dense']['kernel'])[~kept] == 0.0)
