"""`jaxlab run / sweep / list` end to end in real subprocesses."""

from __future__ import annotations

import csv
import json

from tests.conftest import LM, TINY, finalized_steps, run_cli


def test_run_writes_everything(tmp_path):
  workdir = tmp_path / 'lm'
  out = run_cli('run', f'{LM}:tiny', *TINY, '--workdir', str(workdir))
  assert out.returncode == 0, out.stderr[-2000:]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['width'] == 32  # the override, resolved
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[0])['step'] == 1 and 'train/loss' in json.loads(lines[0])
  report = (workdir / 'report.md').read_text()
  assert '## Claim' in report and 'eval/bits_per_byte' in report
  assert (workdir / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert finalized_steps(workdir) == [5, 10]
  assert 'eval/bits_per_byte' in out.stdout


def test_user_mistakes_are_messages_not_tracebacks(tmp_path):
  cases = [
    (['run', f'{LM}:tiny', *TINY, '--config.model.width=33'], 'model.width'),
    (['run', f'{LM}:tiny', '--config.optim.lr=fast'], 'optim.lr: could not use'),
    (['run', 'experiments/missing.py', '--config.seed=1'], 'not a file'),
    (['run', f'{LM}:tiny', '--lr=1'], 'unrecognised argument'),
  ]
  for args, expected in cases:
    out = run_cli(*args, '--workdir', str(tmp_path / 'bad'))
    assert out.returncode == 2, (args, out.stderr[-1000:])
    assert expected in out.stderr and 'Traceback' not in out.stderr, out.stderr[-1000:]


def test_list_shows_experiments():
  out = run_cli('list')
  assert out.returncode == 0
  assert 'lm' in out.stdout and 'Baseline transformer' in out.stdout


def test_sweep_runs_each_point_once(tmp_path):
  args = [
    'sweep',
    f'{LM}:tiny',
    *TINY,
    '--config.train.steps=2',
    '--config.checkpoint.every=2',
    '--grid',
    'optim.lr=1e-3,3e-3',
    '--grid',
    'model.width=32,64',
    '--workdir',
    str(tmp_path),
  ]
  out = run_cli(*args)
  assert out.returncode == 0, out.stderr[-2000:]
  rows = list(csv.DictReader((tmp_path / 'results.csv').open()))
  assert [(r['optim.lr'], r['model.width']) for r in rows] == [
    ('1e-3', '32'),
    ('1e-3', '64'),
    ('3e-3', '32'),
    ('3e-3', '64'),
  ]
  assert all(float(r['eval/loss']) > 0 for r in rows)
  assert (tmp_path / 'sweep.png').exists()
  json.loads((tmp_path / 'optim.lr=1e-3,model.width=64' / 'config.json').read_text())
  stamps = {p: p.stat().st_mtime for p in tmp_path.glob('*/final_metrics.json')}
  again = run_cli(*args)  # finished points are skipped, not retrained
  assert again.returncode == 0
  assert {p: p.stat().st_mtime for p in tmp_path.glob('*/final_metrics.json')} == stamps
