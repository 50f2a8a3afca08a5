"""Shared fixtures: a tiny LM config small enough for a test, and helpers to read runs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import jaxlab.tasks  # noqa: F401  (registers the built-in tasks)
from jaxlab.core.config import load_config
from jaxlab.core.sweep import load_point_params

REPO = pathlib.Path(__file__).resolve().parents[1]
LM = str(REPO / 'experiments' / 'lm.py')

# A model that trains in a second or two: the structure of lm.py:tiny, much smaller.
TINY = [
  '--config.model.width=32',
  '--config.model.depth=1',
  '--config.model.heads=2',
  '--config.model.mlp_dim=64',
  '--config.model.max_len=32',
  '--config.data.seq_len=32',
  '--config.data.batch_size=8',
  '--config.data.eval_batches=2',
  '--config.train.steps=10',
  '--config.train.log_every=1',
  '--config.train.eval_every=5',
  '--config.train.progress=False',
  '--config.optim.warmup_steps=2',
  '--config.checkpoint.every=5',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]


def tiny_config(*overrides: str):
  return load_config(f'{LM}:tiny', [*TINY, *overrides])


def finalized_steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def load_params(workdir: pathlib.Path, step: int | None = None) -> dict:
  """The parameters saved in a run's checkpoint (the latest by default), as numpy arrays."""
  return load_point_params(workdir, step)


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
  """`jaxlab ...` in a subprocess (a real process: signals, exit codes, device counts)."""
  full_env = {**os.environ, **(env or {})}
  return subprocess.run(
    [sys.executable, '-m', 'jaxlab.cli', *args],
    cwd=REPO,
    env=full_env,
    capture_output=True,
    text=True,
    **kwargs,
  )


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
  return tmp_path / 'run'


def pytest_collection_modifyitems(config, items):
  """`slow` tests are skipped when CI=true (run them with `pytest -m slow`); `gpu` tests run
  only where JAX sees a GPU."""
  import jax

  skip_slow = pytest.mark.skip(reason='slow: skipped in CI (CI=true); run with `pytest -m slow`')
  skip_gpu = pytest.mark.skip(reason='needs a GPU')
  in_ci = os.environ.get('CI', '').lower() == 'true' and 'slow' not in (
    config.option.markexpr or ''
  )
  has_gpu = any(d.platform == 'gpu' for d in jax.devices())
  for item in items:
    if in_ci and item.get_closest_marker('slow'):
      item.add_marker(skip_slow)
    if item.get_closest_marker('gpu') and not has_gpu:
      item.add_marker(skip_gpu)


@pytest.fixture(scope='session')
def tiny_runs(tmp_path_factory) -> list[pathlib.Path]:
  """Two finished 6-step tiny LM runs (seeds 0 and 1), shared by the tests that load trained
  runs (ensembles, distillation teachers)."""
  root = tmp_path_factory.mktemp('tiny_runs')
  steps = ['--config.train.steps=6', '--config.train.eval_every=3', '--config.checkpoint.every=3']
  from jaxlab.core.train import train_and_evaluate

  for seed in (0, 1):
    train_and_evaluate(tiny_config(*steps, f'--config.seed={seed}'), root / f's{seed}')
  return [root / 's0', root / 's1']
