"""experiments/local_lipschitz.py and its plugin: every scale loads, and a shrunk tiny run trains,
certifies and reports bounds in the paper's order."""

from __future__ import annotations

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from tests.conftest import REPO

SPEC = f'{REPO}/experiments/local_lipschitz.py'
SHRINK = [
  '--config.model.hidden=(16, 16)',
  '--config.train.steps=30',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
  '--config.plugins.local_lipschitz.eps=(0.01, 0.05)',
  '--config.plugins.local_lipschitz.bab_timeout=1.0',
  '--config.plugins.local_lipschitz.num_samples=1000',
  '--config.plugins.local_lipschitz.pgd_steps=0',  # PGD is tested in tests/lipschitz
]


@pytest.mark.parametrize('arg', ['tiny', 'cnn'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'local_lipschitz'
  plugins = build_plugins(config, build_task(config))
  assert plugins['local_lipschitz'].finalize is not None


def test_bad_arguments_name_the_plugin():
  config = load_config(f'{SPEC}:tiny', ["--config.plugins.local_lipschitz.x0='middle'"])
  with pytest.raises(ConfigError, match='plugins.local_lipschitz'):
    build_plugins(config, build_task(config))


def test_shrunk_tiny_run_certifies_in_order(tmp_path):
  final = train_and_evaluate(load_config(f'{SPEC}:tiny', SHRINK), tmp_path)
  order = ('sampled', 'bab', 'crown', 'recurjac', 'ibp', 'naive')
  for eps in ('0.01', '0.05'):
    values = [final[f'lip/{m}/eps={eps}'] for m in order]
    # The sampled gradients are float32 (the trained model); the bounds are float64.
    assert 0 < values[0] <= values[1] * (1 + 1e-5)
    for tight, loose in zip(values[1:], values[2:], strict=False):
      assert tight <= loose * (1 + 1e-9)
  # Monotone in ε for the deterministic bounds.
  for m in order[2:]:
    assert final[f'lip/{m}/eps=0.01'] <= final[f'lip/{m}/eps=0.05'] * (1 + 1e-9)
  assert final['lip/crown_over_naive'] < 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and '## Local Lipschitz bounds' in report
  assert '| CROWN-Jac |' in report and (tmp_path / 'local_lipschitz.png').exists()
