"""experiments/otov3.py and the dhspg plugin: every scale loads and builds its plugin, and a
shrunk sweep trains to the target group sparsity, crops exactly and reports the claim."""

from __future__ import annotations

import csv

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.sweep import run_sweep
from jaxlab.core.task import build_task
from tests.conftest import REPO

SPEC = f'{REPO}/experiments/otov3.py'
TARGET = 0.5
SHRINK = [
  '--config.model.channels=(4, 4, 8, 8)',
  '--config.train.steps=40',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
  # Partition at step 8; lmbda scaled by the run length as in the experiment (0.3 * 400 / 40),
  # and the official tutorials' epsilon 0.95, which projects groups sooner: in 40 steps the
  # target is reached with lmbda 1, 3 or 10 (epsilon 0 with lmbda 3 stops at 1/3).
  '--config.plugins.dhspg.warmup_fraction=0.2',
  '--config.plugins.dhspg.lmbda=3.0',
  '--config.plugins.dhspg.epsilon=0.95',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'otov3'
  assert config.report.claim.baseline == 'plugins.dhspg.target_group_sparsity=0.0'
  assert config.task.name == 'classification' and config.optim.name == 'sgd'
  plugins = build_plugins(config, build_task(config))
  assert plugins['dhspg'].wrap_optimizer is not None and plugins['dhspg'].finalize is not None


@pytest.mark.parametrize(
  'override', ['target_group_sparsity=1.0', 'target_group_sparsity=-0.1', 'warmup_fraction=1.0']
)
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.dhspg.{override}'])
  with pytest.raises(ConfigError, match='plugins.dhspg'):
    build_plugins(config, build_task(config))


def test_shrunk_sweep_reaches_the_target_and_crops_exactly(tmp_path):
  grid = f'plugins.dhspg.target_group_sparsity=0.0,{TARGET}'
  rows = run_sweep(SPEC + ':tiny', [grid], tmp_path, SHRINK)
  dense, sparse = rows
  for r in rows:
    assert 0.0 <= r['eval/accuracy'] <= 1.0
    # The cropped model is the trained one: same logits, and exactly its nonzero parameters
    # (every parameter of a zero group is zero; BatchNorm statistics are not parameters).
    assert r['crop/max_logit_diff'] <= 1e-5
    assert r['crop/params'] == r['sparsity/nonzero_params']
    assert r['crop/eval_accuracy'] == pytest.approx(r['eval/accuracy'], abs=1e-6)
  # Target 0: no DHSPG, every group kept, the crop is the identity.
  assert dense['dhspg/group_sparsity'] == 0.0
  assert dense['crop/groups_kept'] == dense['crop/groups_total']
  assert dense['crop/params'] == dense['sparsity/total_params']
  # DHSPG reached the target within the run, and the crop is smaller in params and FLOPs.
  assert sparse['dhspg/group_sparsity'] >= TARGET
  assert sparse['crop/groups_kept'] <= (1.0 - TARGET) * sparse['crop/groups_total']
  assert sparse['crop/params'] < sparse['sparsity/total_params']
  assert sparse['crop/flops'] < sparse['flops/dense']
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and 'crop/eval_accuracy' in report
  with (tmp_path / 'results.csv').open() as f:
    assert len(list(csv.DictReader(f))) == 2
