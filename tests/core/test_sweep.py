"""Sweeps: grid x list points, vectorised points == separate runs on 8 fake devices, resume of
an interrupted point and of an interrupted vectorised group, and the results table."""

from __future__ import annotations

import json
import shutil

import pytest

from jaxlab.core import metrics as metrics_lib
from jaxlab.core.errors import ConfigError
from jaxlab.core.sweep import point_name, run_sweep, sweep_points, vectorized_groups
from jaxlab.core.vectorized import train_vectorized
from tests.conftest import LM, TINY, finalized_steps, run_cli, tiny_config

EIGHT = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
# Four points that differ only in seed and learning rate (+ weight decay): one program.
POINTS = [
  '--point',
  'seed=0 optim.lr=1e-3',
  '--point',
  'seed=1 optim.lr=1e-3',
  '--point',
  'seed=0 optim.lr=3e-3 optim.weight_decay=0.5',
  '--point',
  'seed=2 optim.lr=2e-3',
]


def test_points_are_the_list_crossed_with_the_grid():
  points = sweep_points(['model.width=32,64'], ['seed=0', 'seed=1 optim.lr=1e-3'])
  assert points == [
    {'seed': '0', 'model.width': '32'},
    {'seed': '0', 'model.width': '64'},
    {'seed': '1', 'optim.lr': '1e-3', 'model.width': '32'},
    {'seed': '1', 'optim.lr': '1e-3', 'model.width': '64'},
  ]
  assert point_name(points[2]) == 'seed=1,optim.lr=1e-3,model.width=32'
  assert sweep_points([], ['seed=3']) == [{'seed': '3'}]
  with pytest.raises(ConfigError, match='model.width is set by both'):
    sweep_points(['model.width=32'], ['model.width=64'])
  with pytest.raises(ConfigError, match='appears twice'):
    sweep_points([], ['seed=1', 'seed=1'])
  with pytest.raises(ConfigError, match='field=value'):
    sweep_points([], ['seed'])


def test_only_shape_preserving_differences_are_vectorised_together():
  configs = [
    tiny_config('--config.seed=0'),
    tiny_config('--config.model.width=64'),
    tiny_config('--config.seed=1', '--config.optim.lr=1e-2'),
    tiny_config('--config.model.init_std=0.05'),
    tiny_config('--config.seed=3'),
  ]
  assert vectorized_groups(configs, 1) == [[0], [1], [2], [3], [4]]
  assert vectorized_groups(configs, 8) == [[0, 2, 3, 4], [1]]
  assert vectorized_groups(configs, 3) == [[0, 2, 3], [1], [4]]
  with pytest.raises(ConfigError, match='model.width differs'):
    train_vectorized(configs[:2], ['a', 'b'], 'group')


def _losses(point_dir) -> list[float]:
  records = metrics_lib.read_jsonl(point_dir / 'metrics.jsonl')
  return [r['train/loss'] for r in records if 'train/loss' in r]


def test_vectorised_points_equal_separate_runs_on_eight_devices(tmp_path):
  common = ['sweep', f'{LM}:tiny', *TINY, '--config.train.steps=6', *POINTS]
  separate = run_cli(*common, '--workdir', str(tmp_path / 'separate'), env=EIGHT)
  assert separate.returncode == 0, separate.stderr[-3000:]
  vectorised = run_cli(
    *common, '--config.sweep.vectorize=4', '--workdir', str(tmp_path / 'vec'), env=EIGHT
  )
  assert vectorised.returncode == 0, vectorised.stderr[-3000:]
  names = [p.name for p in sorted((tmp_path / 'separate').glob('seed=*'))]
  assert len(names) == 4
  for name in names:
    one, many = tmp_path / 'separate' / name, tmp_path / 'vec' / name
    assert len(_losses(one)) == 6
    assert _losses(many) == pytest.approx(_losses(one), rel=1e-5), name
    f1 = json.loads((one / 'final_metrics.json').read_text())
    f4 = json.loads((many / 'final_metrics.json').read_text())
    assert f4['eval/loss'] == pytest.approx(f1['eval/loss'], rel=1e-5)
    assert f4['vectorized/replicas'] == 4 and f4['params/count'] == f1['params/count']
    assert finalized_steps(many) == [6]  # each point has its own final checkpoint
  # The points really differ (different seeds and learning rates), so equality is not vacuous.
  assert len({round(_losses(tmp_path / 'vec' / n)[-1], 6) for n in names}) == 4
  rows = [
    json.loads(line) for line in (tmp_path / 'vec' / 'results.jsonl').read_text().splitlines()
  ]
  assert {'params/non_embedding', 'train/items', 'train/flops', 'train/loss', 'wall_time_s'} <= set(
    rows[0]
  )
  assert rows[0]['train/items'] == 6 * 8 * 32  # steps x batch x seq_len tokens
  assert rows[0]['train/flops'] == 6 * rows[0]['params/count'] * rows[0]['train/items']
  assert rows[0]['params/non_embedding'] < rows[0]['params/count']


def _interrupt_after_checkpoint(point_dirs, checkpoint_root, step):
  """What a kill after the checkpoint at `step` leaves: no final metrics, no later checkpoint."""
  for d in point_dirs:
    (d / 'final_metrics.json').unlink()
    for s in finalized_steps(d):
      if s > step:
        shutil.rmtree(d / 'checkpoints' / str(s))
  for root in checkpoint_root:
    for s in root.iterdir():
      if s.name.isdigit() and int(s.name) > step:
        shutil.rmtree(s)


@pytest.mark.parametrize('vectorize', [1, 2])
def test_an_interrupted_point_resumes_to_the_same_result(tmp_path, vectorize, caplog):
  overrides = [*TINY, f'--config.sweep.vectorize={vectorize}']
  points = ['seed=0', 'seed=1']
  rows = run_sweep(f'{LM}:tiny', [], tmp_path, overrides, point_specs=points)
  before = {r['point']: r['eval/loss'] for r in rows}
  dirs = [tmp_path / r['point'] for r in rows]
  groups = list((tmp_path / '_vectorized').glob('*/checkpoints')) if vectorize > 1 else []
  assert len(groups) == (1 if vectorize > 1 else 0)
  _interrupt_after_checkpoint(dirs[:vectorize], groups, step=5)
  trained = []

  def train_fn(config, point_dir):
    from jaxlab.core.train import train_and_evaluate

    trained.append(point_dir.name)
    return train_and_evaluate(config, point_dir)

  with caplog.at_level('INFO'):
    again = run_sweep(f'{LM}:tiny', [], tmp_path, overrides, train_fn, point_specs=points)
  assert 'resumed from step 5' in caplog.text  # from the checkpoint, not from scratch
  if vectorize == 1:
    assert trained == ['seed=0']  # the finished point is skipped
  after = {r['point']: r['eval/loss'] for r in again}
  assert after == pytest.approx(before, rel=1e-6)
  assert len(_losses(dirs[0])) == 10  # steps 6..10 re-logged after the resume, not duplicated


def test_a_diverging_point_is_recorded_and_the_sweep_goes_on(tmp_path):
  rows = run_sweep(
    f'{LM}:tiny',
    [],
    tmp_path,
    [*TINY, '--config.optim.clip_norm=0', '--config.train.steps=4'],
    point_specs=['optim.lr=1e-3', 'optim.lr=1e30'],
  )
  ok, bad = rows
  assert ok['eval/loss'] > 0 and 'train/nonfinite_step' not in ok
  assert bad['train/nonfinite_step'] >= 1
