"""Optimizer-state shardings: parameter-shaped subtrees follow the parameters, the rest is
replicated, read from the abstract state alone (so `init` may need the parameter shapes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlab.core.train_state import opt_state_shardings

PARAMS = {'w': jnp.zeros((4, 3)), 'b': jnp.zeros((3,)), 'head': {'k': jnp.zeros((3, 2))}}
SHARDS = {'w': 'S(w)', 'b': 'S(b)', 'head': {'k': 'S(k)'}}


def _shardings(tx: optax.GradientTransformation):
  return opt_state_shardings(jax.eval_shape(tx.init, PARAMS), PARAMS, SHARDS, 'R')


def test_adam_moments_follow_params_and_count_is_replicated():
  adam, _ = _shardings(optax.chain(optax.scale_by_adam(), optax.scale(-0.1)))
  assert adam.mu == SHARDS and adam.nu == SHARDS
  assert adam.count == 'R'


def test_multi_transform_partitions_keep_their_holes():
  labels = {'w': 'train', 'b': 'frozen', 'head': {'k': 'train'}}
  tx = optax.multi_transform({'train': optax.adam(1e-3), 'frozen': optax.set_to_zero()}, labels)
  out = _shardings(tx)
  mu = out.inner_states['train'].inner_state[0].mu
  assert mu['w'] == 'S(w)' and mu['head']['k'] == 'S(k)'
  assert isinstance(mu['b'], optax.MaskedNode)


def test_init_that_needs_parameter_shapes():
  """A state with per-row statistics (not parameter-shaped) is replicated; `init` runs on
  the abstract parameters, never on a leafless placeholder."""

  def init(params):
    rows = jax.tree.map(lambda p: jnp.zeros(p.shape[:1]), params)  # fails without leaves
    return {'rows': rows, 'mask': jax.tree.map(jnp.ones_like, params)}

  tx = optax.GradientTransformation(init, lambda u, s, p=None: (u, s))
  out = _shardings(tx)
  assert out['mask'] == SHARDS
  assert out['rows'] == {'w': 'R', 'b': 'S(b)', 'head': {'k': 'R'}}  # b's rows are b's shape
