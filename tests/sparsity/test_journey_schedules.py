"""The average parameter count a schedule leaves (the `journey` paper's N̄), in closed form:
equal to brute-force sums, to `masked`'s exact count on a toy problem and to the prune plugin's
`sparsity/avg_params` in a real LM run, whose checkpoints hold exactly the scheduled zeros after
every update; windows given as fractions of training."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxlab.core.config import load_config
from jaxlab.core.train import train_and_evaluate
from jaxlab.sparsity import schedules
from jaxlab.sparsity.groups import unstructured_families
from jaxlab.sparsity.masking import Pruner, count_unmasked, masked
from jaxlab.sparsity.plugin import make_schedule
from jaxlab.sparsity.scorers import SCORERS
from tests.conftest import REPO, finalized_steps


def _brute_sparsity(schedule: schedules.Schedule, total: int) -> list[float]:
  """Update by update: prune if the counter is an event step, then record the sparsity."""
  current, out = 0.0, []
  for c in range(total):
    event = int(schedule.event_index(c))
    if event >= 0:
      current = float(schedule.sparsity(event))
    out.append(current)
  return out


@pytest.mark.parametrize(
  'schedule, total',
  [
    (schedules.gradual(25, 75, 5, 0.75), 100),
    (schedules.gradual(0, 99, 1, 0.9, initial=0.1), 100),
    (schedules.iterative(10, 40, 4, 0.9), 60),
    (schedules.one_shot(7, 0.5), 20),
    (schedules.one_shot(0, 0.5), 20),
  ],
)
def test_average_density_is_the_mean_over_updates(schedule, total):
  per_update = _brute_sparsity(schedule, total)
  np.testing.assert_allclose(schedules.sparsity_per_update(schedule, total), per_update, rtol=1e-6)
  assert schedules.average_density(schedule, total) == pytest.approx(1 - np.mean(per_update))


def test_gradual_matches_the_cubic_closed_form():
  # A 100-step cubic from 1/4 to 3/4 of 1,000 steps, hand-summed: Σ_{i<k} (1 − i/(k−1))^3 ...
  s, total = 0.8, 1000
  start, end = schedules.window_steps(0.25, 0.75, total)
  assert (start, end) == (250, 750)
  avg = schedules.average_density(schedules.gradual(start, end, 1, s), total)
  k = end - start + 1
  tau = np.arange(k) / (k - 1)
  want = 1 - (s * np.sum(1 - (1 - tau) ** 3) + s * (total - end - 1)) / total
  assert avg == pytest.approx(want, rel=1e-12)
  # ... which tends to 1 − s (3/4 (f1 − f0) + 1 − f1) (∫(1 − τ)^3 = 1/4) as the steps grow.
  assert avg == pytest.approx(1 - s * (0.75 * 0.5 + 0.25), abs=2e-3)
  # Pruning earlier leaves fewer parameters on average; one-shot at 0 is the floor.
  early = schedules.average_density(schedules.gradual(0, 500, 1, s), total)
  assert 1 - s < early < avg


def test_window_steps_and_fraction_schedules():
  assert schedules.window_steps(0.25, 0.75, 200) == (50, 150)
  assert schedules.window_steps(0.5, 1.0, 200) == (100, 199)  # the last update has index 199
  assert schedules.window_steps(0.0, 0.0, 10) == (0, 0)
  with pytest.raises(ValueError, match='0 <= start_fraction <= end_fraction <= 1'):
    schedules.window_steps(0.75, 0.25, 100)
  sched = make_schedule('one_shot', 0.5, 0, 0, 1, 1, total_steps=200, start_fraction=0.25)
  assert sched.start == sched.end == 50  # end defaults to start
  with pytest.raises(ValueError, match='at least two pruning events'):
    make_schedule('gradual', 0.5, 0, 0, 1, 11, total_steps=200, start_fraction=0.25)
  sched = make_schedule(
    'gradual', 0.5, 0, 0, 1, 11, total_steps=200, start_fraction=0.25, end_fraction=0.75
  )
  assert (sched.start, sched.every, sched.events) == (50, 10, 11)
  assert sched.start + (sched.events - 1) * sched.every == 150  # the last event at the end
  # Without fractions the steps are used as given.
  sched = make_schedule('gradual', 0.5, 4, 20, 4, 1)
  assert (sched.start, sched.end, sched.every) == (4, 20, 4)


def test_masked_counts_match_the_closed_form():
  # Toy problem: two kernels (pruned) and a bias (not), 30 SGD updates, cubic at 5..25.
  rng = np.random.default_rng(0)
  params = {
    'a': {'kernel': jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
    'b': {'kernel': jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)},
    'c': {'bias': jnp.zeros((4,), jnp.float32)},
  }
  schedule = schedules.gradual(5, 25, 4, 0.7)
  pruner = Pruner(unstructured_families(params), SCORERS.get('magnitude'), 'global', schedule)
  tx = masked(optax.sgd(0.1), pruner)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  prunable, total, counts = 8 * 16 + 16 * 4, 8 * 16 + 16 * 4 + 4, []
  for _ in range(30):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    counts.append(int(count_unmasked(state.masks)))
    assert sum(int((x == 0).sum()) for x in jax.tree.leaves(params)) >= total - counts[-1]
  removed = np.round(schedules.sparsity_per_update(schedule, 30) * prunable)
  np.testing.assert_array_equal(counts, total - removed)
  want = schedules.average_param_count(schedule, 30, prunable, total - prunable)
  assert float(state.param_steps / state.count) == pytest.approx(want, rel=1e-7)
  assert float(state.param_steps) == float(np.sum(counts))  # exact: integers below 2^24


STEPS = 8


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory):
  """An 8-update LM run pruned gradually (global magnitude, every kernel) at 25% → 75% (events
  at updates 2, 4 and 6), with a checkpoint after every update."""
  config = load_config(
    f'{REPO}/experiments/journey.py:tiny',
    [
      '--config.sweep.points=()',
      '--config.model.width=16',
      '--config.model.depth=1',
      '--config.model.mlp_dim=32',
      '--config.model.max_len=16',
      '--config.data.seq_len=16',
      '--config.data.batch_size=4',
      '--config.data.eval_batches=1',
      f'--config.train.steps={STEPS}',
      '--config.train.log_every=1',
      '--config.train.progress=False',
      '--config.optim.warmup_steps=2',
      '--config.checkpoint.every=1',
      f'--config.checkpoint.keep={STEPS + 1}',
      '--config.checkpoint.async_save=False',
      '--config.metrics.tensorboard=False',
      '--config.plugins.prune.sparsity=0.8',
      '--config.plugins.prune.events=3',
    ],
  )
  workdir = tmp_path_factory.mktemp('journey_lm')
  return config, workdir, train_and_evaluate(config, workdir)


def _kernels(params: dict) -> list[np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [np.asarray(x) for p, x in flat if jax.tree_util.keystr(p).endswith("['kernel']")]


def test_plugin_avg_params_equals_the_closed_form(lm_run):
  config, workdir, final = lm_run
  prune = config.plugins.prune
  schedule = make_schedule(
    'gradual',
    prune.sparsity,
    0,
    0,
    1,
    prune.events,
    total_steps=STEPS,
    start_fraction=prune.start_fraction,
    end_fraction=prune.end_fraction,
  )
  assert [c for c in range(STEPS) if int(schedule.event_index(c)) >= 0] == [2, 4, 6]
  params = _load(workdir, STEPS)
  prunable = sum(k.size for k in _kernels(params))
  total = final['params/count']
  want = schedules.average_param_count(schedule, STEPS, prunable, total - prunable)
  # `param_steps` sums the counts exactly (integers below 2^24 in float32); the reported
  # average is its float32 quotient by the update count.
  want_sum = want * STEPS
  assert want_sum == round(want_sum)
  assert final['sparsity/avg_params'] == float(np.float32(want_sum) / np.float32(STEPS))
  assert final['sparsity/avg_params'] == pytest.approx(want, rel=1e-7)
  assert final['sparsity/nonzero_params'] == total - round(0.8 * prunable)
  assert want == pytest.approx(
    total - prunable + prunable * schedules.average_density(schedule, STEPS), abs=1.0
  )


def _load(workdir: pathlib.Path, step: int) -> dict:
  path = workdir / 'checkpoints' / str(step) / 'state'
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path)['params'])


def test_checkpoints_hold_exactly_the_scheduled_zeros(lm_run):
  config, workdir, _ = lm_run
  prune = config.plugins.prune
  schedule = make_schedule(
    'gradual',
    prune.sparsity,
    0,
    0,
    1,
    prune.events,
    total_steps=STEPS,
    start_fraction=prune.start_fraction,
    end_fraction=prune.end_fraction,
  )
  assert finalized_steps(workdir) == list(range(1, STEPS + 1))
  per_update = schedules.sparsity_per_update(schedule, STEPS)
  for step in range(1, STEPS + 1):  # checkpoint `step` = the parameters after update step - 1
    params = _load(workdir, step)
    kernels = _kernels(params)
    prunable = sum(k.size for k in kernels)
    zeros = sum(int((k == 0).sum()) for k in kernels)
    assert zeros == round(per_update[step - 1] * prunable), step
    # The (tied) embedding is never pruned.
    assert np.count_nonzero(params['embed']['embedding']) == params['embed']['embedding'].size
