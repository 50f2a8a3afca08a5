"""experiments/prepacking.py: every scale loads and builds its plugin, and a shrunk run trains,
prefills prompts prepacked and padded, and writes the comparison into report.md."""

from __future__ import annotations

import math

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from tests.conftest import REPO, TINY

SPEC = f'{REPO}/experiments/prepacking.py'
SHRINK = [
  *TINY,
  '--config.train.steps=4',
  '--config.train.eval_every=2',
  '--config.checkpoint.every=4',
  '--config.plugins.prepack.num_prompts=6',
  '--config.plugins.prepack.max_prompt_len=32',
  '--config.plugins.prepack.gen_steps=3',
  '--config.plugins.prepack.repeats=1',
]


@pytest.mark.parametrize('arg', ['tiny', 'small', 'gpu'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'prepacking'
  assert config.report.claim.metric == 'prepack/lognormal/speedup'
  assert config.plugins.prepack.max_prompt_len == config.model.max_len
  assert build_plugins(config)['prepack'].finalize is not None


@pytest.mark.parametrize('override', ['distributions=("zipf",)', 'num_prompts=0'])
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.prepack.{override}'])
  with pytest.raises(ConfigError, match='plugins.prepack'):
    build_plugins(config)


def test_a_recurrent_mixer_is_refused_before_training():
  config = load_config(f'{SPEC}:tiny', [*SHRINK, '--config.model.mixer=paragru'])
  with pytest.raises(ConfigError, match='plugins.prepack.*need an attention mixer'):
    build_plugins(config, build_task(config))


def test_shrunk_run_compares_prefills_and_reports(tmp_path):
  final = train_and_evaluate(load_config(f'{SPEC}:tiny', SHRINK), tmp_path)
  for dist in ('uniform', 'lognormal'):
    m = {k.split('/')[-1]: v for k, v in final.items() if k.startswith(f'prepack/{dist}/')}
    assert m['prompts'] == 6 and 6 <= m['tokens'] <= 6 * 32
    # Prepacked rows never hold more slots than the padded batch, and hold every token.
    assert m['tokens'] <= m['packed_slots'] <= m['padded_slots']
    assert m['rows'] <= 6 and m['packed_slots'] % m['rows'] == 0
    assert m['max_logit_diff'] <= 1e-5 and m['max_cache_diff'] <= 1e-5
    assert m['generations_agree'] == 1.0
    for key in ('padded_s', 'packed_s', 'speedup', 'padded_peak_bytes', 'memory_ratio'):
      assert math.isfinite(m[key]) and m[key] > 0
    assert m['speedup'] == pytest.approx(m['padded_s'] / m['packed_s'])
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and 'prepack/lognormal/speedup' in report
  assert '## Prefill: prepacked vs padded' in report
  assert '| uniform |' in report and '| lognormal |' in report
  assert (tmp_path / 'prepacking.png').exists()
