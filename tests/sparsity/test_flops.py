"""FLOP counts: contractions of a dense MLP and of a conv by formula, sparse kernels scaled by
their density (also through a jitted forward), and XLA's own count against them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn import build_model
from jaxlab.sparsity import contraction_flops, xla_flops
from jaxlab.vision import vision_config

B = 6
HIDDEN, CLASSES = (32, 16), 10


def _variables(model, x, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), dict(shapes))


def _mlp():
  model = build_model(vision_config('mlp', hidden=HIDDEN), CLASSES)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(B, 4, 4, 2)), jnp.float32)
  return model, _variables(model, x), x


def _sparsify(variables: dict, path: tuple[str, ...], fraction: float, seed: int = 2) -> dict:
  """A copy with exactly `fraction` of the kernel at `path` set to 0."""
  params = jax.tree.map(np.array, variables['params'])
  leaf = params
  for k in path[:-1]:
    leaf = leaf[k]
  kernel = leaf[path[-1]]
  off = np.random.default_rng(seed).permutation(kernel.size)[: round(fraction * kernel.size)]
  kernel.reshape(-1)[off] = 0.0
  assert np.count_nonzero(kernel) == kernel.size - round(fraction * kernel.size)
  return {**variables, 'params': params}


def test_dense_mlp_is_twice_batch_times_weights():
  model, variables, x = _mlp()
  widths = [32, *HIDDEN, CLASSES]  # the 4x4x2 input flattens to 32
  want = 2 * B * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
  apply = lambda v, x: model.apply(v, x)  # noqa: E731
  assert contraction_flops(apply, variables, x) == want
  assert contraction_flops(apply, variables, x, sparse=False) == want
  assert contraction_flops(apply, variables, x[:1]) == want / B


@pytest.mark.parametrize(
  'kernel, strides, padding, size, out',
  [(3, 1, 'SAME', 8, 8), (3, 2, 'VALID', 9, 4), (1, 1, 'SAME', 5, 5)],
)
def test_conv_is_output_positions_times_window_times_channels(kernel, strides, padding, size, out):
  c_in, c_out = 3, 5
  conv = nn.Conv(c_out, (kernel, kernel), strides=strides, padding=padding, use_bias=False)
  x = jnp.ones((B, size, size, c_in))
  variables = _variables(conv, x)
  apply = lambda v, x: conv.apply(v, x)  # noqa: E731
  assert jax.eval_shape(apply, variables, x).shape == (B, out, out, c_out)
  assert contraction_flops(apply, variables, x) == 2 * out * out * kernel**2 * c_in * c_out * B


def test_sparse_kernels_scale_by_their_density():
  model, variables, x = _mlp()
  sparse = _sparsify(variables, ('dense0', 'kernel'), 0.75)
  apply = lambda v, x: model.apply(v, x)  # noqa: E731
  want = 2 * B * (0.25 * 32 * 32 + 32 * 16 + 16 * 10)
  assert contraction_flops(apply, sparse, x) == want
  assert contraction_flops(apply, sparse, x, sparse=False) == 2 * B * (32 * 32 + 32 * 16 + 160)
  # Through a jitted forward (as the prune plugin counts) the kernels are still recognised.
  assert contraction_flops(jax.jit(apply), sparse, x) == want

  conv = nn.Conv(8, (3, 3), padding='VALID', use_bias=False)
  xc = jnp.ones((B, 6, 6, 4))
  dense_vars = _variables(conv, xc)
  capply = lambda v, x: conv.apply(v, x)  # noqa: E731
  dense = contraction_flops(capply, dense_vars, xc)
  assert contraction_flops(capply, _sparsify(dense_vars, ('kernel',), 0.75), xc) == dense / 4


def test_xla_counts_at_least_the_contractions():
  model, variables, x = _mlp()
  apply = lambda v, x: model.apply(v, x)  # noqa: E731
  contractions = contraction_flops(apply, variables, x)
  xla = xla_flops(apply, variables, x)
  # XLA also counts biases and activations; for an MLP the matmuls dominate.
  assert contractions < xla < 2 * contractions
  # The same for an unpadded conv (with padding XLA leaves out the products with the padding
  # zeros, which the contraction count, like the papers', includes).
  conv = nn.Conv(5, (3, 3), strides=2, padding='VALID')
  xc = jnp.ones((B, 9, 9, 3))
  cvars = _variables(conv, xc)
  capply = lambda v, x: conv.apply(v, x)  # noqa: E731
  contractions = contraction_flops(capply, cvars, xc)
  assert contractions < xla_flops(capply, cvars, xc) < 2 * contractions
  # A bigger batch: XLA's count grows with it as the contraction count does.
  assert xla_flops(apply, variables, jnp.concatenate([x, x])) == pytest.approx(2 * xla, rel=1e-6)
