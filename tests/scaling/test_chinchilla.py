"""The `chinchilla` sweep analysis: the IsoFLOP design spends its budgets, budgets are grouped,
the fit on rows from a known law recovers it, and a real (tiny) sweep runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlab.core.config import base_config
from jaxlab.scaling.chinchilla import budget_labels, chinchilla_analysis, isoflop_points
from tests.conftest import LM, TINY, run_cli


def test_isoflop_points_spend_each_budget():
  count = {32: 1000, 64: 4000, 128: 16000}.__getitem__
  points = isoflop_points([6e7, 2.4e8], [32, 64, 128], count, tokens_per_step=100, min_steps=5)
  assert points[0] == 'model.width=32 model.mlp_dim=128 train.steps=100 optim.warmup_steps=10'
  for p in points:
    fields = dict(item.split('=') for item in p.split())
    flops = 6 * count(int(fields['model.width'])) * int(fields['train.steps']) * 100
    assert min(abs(flops / c - 1) for c in (6e7, 2.4e8)) < 0.05
  assert len(points) == 6  # the fewest steps: 6e7 at width 128, 6.25 -> 6 >= min_steps
  assert len(isoflop_points([6e7], [128], count, 100, min_steps=7)) == 0


def test_budget_labels_group_runs_within_ten_percent():
  C = np.array([1.0e9, 1.04e9, 0.98e9, 3e9, 3.1e9, 9e9])
  labels = budget_labels(C)
  assert len(np.unique(labels)) == 3
  assert labels[0] == labels[1] == labels[2] == pytest.approx(np.exp(np.log(C[:3]).mean()))
  assert labels[3] == labels[4] != labels[5]


def test_analysis_recovers_the_law_it_was_given(tmp_path):
  law = {'E': 1.7, 'A': 400.0, 'B': 410.0, 'alpha': 0.34, 'beta': 0.28}
  rows = []
  for c in (1e18, 1e19, 1e20):
    for n in np.geomspace(3e7, 3e9, 7):
      d = c / (6 * n)
      loss = law['E'] + law['A'] / n ** law['alpha'] + law['B'] / d ** law['beta']
      rows.append({'params/count': n, 'train/items': d, 'eval/loss': loss})
  rows.append({'params/count': 1e8, 'train/items': 1e10, 'eval/loss': float('nan')})  # diverged
  result = chinchilla_analysis(rows, tmp_path, base_config())
  m = result.metrics
  assert m['chinchilla/alpha'] == pytest.approx(0.34, abs=0.01)
  assert m['chinchilla/beta'] == pytest.approx(0.28, abs=0.01)
  assert m['chinchilla/E'] == pytest.approx(1.7, abs=0.01)
  assert m['chinchilla/a'] == pytest.approx(0.28 / 0.62, abs=0.01)
  # Approach 2 on the same IsoFLOP design agrees with the law's exponent a = beta/(alpha+beta).
  assert m['isoflop/a'] == pytest.approx(0.28 / 0.62, abs=0.05)
  assert m['chinchilla/rmse_log_loss'] < 1e-3
  assert {p.name for p in result.part.plots} == {
    'frontier.png',
    'fit_vs_observed.png',
    'isoflop.png',
  }
  assert '| α |' in result.part.sections[0] and '21 runs' in result.part.sections[0]


def test_a_tiny_lm_sweep_fits_its_law_end_to_end(tmp_path):
  out = run_cli(
    'sweep',
    f'{LM}:tiny',
    *TINY,
    '--config.checkpoint.every=100',
    '--config.train.eval_every=100',
    '--grid',
    'model.width=16,32',
    '--grid',
    'train.steps=4,8,12',
    '--config.sweep.analysis=chinchilla',
    '--workdir',
    str(tmp_path),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((tmp_path / 'analysis.json').read_text())
  assert np.isfinite(metrics['chinchilla/alpha']) and np.isfinite(metrics['chinchilla/beta'])
  report = (tmp_path / 'report.md').read_text()
  assert '## Scaling law (Chinchilla approach 3)' in report and 'frontier.png' in report
  assert (tmp_path / 'frontier.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_the_isoflop_experiment_runs(tmp_path):
  out = run_cli('run', 'experiments/lm.py:isoflop', '--workdir', str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'chinchilla/a' in json.loads((tmp_path / 'analysis.json').read_text())
  assert '## Claim' in (tmp_path / 'report.md').read_text()
