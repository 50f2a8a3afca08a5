"""experiments/lipsdp_qc.py and the lipsdp plugin: every scale loads, bad arguments name the
plugin, and a shrunk run trains a MaxMin MLP, orders its bounds and reports them."""

from __future__ import annotations

import json

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from tests.conftest import REPO

SPEC = f'{REPO}/experiments/lipsdp_qc.py'
SHRINK = [
  '--config.model.width=8',
  '--config.model.depth=3',
  '--config.train.steps=20',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
  '--config.plugins.lipsdp.samples=200',
  '--config.plugins.lipsdp.pgd_steps=5',
  # 4x4 digits: the l_inf LMIs are 16 wide, so every output row is bounded in seconds.
  '--config.data.image_size=4',
  '--config.plugins.lipsdp.linf_row=-1',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'lipsdp_qc'
  assert config.model.name == 'lipschitz_mlp' and config.model.activation == 'maxmin'
  plugins = build_plugins(config, build_task(config))
  assert plugins['lipsdp'].finalize is not None and plugins['lipsdp'].report is not None


@pytest.mark.parametrize('override', ['norms=l1', 'samples=0', 'eps_l2=-1.0', 'linf_row=10'])
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.lipsdp.{override}'])
  with pytest.raises(ConfigError, match='plugins.lipsdp'):
    build_plugins(config, build_task(config))


def test_shrunk_run_orders_the_bounds_and_reports(tmp_path):
  from jaxlab.core.train import train_and_evaluate  # noqa: PLC0415

  config = load_config(f'{SPEC}:tiny', SHRINK)
  final = train_and_evaluate(config, tmp_path)
  for norm in ('l2', 'linf'):
    low, qc = final[f'lip/{norm}/sampled'], final[f'lip/{norm}/qc']
    # Sound (above the sampled slope) and dropping mu never helps.
    assert 0 < low <= qc * (1 + 1e-5) and qc <= final[f'lip/{norm}/qc_mu0'] * (1 + 1e-6)
    assert low <= final[f'lip/{norm}/resrelu'] * (1 + 1e-5)
    assert low <= final[f'lip/{norm}/mp'] * (1 + 1e-6)
    assert final[f'lip/{norm}/qc_solve_s'] >= 0 and final[f'lip/{norm}/qc_wall_s'] > 0
    assert final[f'lip/{norm}/qc_inaccurate'] == 0.0  # Clarabel reached its tolerance
    certified = final[f'robust/{norm}/certified_accuracy']
    assert 0 <= certified <= final[f'robust/{norm}/pgd_accuracy'] <= final['robust/clean_accuracy']
  assert final['lip/l2/qc'] <= final['lip/l2/mp'] * (1 + 1e-6)
  ratios = [
    final[f'lip/{n}/qc'] / min(final[f'lip/{n}/mp'], final[f'lip/{n}/resrelu'])
    for n in ('l2', 'linf')
  ]
  assert final['lip/qc_over_best_baseline'] == pytest.approx(max(ratios))
  assert final['robust/clean_accuracy'] == pytest.approx(final['eval/accuracy'], abs=1e-6)
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and '## Lipschitz bounds' in report
  assert 'LipSDP, new QC (μ free)' in report and 'lipschitz_bounds.png' in report
  assert (tmp_path / 'lipschitz_bounds.png').stat().st_size > 0
  saved = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert saved['lip/l2/qc'] == pytest.approx(final['lip/l2/qc'])
