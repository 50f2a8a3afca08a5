"""Resume == uninterrupted (real processes, SIGKILL and SIGTERM); corrupt checkpoints fall back."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxlab.core import metrics as metrics_lib
from jaxlab.core.train import train_and_evaluate
from tests.conftest import LM, REPO, TINY, finalized_steps, load_params, run_cli, tiny_config

# Long enough that a kill lands mid-run; every 5 steps a checkpoint.
STEPS = 300
RUN = [
  'run',
  f'{LM}:tiny',
  *TINY,
  f'--config.train.steps={STEPS}',
  '--config.train.log_every=5',
  '--config.train.eval_every=1000',
  '--config.checkpoint.keep=100',
]


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, '-m', 'jaxlab.cli', *RUN, '--workdir', str(workdir)],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for_checkpoint(workdir: pathlib.Path, proc: subprocess.Popen, step: int) -> None:
  deadline = time.monotonic() + 300
  while not any(s >= step for s in finalized_steps(workdir)):
    assert proc.poll() is None, f'run ended early: {proc.communicate()[1][-2000:]}'
    assert time.monotonic() < deadline, 'no checkpoint appeared'
    time.sleep(0.02)


def _assert_same_params(a: pathlib.Path, b: pathlib.Path) -> None:
  pa, pb = load_params(a), load_params(b)
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(pa)[0], jax.tree.leaves(pb), strict=True
  ):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))  # bitwise on CPU


def _finish(workdir: pathlib.Path) -> None:
  done = run_cli(*RUN, '--workdir', str(workdir))
  assert done.returncode == 0, done.stderr[-2000:]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  _finish(straight)
  proc = _start(killed)
  _wait_for_checkpoint(killed, proc, 10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed_from = finalized_steps(killed)[-1]
  assert 10 <= resumed_from < STEPS  # the kill really interrupted training
  _finish(killed)
  assert finalized_steps(killed)[-1] == STEPS
  _assert_same_params(straight, killed)
  # The metrics file reads like one run: each logged step once, in order.
  steps = [r['step'] for r in metrics_lib.read_jsonl(killed / 'metrics.jsonl') if 'train/loss' in r]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS


def test_sigterm_saves_and_exits_then_resumes_exactly(tmp_path):
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  _finish(straight)
  proc = _start(stopped)
  _wait_for_checkpoint(stopped, proc, 10)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'SIGTERM' in err and 'resume' in err and 'Traceback' not in err
  saved = finalized_steps(stopped)[-1]
  assert 10 <= saved < STEPS
  _finish(stopped)
  _assert_same_params(straight, stopped)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  reference, run = tmp_path / 'reference', tmp_path / 'run'
  train_and_evaluate(tiny_config(), reference)
  train_and_evaluate(tiny_config(), run)
  assert finalized_steps(run) == [5, 10]
  # Corrupt step 10: truncate every file of its saved state.
  for root, _, files in os.walk(run / 'checkpoints' / '10' / 'state'):
    for f in files:
      pathlib.Path(root, f).write_bytes(b'')
  # A half-written save (what a kill during an async save leaves) must be ignored too.
  shutil.copytree(run / 'checkpoints' / '5', run / 'checkpoints' / '15.orbax-checkpoint-tmp-1')
  final = train_and_evaluate(tiny_config(), run)  # resumes from 5, retrains 6..10
  assert 'step 10' in caplog.text and 'could not be restored' in caplog.text
  assert final['train/steps'] == 10
  _assert_same_params(reference, run)
