"""experiments/polycom.py, pangu_pi.py and min_transformer.py: every scale loads, and a shrunk
sweep of each trains end to end and writes a report with the claim checked per point."""

from __future__ import annotations

import math

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.sweep import run_sweep
from tests.conftest import REPO

EXP = REPO / 'experiments'
QUIET = [
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]
LM_SHRINK = [
  *QUIET,
  '--config.model.width=32',
  '--config.model.depth=2',
  '--config.model.heads=2',
  '--config.model.max_len=32',
  '--config.data.seq_len=32',
  '--config.data.batch_size=8',
  '--config.data.eval_batches=1',
  '--config.train.steps=4',
  '--config.train.log_every=2',
  '--config.train.eval_every=4',
  '--config.optim.warmup_steps=1',
  '--config.checkpoint.every=4',
]


@pytest.mark.parametrize(
  'name, scales',
  [
    ('polycom', ['tiny', 'small', 'gpu']),
    ('pangu_pi', ['tiny', 'small', 'gpu']),
    ('min_transformer', ['tiny', 'small']),
  ],
)
def test_every_scale_loads_with_its_claim(name, scales):
  for scale in scales:
    config = load_config(f'{EXP}/{name}.py:{scale}')
    assert config.report.paper == name and config.report.claim.text
    assert config.report.claim.baseline
  with pytest.raises(Exception, match='expected a scale'):
    load_config(f'{EXP}/{name}.py:huge')


def test_polycom_sweep_compares_activations_at_equal_parameters(tmp_path):
  shrink = [*LM_SHRINK, '--config.model.mlp_dim=48']
  grid = ['model.activation=swiglu,polynorm']
  rows = run_sweep(f'{EXP}/polycom.py:tiny', grid, tmp_path, shrink)
  counts = [r['params/count'] for r in rows]
  # The FFNs are SwiGLU-matched: PolyNorm adds only its a (3) and b (1) per layer.
  assert counts[1] == counts[0] + 2 * 4
  for r in rows:
    assert math.isfinite(r['eval/bits_per_byte']) and r['eval/bits_per_byte'] < 8.5
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report
  assert 'model.activation=polynorm' in report


def test_pangu_sweep_reports_feature_collapse_and_latency(tmp_path):
  grid = ['model.block=prenorm,augmented']
  rows = run_sweep(f'{EXP}/pangu_pi.py:tiny', grid, tmp_path, LM_SHRINK)
  base, aug = rows
  # d=32, r=8, one branch per layer, 2 layers
  assert aug['params/count'] - base['params/count'] == 2 * (2 * 32 * 8)
  for r in rows:
    ranks = [r[f'collapse/erank_{i}'] for i in range(3)]  # embedding + 2 blocks
    assert all(1.0 <= e <= 32.0 for e in ranks)
    assert r['collapse/erank_last'] == ranks[-1]
    assert 0.0 < r['collapse/diversity_2'] <= 1.0
    assert r['latency/forward_ms'] > 0
  run_report = (tmp_path / 'model.block=augmented' / 'report.md').read_text()
  assert '## Feature collapse' in run_report and 'effective_rank.png' in run_report
  assert (tmp_path / 'model.block=augmented' / 'effective_rank.png').exists()
  sweep_report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in sweep_report and 'collapse/erank_last' in sweep_report


def test_min_transformer_sweep_on_text(tmp_path):
  shrink = [
    *QUIET,
    '--config.model.width=16',
    '--config.model.depth=1',
    '--config.model.mlp_dim=32',
    '--config.data.source=corpus_topics',
    '--config.data.seq_len=16',
    '--config.train.steps=4',
    '--config.train.eval_every=4',
    '--config.optim.warmup_steps=1',
    '--config.checkpoint.every=4',
  ]
  grid = ['model.reduction=none,symmetric']
  full, sym = run_sweep(f'{EXP}/min_transformer.py:tiny', grid, tmp_path, shrink)
  # width 16, 2 heads: attention 4·16² + MLP (2·16·32 + 48) + its norm (32) per layer, against
  # 2·16·17/2 symmetric entries
  assert full['params/count'] - sym['params/count'] == 4 * 256 + 2 * 16 * 32 + 48 + 32 - 272
  for r in (full, sym):
    assert 0.0 <= r['eval/accuracy'] <= 1.0
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and 'eval/accuracy' in report
