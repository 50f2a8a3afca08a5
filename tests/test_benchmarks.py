"""The benchmark scripts run (on tiny settings) and report sane numbers, so they never rot."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import LM, REPO


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)


def test_lm_throughput_runs(tmp_path):
  out = _run(
    'benchmarks/lm_throughput.py',
    f'{LM}:tiny',
    '--steps',
    '2',
    '--warmup',
    '1',
    '--config.model.width=32',
    '--config.model.depth=1',
    '--config.data.seq_len=32',
    '--config.model.max_len=32',
    '--json',
    str(tmp_path / 'lm.json'),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  numbers = json.loads((tmp_path / 'lm.json').read_text())
  assert numbers['tokens_per_step'] == 16 * 32
  assert numbers['tokens_per_s'] > 0 and numbers['mfu'] is None  # no meaningful CPU peak
  # PaLM convention: 6·N_nonembedding + 12·depth·width·seq_len per token.
  n, attn = numbers['params_nonembedding'], 12 * 1 * 32 * 32
  assert numbers['model_flops_per_token'] == 6 * n + attn
  assert 'tokens/s' in out.stdout and 'MFU' in out.stdout


def test_pararnn_speed_runs(tmp_path):
  out = _run(
    'benchmarks/pararnn_speed.py',
    '--T',
    '64',
    '--D',
    '8',
    '--B',
    '2',
    '--cells',
    'gru,lstm',
    '--dtype',
    'float32',
    '--repeats',
    '1',
    '--json',
    str(tmp_path / 'p.json'),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  rows = json.loads((tmp_path / 'p.json').read_text())['rows']
  assert [r['cell'] for r in rows] == ['gru', 'lstm']
  for row in rows:  # the timed parallel solver computed the same states and gradients
    assert row['max_abs_diff'] < 1e-4 and row['grad_rel_diff'] < 1e-3
    assert row['speedup_fwd'] > 0 and row['par_bwd_mem'] > 0


def test_precrop_speed_runs(tmp_path):
  out = _run(
    'benchmarks/precrop_speed.py',
    'experiments/precropping.py:tiny',
    '--steps',
    '2',
    '--warmup',
    '1',
    '--config.model.channels=(8, 8, 16, 16)',
    '--config.data.batch_size=16',
    '--json',
    str(tmp_path / 'precrop.json'),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  numbers = json.loads((tmp_path / 'precrop.json').read_text())
  # The cropped model is narrower in every layer and has about the masked model's budget.
  widths = numbers['cropped_model']['channels']
  assert len(widths) == 4 and all(w <= c for w, c in zip(widths, (8, 8, 16, 16), strict=True))
  assert numbers['cropped_params'] < numbers['dense_params']
  assert numbers['cropped_flops'] < numbers['dense_flops']
  assert numbers['masked_params'] < numbers['dense_params']
  assert numbers['masked_over_cropped'] > 0 and 'speedup of the cropped step' in out.stdout


def test_sweep_throughput_runs(tmp_path):
  out = _run(
    'benchmarks/sweep_throughput.py',
    '--k',
    '2',
    '--steps',
    '3',
    '--config.model.width=32',
    '--config.model.depth=1',
    '--config.model.heads=2',
    '--config.model.mlp_dim=64',
    '--config.data.seq_len=32',
    '--config.model.max_len=32',
    '--config.data.batch_size=8',
    '--config.data.eval_batches=1',
    '--json',
    str(tmp_path / 'sweep.json'),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  numbers = json.loads((tmp_path / 'sweep.json').read_text())
  assert numbers['k'] == 2 and numbers['sequential_s'] > 0 and numbers['vectorized_s'] > 0
  assert numbers['max_rel_eval_loss_diff'] < 1e-5  # the same two models either way
  assert 'models/hour' in out.stdout and 'speedup' in out.stdout
