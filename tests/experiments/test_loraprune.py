"""experiments/loraprune.py: every scale loads; a shrunk run prunes heads and MLP channels with
each criterion, crops exactly, measures step memory and reports every row."""

from __future__ import annotations

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from tests.conftest import REPO, TINY

SPEC = f'{REPO}/experiments/loraprune.py'
SHRINK = [
  *TINY,
  '--config.model.heads=4',
  '--config.plugins.loraprune.steps=4',
  '--config.plugins.loraprune.prune_every=2',
  '--config.plugins.loraprune.compressions=(0.5,)',
  '--config.plugins.loraprune.rank=4',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'loraprune'
  assert build_plugins(config, build_task(config))['loraprune'].finalize is not None


@pytest.mark.parametrize(
  'override, message',
  [
    ('--config.plugins.loraprune.criteria=("fisher",)', 'criteria'),
    ('--config.plugins.loraprune.compressions=(1.0,)', 'compressions'),
    ('--config.model.mixer=paragru', 'mixer=attention'),
  ],
)
def test_bad_arguments_name_the_field(override, message):
  config = load_config(f'{SPEC}:tiny', [override])
  with pytest.raises(ConfigError, match=message):
    build_plugins(config, build_task(config))


def test_shrunk_run_prunes_crops_and_reports(tmp_path):
  final = train_and_evaluate(load_config(f'{SPEC}:tiny', SHRINK), tmp_path)
  for criterion in ('lora', 'magnitude', 'taylor'):
    base = f'loraprune/{criterion}/0.5'
    assert final[f'{base}/heads'] == 2 and final[f'{base}/mlp_dim'] == 32  # half of 4 and 64
    assert final[f'{base}/crop_loss_diff'] <= 1e-5  # the cropped model is the masked one
    assert final[f'{base}/params_fraction'] < 1.0
    assert final[f'loraprune/memory/{criterion}/peak_bytes'] > 0
  assert 'loraprune/bits_per_byte_ratio_vs_taylor/0.5' in final
  report = (tmp_path / 'report.md').read_text()
  assert '## Structured pruning while fine-tuning with LoRA' in report
  assert report.count('| 50% |') == 3
