"""experiments/pararnn.py: every scale loads, and shrunk versions run end to end."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxlab.core.config import load_config
from jaxlab.core.sweep import run_sweep
from jaxlab.nn.rnn import NewtonConfig, ParaGRU
from tests.conftest import REPO

EXP = str(REPO / 'experiments' / 'pararnn.py')
SHRINK = [
  '--config.model.width=32',
  '--config.model.depth=1',
  '--config.model.mlp_dim=64',
  '--config.data.batch_size=8',
  '--config.data.eval_batches=2',
  '--config.train.steps=6',
  '--config.train.eval_every=3',
  '--config.train.log_every=1',
  '--config.optim.warmup_steps=2',
  '--config.checkpoint.every=3',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]


@pytest.mark.parametrize('arg', ['tiny', 'small', 'gpu', 'parity'])
def test_every_scale_loads(arg):
  config = load_config(f'{EXP}:{arg}')
  assert config.report.paper == 'pararnn' and config.report.claim.text


def test_lm_sweep_checks_the_relative_claim(tmp_path):
  rows = run_sweep(
    f'{EXP}:tiny',
    ['model.mixer=attention,paragru'],
    tmp_path,
    [*SHRINK, '--config.data.seq_len=32', '--config.model.max_len=32'],
  )
  by_mixer = {r['model.mixer']: r for r in rows}
  assert 'eval/newton_residual' in by_mixer['paragru']
  assert 'eval/newton_residual' not in by_mixer['attention']
  report = (tmp_path / 'report.md').read_text()
  ratio = by_mixer['paragru']['eval/bits_per_byte'] / by_mixer['attention']['eval/bits_per_byte']
  assert f'eval/bits_per_byte[model.mixer=attention] = {ratio:.4g}' in report
  point = (tmp_path / 'model.mixer=paragru' / 'report.md').read_text()
  assert 'relative to the sweep point `model.mixer=attention`' in point


def test_parity_run_logs_newton_fallback(tmp_path):
  from jaxlab.core.train import train_and_evaluate

  config = load_config(
    f'{EXP}:parity', [*SHRINK, '--config.data.seq_len=16', '--config.model.max_len=16']
  )
  final = train_and_evaluate(config, tmp_path)
  assert 0.0 <= final['eval/newton_fallback'] <= 1.0
  first = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[0])
  assert {'train/newton_residual', 'train/newton_iterations'} <= set(first)


def test_layer_fallback_returns_the_sequential_states():
  x = jax.random.normal(jax.random.key(0), (2, 64, 4))
  strict = ParaGRU(4, newton=NewtonConfig(iterations=1, fallback=True, fallback_tol=1e-9))
  variables = strict.init(jax.random.key(1), x)
  got, state = strict.apply(variables, x, mutable=['intermediates'])
  want = ParaGRU(4, mode='sequential').apply(variables, x)
  np.testing.assert_array_equal(got, want)
  assert float(state['intermediates']['newton_fallback'][0]) == 1.0
