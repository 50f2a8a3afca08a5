"""experiments/ptq161.py and the ptq plugin: every scale builds, bad methods are named, and a
shrunk tiny run quantizes the trained LM with every method and reports each at its exact cost."""

from __future__ import annotations

import math

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from jaxlab.quant.ptq161 import num_salient, storage_bits_formula
from tests.conftest import REPO, TINY

SPEC = f'{REPO}/experiments/ptq161.py'
METHODS = [
  'fp32',
  'rtn4',
  'rtn3',
  'rtn2',
  'gptq4',
  'gptq3',
  'gptq2',
  'binary',
  'ptq161',
  'ptq161_pp',
]
SHRINK = [
  *TINY,
  '--config.plugins.ptq.group_size=16',
  '--config.plugins.ptq.calib_sequences=8',
  '--config.plugins.ptq.epochs=2',
  '--config.plugins.ptq.lora_steps=3',
]
# The shrunk model's quantized kernels as [in, out] matrices: q, k, v, out; wi; wo (one block).
KERNELS = [(32, 32)] * 4 + [(32, 64), (64, 32)]


@pytest.mark.parametrize('arg', ['tiny', 'gpu'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'ptq161' and config.report.claim.metric == 'ptq/sub2bit_ratio'
  assert config.plugins.ptq.methods.split(',') == METHODS
  plugins = build_plugins(config)  # the gpu scale's data is a real corpus (lm.py's docstring)
  assert plugins['ptq'].finalize is not None and plugins['ptq'].report is not None


@pytest.mark.parametrize('override', ['methods=fp32,rtn9', 'calib_sequences=0', 'group_size=-2'])
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.ptq.{override}'])
  with pytest.raises(ConfigError, match='plugins.ptq'):
    build_plugins(config, build_task(config))


def test_shrunk_tiny_run_reports_every_method_at_its_exact_cost(tmp_path):
  final = train_and_evaluate(load_config(f'{SPEC}:tiny', SHRINK), tmp_path)
  weights = sum(i * o for i, o in KERNELS)
  # Exact accounts: RTN/GPTQ b bits + a float16 scale per 16 rows; binary 1 bit + a float16
  # scale per output channel; PTQ1.61 the closed form of its stored arrays.
  for b in (2, 3, 4):
    assert final[f'ptq/rtn{b}/bits_per_weight'] == b + 16 / 16
    assert final[f'ptq/gptq{b}/bits_per_weight'] == b + 16 / 16
  binary = 1 + 16 * sum(o for _, o in KERNELS) / weights
  assert final['ptq/binary/bits_per_weight'] == pytest.approx(binary, rel=1e-12)
  ptq_bits = sum(storage_bits_formula(i, o, num_salient(i, 0.2)) for i, o in KERNELS)
  for name in ('ptq161', 'ptq161_pp'):
    assert final[f'ptq/{name}/bits_per_weight'] == pytest.approx(ptq_bits / weights, rel=1e-12)
    mask_bits = sum(-(-i // 32) * 32 for i, _ in KERNELS)  # one bit per input, uint32 words
    assert final[f'ptq/{name}/mask_bits_per_weight'] == mask_bits / weights
    assert final[f'ptq/{name}/recon_last'] <= final[f'ptq/{name}/recon_first']
  # fp32 is the train loop's own evaluation; every quantized model is scored and finite.
  assert final['ptq/fp32/bits_per_byte'] == pytest.approx(final['eval/bits_per_byte'], abs=1e-5)
  values = {m: final[f'ptq/{m}/bits_per_byte'] for m in METHODS}
  assert all(math.isfinite(v) and 0 < v < 9 for v in values.values())
  best = min(values[m] for m in ('rtn2', 'gptq2', 'binary'))
  assert final['ptq/sub2bit_ratio'] == pytest.approx(values['ptq161_pp'] / best)
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and '## Post-training quantization' in report
  rows = [line for line in report.splitlines() if line.startswith('| ') and ' | ' in line]
  for m in METHODS:
    assert any(line.startswith(f'| {m} |') for line in rows), m
  assert (tmp_path / 'ptq_bits.png').stat().st_size > 0
