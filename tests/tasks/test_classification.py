"""The classification task end to end: it learns, its evaluation is exact over the whole test
split, and BatchNorm statistics are trained, checkpointed and restored like the parameters."""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlab.core.config import base_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.train import train_and_evaluate
from jaxlab.tasks.classification import ClassificationTask
from jaxlab.vision import vision_config
from tests.conftest import finalized_steps

HALF = 15  # the interrupted run stops here; the full run is 2 * HALF steps


def _config(steps: int = 2 * HALF):
  c = base_config()
  c.task.name = 'classification'
  c.data.source = 'digits'
  c.data.batch_size = 32
  c.data.eval_batches = 100  # all of the 90-image test split: 3 batches, the last one padded
  c.model = vision_config('vgg', channels=(8, 8), pool_after=(0,))
  c.optim.lr = 3e-2
  c.optim.warmup_steps = 2
  # Constant after warmup, so a run of HALF steps follows the same schedule as the first HALF
  # of a 2 * HALF run (a cosine decay would depend on train.steps).
  c.optim.schedule = 'constant'
  c.train.steps = steps
  c.train.log_every = 5
  c.train.eval_every = 1000
  c.train.progress = False
  c.checkpoint.every = 1000  # only the final save of each invocation
  c.checkpoint.async_save = False
  c.metrics.tensorboard = False
  return c


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-example softmax cross-entropy in float64 NumPy (nats)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]


def _load_state(workdir: pathlib.Path) -> dict:
  """The latest checkpointed train state (params, opt_state, model_state, step) as numpy."""
  step = finalized_steps(workdir)[-1]
  restored = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
  return jax.tree.map(np.asarray, restored)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """One uninterrupted 2 * HALF-step run: `(workdir, final metrics)`."""
  workdir = tmp_path_factory.mktemp('straight')
  return workdir, train_and_evaluate(_config(), workdir)


def test_learns_digits_well_above_chance(straight):
  workdir, final = straight
  assert final['train/steps'] == 2 * HALF
  assert final['eval/accuracy'] > 0.3, final  # chance is 0.1
  assert final['eval/loss'] < np.log(10), final  # a uniform guess scores ln 10
  saved = json.loads((workdir / 'final_metrics.json').read_text())
  assert saved['eval/accuracy'] == final['eval/accuracy']
  assert 'vgg classifier on digits' in (workdir / 'report.md').read_text()


def test_eval_equals_a_manual_pass_over_the_whole_test_split(straight):
  workdir, final = straight
  task = ClassificationTask(_config())
  x, y = task.data.test_inputs, task.data.test_labels
  batches = task.eval_batches(0, 1)
  # The check below is only meaningful if the last batch really is padded.
  assert len(batches) * 32 > len(y) and sum(b['mask'].sum() for b in batches) == len(y)

  state = _load_state(workdir)
  variables = {'params': state['params'], **state['model_state']}
  logits = np.asarray(task.model.apply(variables, x, train=False), np.float64)
  accuracy = np.mean(np.argmax(logits, -1) == y)
  loss = np.mean(_cross_entropy(logits, y))
  assert final['eval/accuracy'] == pytest.approx(accuracy, abs=1e-6)
  assert final['eval/loss'] == pytest.approx(loss, rel=1e-5)

  # Counting the padding rows (copies of the last example) would give a measurably different
  # loss, so the equality above does test the weighting.
  padded = np.concatenate([b['inputs'] for b in batches])
  padded_labels = np.concatenate([b['labels'] for b in batches])
  unmasked = _cross_entropy(task.model.apply(variables, padded, train=False), padded_labels)
  assert abs(np.mean(unmasked) - loss) > 1e-4


def test_training_updates_batch_stats(straight):
  workdir, _ = straight
  stats = _load_state(workdir)['model_state']['batch_stats']
  assert set(stats) == {'bn0', 'bn1'}
  for layer, s in stats.items():
    assert np.all(np.isfinite(s['mean'])) and np.all(s['var'] > 0), layer
    # Flax initialises mean 0, var 1; training moves every channel.
    assert np.all(s['mean'] != 0.0) and np.all(s['var'] != 1.0), layer


def test_interrupted_and_resumed_equals_uninterrupted(straight, tmp_path, caplog):
  workdir = tmp_path / 'resumed'
  train_and_evaluate(_config(steps=HALF), workdir)
  assert finalized_steps(workdir) == [HALF]
  half_stats = _load_state(workdir)['model_state']['batch_stats']
  with caplog.at_level(logging.INFO, logger='jaxlab.core.train'):
    final = train_and_evaluate(_config(steps=2 * HALF), workdir)
  assert f'resumed from step {HALF}' in caplog.text  # it continued, it did not start over
  assert final['train/steps'] == 2 * HALF

  want, got = _load_state(straight[0]), _load_state(workdir)
  assert int(got['step']) == 2 * HALF
  want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
  got_leaves = jax.tree.leaves(got)
  for (path, a), b in zip(want_leaves, got_leaves, strict=True):
    # Params, optimizer state and batch_stats: bitwise on CPU.
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # The second half moved the statistics on from where the first half left them.
  end_stats = got['model_state']['batch_stats']
  assert not np.allclose(half_stats['bn0']['mean'], end_stats['bn0']['mean'])
  assert final['eval/accuracy'] == straight[1]['eval/accuracy']


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('source', 'imagenet', r"data\.source: expected one of .*'digits'.*got 'imagenet'"),
    ('source', 'cifar10', r'data: data\.path: expected the cifar-10-batches-py directory'),
  ],
)
def test_bad_data_is_a_config_error_before_training(tmp_path, field, value, match):
  config = _config()
  config.data[field] = value
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()  # raised before any file was written
