"""experiments/bipolar_int.py and the bipolar_int plugin: every scale loads and builds its
plugin, bad arguments name the plugin, and a shrunk run trains, quantizes, evaluates W{b}A{a}
and writes the report with its claim."""

from __future__ import annotations

import json

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from tests.conftest import REPO, TINY

SPEC = f'{REPO}/experiments/bipolar_int.py'


@pytest.mark.parametrize('arg', ['tiny', 'small', 'gpu'])
def test_every_scale_loads(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'bipolar_int'
  p = config.plugins.bipolar_int
  assert config.report.claim.metric == (
    f'bipolar/w{min(p.weight_bits)}a{min(p.act_bits)}/decode_speedup_vs_best_float'
  )
  assert 0 < p.decode_steps < config.data.seq_len


@pytest.mark.parametrize(
  'override',
  [
    'weight_bits=(0,)',
    'act_bits=(9,)',
    "method='cuda'",
    'timing_repeats=0',
    'decode_steps=128',
  ],
)
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.bipolar_int.{override}'])
  with pytest.raises(ConfigError, match='plugins.bipolar_int'):
    build_plugins(config, build_task(config))


def test_shrunk_run_reports_every_format(tmp_path):
  overrides = [
    *TINY,
    '--config.train.steps=4',
    '--config.train.eval_every=4',
    '--config.checkpoint.every=4',
    '--config.data.eval_batches=1',
    '--config.plugins.bipolar_int.weight_bits=(4,)',
    '--config.plugins.bipolar_int.act_bits=(8,)',
    '--config.plugins.bipolar_int.timing_repeats=1',
    '--config.plugins.bipolar_int.decode_steps=4',
    '--config.report.claim.metric=bipolar/w4a8/decode_speedup_vs_best_float',
  ]
  config = load_config(f'{SPEC}:tiny', overrides)
  final = train_and_evaluate(config, tmp_path)
  assert final['bipolar/exact'] == 1.0
  # 32×64 + 64×32 FFN and 4 32×32 attention kernels in the one block.
  assert final['bipolar/quantized_weights'] == 2 * 32 * 64 + 4 * 32 * 32
  # Codes + one fp16 scale per output channel (in = 32 or 64 rows share it).
  channels = 4 * 32 + 64 + 32  # out channels of q, k, v, out, wi, wo
  expected = 4 + 16 * channels / final['bipolar/quantized_weights']
  assert final['bipolar/w4/bits_per_weight'] == pytest.approx(expected)
  fp32 = final['bipolar/fp32/bits_per_byte']
  assert fp32 == pytest.approx(final['eval/bits_per_byte'], rel=1e-4)
  # 8-bit activations and 4-bit weights are close to fp32; everything is finite and positive.
  assert abs(final['bipolar/w4a8/bits_per_byte'] - fp32) < 0.05 * fp32
  assert abs(final['bipolar/w4a32/bits_per_byte'] - fp32) < 0.05 * fp32
  assert final['bipolar/w4a8/tokens_per_sec'] > 0
  assert final['bipolar/w4a8/speedup_vs_best_float'] == pytest.approx(
    final['bipolar/w4a8/tokens_per_sec']
    / max(final['bipolar/fp32/tokens_per_sec'], final['bipolar/bf16/tokens_per_sec'])
  )
  assert final['bipolar/w4a8/decode_tokens_per_sec'] > 0
  # Greedy decoding with W4A8 matmuls mostly agrees with fp32 (4 tokens × 8 prompts).
  assert 0.5 <= final['bipolar/w4a8/decode_agreement'] <= 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and '## Bipolar-INT bit-plane inference' in report
  assert '| W4A8 bipolar-INT |' in report and (tmp_path / 'bipolar_int.png').exists()
  held = final['bipolar/w4a8/decode_speedup_vs_best_float'] > 1.0
  assert ('**held**' if held else '**did NOT hold**') in report
  assert json.loads((tmp_path / 'final_metrics.json').read_text())['bipolar/exact'] == 1.0
