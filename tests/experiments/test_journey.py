"""`experiments/journey.py:tiny` end to end through `jaxlab run`, shrunk to six 8-step points:
the sweep trains dense and pruned points, the `journey` analysis fits both laws, ranks the
windows and writes its metrics and sections; the claim is checked against its metric."""

from __future__ import annotations

import json

from jaxlab.core.config import load_config
from tests.conftest import REPO, run_cli

SMALL = 'model.width=8 model.mlp_dim=16'
MID = 'model.width=16 model.mlp_dim=32'
POINTS = (
  f'{SMALL} plugins.prune.sparsity=0.0',
  f'{SMALL} plugins.prune.sparsity=0.75',
  f'{MID} plugins.prune.sparsity=0.0',
  f'{MID} plugins.prune.sparsity=0.75',
  f'{MID} plugins.prune.sparsity=0.75 plugins.prune.start_fraction=0.0 '
  'plugins.prune.end_fraction=0.5',
  f'{MID} plugins.prune.sparsity=0.75 plugins.prune.start_fraction=0.5 '
  'plugins.prune.end_fraction=1.0',
)
SHRINK = [
  '--config.sweep.points=(' + ','.join(f'"{p}"' for p in POINTS) + ')',
  '--config.model.depth=1',
  '--config.model.max_len=16',
  '--config.data.seq_len=16',
  '--config.data.batch_size=4',
  '--config.data.eval_batches=1',
  '--config.train.steps=8',
  '--config.optim.warmup_steps=1',
  '--config.plugins.prune.events=3',
  '--config.train.progress=False',
  '--config.train.log_every=4',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]


def test_configs_sweep_sizes_sparsities_and_windows():
  tiny = load_config(f'{REPO}/experiments/journey.py:tiny')
  assert tiny.sweep.analysis == 'journey' and tiny.report.claim.metric == 'journey/rmse_ratio'
  assert len(tiny.sweep.points) == 3 * 4 + 2 * 4 and not tiny.sweep.grid
  prune = tiny.plugins.prune
  assert (prune.schedule, prune.scorer, prune.start_fraction, prune.end_fraction) == (
    'gradual',
    'magnitude',
    0.25,
    0.75,
  )
  small = load_config(f'{REPO}/experiments/journey.py:small')
  assert small.sweep.grid == ('train.steps=1000,2000',)  # two token budgets: D varies


def test_tiny_runs_end_to_end(tmp_path):
  workdir = tmp_path / 'journey'
  # Points of one width share their init and eval programs: a compilation cache lets the
  # later points reuse them (the train steps differ: the schedule is baked in).
  env = {
    'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  }
  spec = f'{REPO}/experiments/journey.py:tiny'
  proc = run_cli('run', spec, '--workdir', str(workdir), *SHRINK, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / 'analysis.json').read_text())
  assert metrics['journey/runs'] == 6
  assert metrics['journey/nbar_closed_form_max_rel_error'] == 0.0  # measured N̄ = closed form
  for key in ('journey/loo_rmse_final', 'journey/loo_rmse_average', 'journey/rmse_ratio'):
    assert metrics[key] > 0.0
  assert metrics['journey/windows_tried'] == 3.0
  assert 1.0 <= metrics['journey/window_25_75_rank'] <= 3.0
  rows = [json.loads(line) for line in (workdir / 'results.jsonl').read_text().splitlines()]
  dense = [r for r in rows if r['plugins.prune.sparsity'] == '0.0']
  assert all(r['sparsity/avg_params'] == r['params/count'] for r in dense)
  report = (workdir / 'report.md').read_text()
  for text in ('final vs average parameter count', '## Pruning windows', 'journey_laws.png'):
    assert text in report
  assert 'journey/rmse_ratio' in report  # the claim, checked against the analysis
  assert (workdir / 'journey_laws.png').stat().st_size > 10_000
