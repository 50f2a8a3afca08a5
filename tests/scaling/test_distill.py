"""jaxlab.scaling.distill: the KD term against a numpy KL, a zero gradient at the teacher, and
the plugin's weight split (hard_weight · CE + weight · KD) with real teachers. (A student
trained with the plugin: tests/experiments/test_infinite_compute.py.)"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import log_softmax

from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.scaling import distill as distill_lib
from jaxlab.scaling.ensemble import Ensemble, combine_logits
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def teachers(tiny_runs):
  return tiny_runs


def _with_distill(config, **kwargs):
  with config.unlocked():
    config.plugins.distill = ml_collections.ConfigDict(kwargs)
  return config


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_kd_matches_numpy_and_has_zero_gradient_at_the_teacher(temperature):
  rng = np.random.default_rng(0)
  s, t = (rng.normal(size=(2, 3, 5)).astype(np.float32) * 2 for _ in range(2))
  mask = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  log_p, log_q = log_softmax(t / temperature, axis=-1), log_softmax(s / temperature, axis=-1)
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  want = temperature**2 * (kl * mask).sum() / mask.sum()
  np.testing.assert_allclose(distill_lib.distill_loss(s, t, temperature, mask), want, rtol=1e-5)
  grad = jax.grad(distill_lib.distill_loss)(jnp.asarray(t), jnp.asarray(t), temperature, mask)
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)
  assert float(distill_lib.distill_loss(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_plugin_term_is_zero_with_zero_gradient_at_the_ensemble(teachers):
  config = _with_distill(
    tiny_config(), teachers=os.pathsep.join(map(str, teachers)), weight=1.0, hard_weight=1.0
  )
  task = build_task(config)
  term = build_plugins(config, task)['distill'].loss_term
  batch = task.eval_batches(0, 1)[0]
  teacher = combine_logits(Ensemble.from_runs(teachers).member_logits(batch))
  value, grad = jax.jit(jax.value_and_grad(lambda z: term(None, batch, z)))(teacher)
  assert abs(float(value)) < 1e-6
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_plugin_weight_split_matches_numpy(teachers):
  config = _with_distill(
    tiny_config(),
    teachers=tuple(map(str, teachers)),
    weight=0.7,
    hard_weight=0.2,
    temperature=2.0,
  )
  task = build_task(config)
  term = build_plugins(config, task)['distill'].loss_term
  batch = task.eval_batches(0, 1)[0]
  members = np.asarray(Ensemble.from_runs(teachers).member_logits(batch))
  student = np.random.default_rng(1).normal(size=members.shape[1:]).astype(np.float32)
  log_p = log_softmax(members.mean(0) / 2.0, axis=-1)
  kl = (np.exp(log_p) * (log_p - log_softmax(student / 2.0, axis=-1))).sum(-1).mean()
  ce = -np.take_along_axis(log_softmax(student, axis=-1), batch['targets'][..., None], -1).mean()
  # The loop adds CE with weight 1: total = 0.2 CE + 0.7 KD.
  got = float(term(None, batch, jnp.asarray(student))) + ce
  np.testing.assert_allclose(got, 0.2 * ce + 0.7 * 4.0 * kl, rtol=1e-5)


@pytest.mark.parametrize(
  'kwargs, match',
  [({'teachers': ' : '}, 'teachers'), ({'teachers': 'x', 'combine': 'max'}, 'combine')],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
  config = _with_distill(tiny_config(), **kwargs)
  with pytest.raises(ConfigError, match=match):
    build_plugins(config, build_task(config))
