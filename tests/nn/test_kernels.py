"""`as_matrix`: the `[in, out]` view of every kernel kind computes the layer as `x @ W`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn.kernels import as_matrix, in_rank


def test_transformer_projections_are_x_times_matrix():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  qkv = jnp.asarray(rng.normal(size=(8, 2, 4)), jnp.float32)  # [embed, heads, kv]
  out = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)  # [heads, kv, embed]
  m, _ = as_matrix('block_0/attention/query/kernel', qkv)
  want = jnp.einsum('btd,dnh->btnh', x, qkv).reshape(2, 5, 8)
  np.testing.assert_allclose(x @ m, want, rtol=1e-5, atol=1e-5)
  h = jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32)
  m, _ = as_matrix('block_0/attention/out/kernel', out)
  want = jnp.einsum('btnh,nhd->btd', h, out)
  np.testing.assert_allclose(h.reshape(2, 5, 8) @ m, want, rtol=1e-5, atol=1e-5)


def test_conv_and_dense_contract_all_but_the_last_axis():
  assert in_rank('conv_0/kernel', 4) == 3 and in_rank('dense/kernel', 2) == 1
  assert in_rank('block_0/attention/value/kernel', 3) == 1
  k = jnp.arange(3 * 3 * 4 * 5, dtype=jnp.float32).reshape(3, 3, 4, 5)
  m, restore = as_matrix('conv_0/kernel', k)
  assert m.shape == (36, 5)
  np.testing.assert_array_equal(restore(m), k)
  # A 3x3 conv at one output position is the flattened patch times the matrix.
  patch = jax.random.normal(jax.random.key(1), (3, 3, 4))
  np.testing.assert_allclose(patch.reshape(-1) @ m, jnp.einsum('hwi,hwio->o', patch, k), rtol=1e-5)
  with pytest.raises(ValueError, match='rank >= 2'):
    as_matrix('norm/scale', jnp.ones(3))
