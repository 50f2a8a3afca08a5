"""experiments/perp.py: every scale loads; a shrunk run prunes exactly, retrains the chosen
subsets, keeps the zeros after merging and reports every (scorer, target, regime) row."""

from __future__ import annotations

import json

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from tests.conftest import REPO, TINY

SPEC = f'{REPO}/experiments/perp.py'
SHRINK = [
  *TINY,
  '--config.plugins.perp.steps=3',
  "--config.plugins.perp.targets=('0.5', '2:4')",
  "--config.plugins.perp.regimes=('none', 'norms', 'masklora')",
  '--config.plugins.perp.calibration_batches=1',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'perp'
  assert build_plugins(config, build_task(config))['perp'].finalize is not None


@pytest.mark.parametrize(
  'override, message',
  [
    ('scorers=("sparsegpt",)', 'scorers'),
    ('regimes=("full",)', "'none'"),
    ('targets=("1.5",)', 'sparsity'),
  ],
)
def test_bad_arguments_name_the_field(override, message):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.perp.{override}'])
  with pytest.raises(ConfigError, match=message):
    build_plugins(config, build_task(config))


def test_shrunk_run_reports_every_row(tmp_path):
  final = train_and_evaluate(load_config(f'{SPEC}:tiny', SHRINK), tmp_path)
  for scorer in ('magnitude', 'wanda'):
    assert final[f'perp/{scorer}/0.5/kernel_sparsity'] == pytest.approx(0.5, abs=1e-3)
    assert final[f'perp/{scorer}/2:4/kernel_sparsity'] == 0.5  # exactly 2 of every 4
    for target in ('0.5', '2:4'):
      base = f'perp/{scorer}/{target}'
      assert final[f'{base}/none/trained_fraction'] == 0.0
      assert (
        0
        < final[f'{base}/norms/trained_fraction']
        < final[f'{base}/masklora/trained_fraction']
        < 0.5
      )
      for regime in ('none', 'norms', 'masklora'):
        assert final[f'{base}/{regime}/exact_sparsity'] == 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '## Prune, then retrain a subset' in report and report.count('| wanda | 2:4 |') == 3
  assert 'perp/magnitude/0.5/masklora/gap_closed' in json.loads(
    (tmp_path / 'final_metrics.json').read_text()
  )
