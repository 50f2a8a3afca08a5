"""experiments/{pruning_survey,precropping,lrp_pruning}.py: every scale loads, and shrunk sweeps
run end to end with the claim checked against their baseline point."""

from __future__ import annotations

import csv

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.sweep import run_sweep
from tests.conftest import REPO

EXPERIMENTS = ['pruning_survey', 'precropping', 'lrp_pruning']
SHRINK = [
  '--config.model.channels=(4, 4, 8, 8)',
  '--config.train.steps=20',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]


@pytest.mark.parametrize('paper', EXPERIMENTS)
@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads(paper, arg):
  config = load_config(f'{REPO}/experiments/{paper}.py:{arg}')
  assert config.report.paper == paper and config.report.claim.baseline
  assert config.task.name == 'classification' and 'prune' in config.plugins


@pytest.mark.parametrize(
  ('paper', 'grid', 'extra'),
  [
    ('precropping', 'plugins.prune.granularity=unstructured,channel', []),
    ('lrp_pruning', 'plugins.prune.scorer=magnitude,lrp', ['--config.plugins.prune.start=19']),
    ('pruning_survey', 'plugins.prune.scorer=random,snip', []),
  ],
)
def test_shrunk_sweep_reports_the_claim(tmp_path, paper, grid, extra):
  rows = run_sweep(f'{REPO}/experiments/{paper}.py:tiny', [grid], tmp_path, [*SHRINK, *extra])
  assert len(rows) == 2
  for r in rows:
    assert 0.0 <= r['eval/accuracy'] <= 1.0
    assert r['sparsity/nonzero_params'] < r['sparsity/total_params']
    if 'crop/params' in r:  # channel groups: the cropped model is the masked one, smaller
      assert r['crop/params'] == r['sparsity/nonzero_params']
      assert r['crop/max_logit_diff'] <= 1e-5
      assert r['crop/eval_accuracy'] == pytest.approx(r['eval/accuracy'], abs=1e-6)
  report = (tmp_path / 'report.md').read_text()
  claim = report.split('## Claim', 1)[1].split('## Plots', 1)[0]
  # One verdict, for the point that is not the baseline, measured against it.
  rows = [line for line in claim.splitlines() if line.startswith('| plugins.')]
  assert len(rows) == 1 and ('**held**' in rows[0] or '**did NOT hold**' in rows[0])
  with (tmp_path / 'results.csv').open() as f:
    assert len(list(csv.DictReader(f))) == 2
