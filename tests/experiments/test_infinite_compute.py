"""experiments/infinite_compute.py: both scales load with every recipe among their points, and a
shrunk sweep runs end to end through `jaxlab run` (recipes, ensemble, distilled student, data
efficiency) and reports the claim."""

from __future__ import annotations

import json
import math

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.sweep import sweep_points
from tests.conftest import REPO, run_cli

SPEC = f'{REPO}/experiments/infinite_compute.py'
# Base: width 32, 8 steps on 1024 tokens. Points: two seeds of the base (the ensemble and the
# distilled student's teachers; one vectorised program) and two larger token budgets (the
# baseline's data law). The other recipes have one point each here (the full tiny run, marked
# slow, has them all).
POINTS = "('seed=0', 'seed=1', 'data.train_tokens=2048', 'data.train_tokens=4096')"
SHRINK = [
  '--config.model.width=32',
  '--config.model.mlp_dim=128',
  '--config.model.depth=1',
  '--config.model.max_len=32',
  '--config.data.seq_len=32',
  '--config.data.batch_size=8',
  '--config.data.eval_batches=2',
  '--config.data.train_tokens=1024',
  '--config.train.steps=8',
  '--config.train.eval_every=8',
  '--config.train.log_every=4',
  '--config.optim.warmup_steps=2',
  '--config.checkpoint.every=8',
  '--config.sweep.vectorize=2',
  f'--config.sweep.points={POINTS}',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_with_every_recipe(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'infinite_compute'
  assert config.sweep.analysis == 'infinite_compute'
  points = sweep_points([], config.sweep.points)
  fields = {f for p in points for f in p}
  assert {'model.width', 'optim.weight_decay', 'train.steps', 'seed', 'data.train_tokens'} <= fields
  assert max(float(p.get('optim.weight_decay', 0)) for p in points) >= 3.0  # ~30x 0.1
  assert sum('seed' in p for p in points) == config.sweep.vectorize - 1  # members 1..K-1


def test_bad_scale_is_a_clear_error():
  from jaxlab.core.errors import ConfigError

  with pytest.raises(ConfigError, match='expected a scale'):
    load_config(f'{SPEC}:huge')


def test_shrunk_sweep_end_to_end(tmp_path):
  result = run_cli('run', f'{SPEC}:tiny', '--workdir', str(tmp_path), *SHRINK)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / 'analysis.json').read_text())
  # The ensemble is the two seeds of the base; its loss is below their mean (Jensen).
  assert metrics['infinite/ensemble_k'] == 2
  assert metrics['infinite/ensemble_loss'] < metrics['infinite/single_loss']
  assert math.isfinite(metrics['infinite/distill_retained'])
  for name in ('epochs', 'parameters', 'regularised', 'ensemble'):
    assert math.isfinite(metrics[f'infinite/{name}_best_loss'])
  assert 'infinite/ensemble_asymptote' not in metrics  # K = 2 < 3 points: not fitted
  assert 'infinite/data_efficiency' in metrics and metrics['infinite/order_held'] in (0.0, 1.0)
  student = tmp_path / 'distill_student'
  final = json.loads((student / 'final_metrics.json').read_text())
  assert final['eval/loss'] == pytest.approx(metrics['infinite/student_loss'])
  assert 'train/distill_loss' in (student / 'metrics.jsonl').read_text()
  report = (tmp_path / 'report.md').read_text()
  for heading in (
    '## Recipes at a fixed data budget',
    '## Ensemble scaling',
    '## Distillation',
    '## Data efficiency',
    '## Claim',
  ):
    assert heading in report
  assert 'n/a (< 3 x)' in report  # one width, one K... not enough points for an asymptote
  assert (tmp_path / 'ensemble_scaling.png').stat().st_size > 0


@pytest.mark.slow
def test_tiny_runs_and_reports(tmp_path):
  result = run_cli('run', f'{SPEC}:tiny', '--workdir', str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / 'analysis.json').read_text())
  assert metrics['infinite/ensemble_k'] == 4
  assert metrics['infinite/ensemble_loss'] < metrics['infinite/single_loss']
  assert 'infinite/data_efficiency' in metrics
  assert '## Claim' in (tmp_path / 'report.md').read_text()
