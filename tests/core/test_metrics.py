"""Tests for jaxlab.core.metrics."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from jaxlab.core import metrics


def test_jsonl_round_trip_converts_numpy_and_jax_scalars(tmp_path):
  path = tmp_path / 'run' / 'metrics.jsonl'
  writer = metrics.JsonlWriter(path)
  writer.write_scalars(np.int64(1), {'a': np.float32(0.5), 'b': jnp.asarray(2.25)})
  writer.write_scalars(2, {'a': jnp.float32(0.25), 'c': 3})
  writer.flush()
  records = metrics.read_jsonl(path)
  writer.close()
  assert [r['step'] for r in records] == [1, 2]
  assert records[0]['a'] == 0.5 and records[0]['b'] == 2.25
  assert records[1]['a'] == 0.25 and records[1]['c'] == 3.0
  assert all(isinstance(r['time'], float) for r in records)
  assert all(type(v) is float for r in records for k, v in r.items() if k != 'step')


def test_jsonl_appends_across_writers(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  for step in (1, 2):
    writer = metrics.JsonlWriter(path)
    writer.write_scalars(step, {'loss': float(step)})
    writer.close()
  assert [r['step'] for r in metrics.read_jsonl(path)] == [1, 2]


def test_jsonl_rejects_reserved_names(tmp_path):
  writer = metrics.JsonlWriter(tmp_path / 'metrics.jsonl')
  with pytest.raises(ValueError, match='reserved'):
    writer.write_scalars(1, {'step': 3.0})
  writer.close()


def test_jsonl_resume_drops_exactly_the_later_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  writer = metrics.JsonlWriter(path)
  for step in (10, 20, 30, 40):
    writer.write_scalars(step, {'loss': step / 10})
  writer.close()
  with path.open('a') as f:
    f.write('{"step": 50, "lo')  # A write cut short by the crash.

  writer = metrics.JsonlWriter(path, resume_step=20)
  assert [r['step'] for r in metrics.read_jsonl(path)] == [10, 20]
  writer.write_scalars(30, {'loss': 9.0})
  writer.close()
  records = metrics.read_jsonl(path)
  assert [(r['step'], r['loss']) for r in records] == [(10, 1.0), (20, 2.0), (30, 9.0)]
  assert not list(tmp_path.glob('*.tmp'))


def test_jsonl_resume_without_file_starts_fresh(tmp_path):
  writer = metrics.JsonlWriter(tmp_path / 'metrics.jsonl', resume_step=5)
  writer.write_scalars(6, {'loss': 1.0})
  writer.close()
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'metrics.jsonl')] == [6]


class _Recorder:
  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append(('write', step, dict(scalars)))

  def flush(self):
    self.calls.append(('flush',))

  def close(self):
    self.calls.append(('close',))


def test_multi_writer_fans_out():
  a, b = _Recorder(), _Recorder()
  writer = metrics.MultiWriter([a, b])
  writer.write_scalars(3, {'x': 1.0})
  writer.flush()
  writer.close()
  expected = [('write', 3, {'x': 1.0}), ('flush',), ('close',)]
  assert a.calls == expected and b.calls == expected


def test_create_writer_on_non_main_process_writes_nothing(tmp_path):
  writer = metrics.create_writer(tmp_path, is_main_process=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.close()
  assert not list(tmp_path.iterdir())


def test_create_writer_without_tensorboard_writes_only_jsonl(tmp_path):
  writer = metrics.create_writer(tmp_path, tensorboard=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.close()
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.jsonl']
  assert metrics.read_jsonl(tmp_path / 'metrics.jsonl')[0]['loss'] == 1.0


@pytest.mark.skipif(
  importlib.util.find_spec('tensorboardX') is None,
  reason='tensorboardX is not installed (pip install jaxlab[tensorboard])',
)
def test_create_writer_writes_tensorboard_events(tmp_path):
  writer = metrics.create_writer(tmp_path)
  writer.write_scalars(1, {'train/loss': np.float32(2.0)})
  writer.close()
  events = list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(events) == 1 and events[0].stat().st_size > 0
  assert (tmp_path / 'metrics.jsonl').exists()


def test_progress_disabled_runs():
  progress = metrics.Progress(10, tokens_per_step=128, disable=True)
  for step in range(1, 11):
    progress.update(step, loss=1.0 / step)
  progress.close()


def test_progress_shows_loss_and_tokens_per_second(capsys):
  progress = metrics.Progress(100, initial_step=50, tokens_per_step=1000)
  progress.update(60, loss=jnp.float32(1.5))
  progress.update(70, loss=1.25)
  progress.close()
  err = capsys.readouterr().err
  assert '70/100' in err
  assert 'loss=1.25' in err
  assert 'tok/s=' in err


def test_first_nonfinite_index_finds_nested_nan_under_jit():
  tree = {
    'params': FrozenDict(
      {'dense': {'bias': np.zeros(3), 'kernel': jnp.array([[1.0, jnp.nan]])}, 'emb': np.ones(2)}
    ),
    'step': jnp.int32(3),
  }
  index = jax.jit(metrics.first_nonfinite_index)(tree)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths[int(index)] == "['params']['dense']['kernel']"


def test_first_nonfinite_index_is_minus_one_when_finite():
  tree = {'a': np.ones((2, 2)), 'b': jnp.zeros(3, jnp.bfloat16), 'c': np.array([7], np.int32)}
  assert int(metrics.first_nonfinite_index(tree)) == -1
  assert int(metrics.first_nonfinite_index({'a': jnp.ones(2), 'b': jnp.array([-jnp.inf])})) == 1
