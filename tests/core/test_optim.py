"""Schedules hit their closed-form values; weight decay skips vectors; plugin config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab.core.config import base_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.optim import make_optimizer, make_schedule
from jaxlab.core.plugins import build_plugins


@pytest.mark.parametrize('kind', ['cosine', 'linear', 'constant'])
def test_schedule_closed_forms(kind):
  o = base_config().optim
  o.lr, o.warmup_steps, o.end_lr_fraction, o.schedule = 0.2, 10, 0.1, kind
  s = make_schedule(o, total_steps=110)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.1)  # halfway through the linear warmup
  assert float(s(10)) == pytest.approx(0.2)  # peak
  mid = {'cosine': 0.02 + 0.18 * 0.5, 'linear': 0.11, 'constant': 0.2}[kind]
  assert float(s(60)) == pytest.approx(mid, rel=1e-5)  # half-way through the decay
  end = {'cosine': 0.02, 'linear': 0.02, 'constant': 0.2}[kind]
  assert float(s(110)) == pytest.approx(end, rel=1e-5)


def test_adamw_decays_matrices_not_vectors():
  o = base_config().optim
  o.lr, o.warmup_steps, o.weight_decay, o.clip_norm = 0.1, 0, 0.5, 0.0
  tx, _ = make_optimizer(o, total_steps=10)
  params = {'kernel': jnp.ones((2, 2)), 'scale': jnp.ones(2)}
  zero = {'kernel': jnp.zeros((2, 2)), 'scale': jnp.zeros(2)}
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates['scale'], np.zeros(2))


def test_clip_norm_bounds_the_update():
  o = base_config().optim
  o.name, o.lr, o.warmup_steps, o.clip_norm, o.b1 = 'sgd', 1.0, 0, 1.0, 0.0
  tx, _ = make_optimizer(o, total_steps=10)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, tx.init(params), params)
  assert float(jnp.linalg.norm(updates['w'])) == pytest.approx(1.0, rel=1e-6)


def test_plugin_config_errors_name_the_plugin():
  with pytest.raises(ConfigError, match='plugins.nope'):
    build_plugins(ml_collections.ConfigDict({'plugins': {'nope': {}}}))
  with pytest.raises(ConfigError, match='plugins.z_loss'):
    build_plugins(ml_collections.ConfigDict({'plugins': {'z_loss': {'weight': 1.0}}}))
  with pytest.raises(ConfigError, match='plugins.freeze.pattern'):
    build_plugins(ml_collections.ConfigDict({'plugins': {'freeze': {'pattern': '(['}}}))


def test_adamw_does_not_decay_2d_biases():
  o = base_config().optim
  o.lr, o.warmup_steps, o.weight_decay, o.clip_norm = 0.1, 0, 0.5, 0.0
  tx, _ = make_optimizer(o, total_steps=10)
  params = {'input_bias': jnp.ones((3, 2)), 'recurrent': jnp.ones((3, 2))}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates['input_bias'], np.zeros((3, 2)))
  assert float(updates['recurrent'][0, 0]) == pytest.approx(-0.05)
