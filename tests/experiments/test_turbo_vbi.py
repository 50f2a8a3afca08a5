"""experiments/turbo_vbi.py and the structured_prior plugin: every scale loads, a shrunk sweep
over the three priors runs end to end (equal compression, cropped == masked, the claim checked
against kind=none), the 'bayesian' scorer prunes by the Turbo-VBI posterior, and the
regularity metric counts runs."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.core.config import load_config
from jaxlab.core.sweep import run_sweep
from jaxlab.sparsity.bayesian import FamilyPosterior, TurboVBIState
from jaxlab.sparsity.prior_plugin import (
  KEEP_TIE,
  bayesian_group_score,
  expected_random_runs,
  pruned_runs,
)
from jaxlab.sparsity.scorers import SCORERS, ScoreContext
from tests.conftest import REPO

EXPERIMENT = f'{REPO}/experiments/turbo_vbi.py'
STEPS = 10
SHRINK = [
  '--config.model.channels=(4, 4, 8, 8)',
  f'--config.train.steps={STEPS}',
  f'--config.train.eval_every={STEPS}',
  f'--config.checkpoint.every={STEPS}',
  '--config.optim.warmup_steps=1',
  '--config.plugins.structured_prior.start=2',
  '--config.plugins.structured_prior.update_every=2',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]
KINDS = 'plugins.structured_prior.kind=none,group_lasso,turbo_vbi'


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads(arg):
  config = load_config(f'{EXPERIMENT}:{arg}')
  assert config.report.paper == 'turbo_vbi'
  assert config.report.claim.baseline == 'plugins.structured_prior.kind=none'
  assert config.task.name == 'classification'
  # The prior wraps the optimizer first, so prune's mask wrapper sees its state.
  assert list(config.plugins) == ['structured_prior', 'prune']
  prune = config.plugins.prune
  assert prune.granularity == 'channel' and prune.allocator == 'uniform'
  assert prune.when == 'after' and prune.scorer == 'magnitude'
  assert config.plugins.structured_prior.start == config.train.steps // 5


def _check_cropped(r):
  assert 0.0 <= r['eval/accuracy'] <= 1.0
  assert r['crop/params'] == r['sparsity/nonzero_params'] < r['sparsity/total_params']
  assert r['crop/max_logit_diff'] <= 1e-5
  assert r['crop/eval_accuracy'] == pytest.approx(r['eval/accuracy'], abs=1e-6)
  assert 1 <= r['prior/pruned_runs'] <= r['prior/pruned_channels']


def test_shrunk_sweep_over_the_priors(tmp_path):
  rows = run_sweep(f'{EXPERIMENT}:tiny', [KINDS], tmp_path, SHRINK)
  assert [r['plugins.structured_prior.kind'] for r in rows] == ['none', 'group_lasso', 'turbo_vbi']
  for r in rows:
    _check_cropped(r)
  # Equal compression: the same channels per layer go in every arm.
  assert len({r['crop/params'] for r in rows}) == 1
  assert len({r['prior/pruned_channels'] for r in rows}) == 1
  assert 'prior/expected_neurons' in rows[2] and 'prior/expected_neurons' not in rows[0]
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report
  claim_rows = report.split('## Claim')[1].splitlines()
  turbo = next(line for line in claim_rows if 'kind=turbo_vbi' in line)
  assert '**held**' in turbo or '**did NOT hold**' in turbo


def test_bayesian_scorer_run(tmp_path):
  grid = 'plugins.structured_prior.kind=turbo_vbi'
  (r,) = run_sweep(
    f'{EXPERIMENT}:tiny', [grid], tmp_path, [*SHRINK, '--config.plugins.prune.scorer=bayesian']
  )
  _check_cropped(r)


def test_bayesian_scorer_ranks_by_keep_then_magnitude():
  keep = jnp.array([1.0, 0.3, 1.0 - KEEP_TIE / 2, 0.7, 0.0, 0.0, KEEP_TIE / 2])
  zeros = jnp.zeros((7, 2))
  state = TurboVBIState(jnp.ones((), jnp.int32), {'conv0': FamilyPosterior(zeros, zeros, keep)})
  values = (0.1, 5.0, 0.2, 0.3, 0.4, 0.1, 9.0)
  kernel = jnp.stack([jnp.full((3, 3, 2), v) for v in values], axis=-1)
  ctx = ScoreContext(
    {'conv0': {'kernel': kernel}}, None, None, (), None, {'inner_state': (state, ())}
  )
  score = np.asarray(bayesian_group_score(ctx)['conv0'])
  # Uncertain neurons by their keep probability; the surely inactive (active) ones below
  # (above) them, by their L1 norm, not by their index.
  assert list(np.argsort(score)) == [5, 4, 6, 1, 3, 0, 2]
  assert SCORERS.get('bayesian').group_score is bayesian_group_score


def test_bayesian_scorer_needs_the_turbo_state():
  ctx = ScoreContext({}, None, None, (), None, {'inner_state': optax.EmptyState()})
  with pytest.raises(ValueError, match='structured_prior'):
    bayesian_group_score(ctx)


def test_pruned_runs_and_their_random_expectation():
  assert pruned_runs(np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)) == 3
  assert pruned_runs(np.ones(5, bool)) == 0 and pruned_runs(np.zeros(5, bool)) == 1
  n = 7
  for k in range(n + 1):
    runs = []
    for pruned in itertools.combinations(range(n), k):
      alive = np.ones(n, bool)
      alive[list(pruned)] = False
      runs.append(pruned_runs(alive))
    assert expected_random_runs(n, k) == pytest.approx(np.mean(runs))
