"""Calibration statistics are those of each layer's real inputs, in the kernel's matrix view."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxlab.nn.transformer import TransformerConfig, TransformerLM
from jaxlab.quant.calibration import (
  calibration_tokens,
  collect_block_inputs,
  collect_layer_stats,
  with_kernels,
)
from jaxlab.quant.model import DEFAULT_RULES, as_matrix, kernel_paths
from jaxlab.quant.tensor import is_quantized, quantize

CFG = TransformerConfig(vocab_size=64, width=16, depth=2, heads=2, mlp_dim=32, max_len=8)


@pytest.fixture(scope='module')
def lm():
  model = TransformerLM(CFG)
  tokens = jax.random.randint(jax.random.key(0), (4, 8), 0, 64)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(1), tokens)['params'])
  _, state = jax.jit(lambda p, t: model.apply({'params': p}, t, capture_intermediates=True))(
    params, tokens
  )
  return model, params, tokens, state['intermediates']


def _output(intermediates: dict, path: str) -> np.ndarray:
  node = intermediates
  for key in path.split('/')[:-1]:
    node = node[key]
  return np.asarray(node['__call__'][0], np.float64)


def test_gram_matrix_reproduces_every_layer_output_energy(lm):
  """`trace(Wᵀ XᵀX W) = ‖XW‖² = ‖Y‖²` with `W` the kernel's `[in, out]` view and `Y` the
  layer's output captured independently (Flax `capture_intermediates`)."""
  model, params, tokens, inter = lm
  stats = collect_layer_stats(model, params, [tokens[:2], tokens[2:]])
  paths = kernel_paths(params, DEFAULT_RULES)
  assert sorted(stats) == sorted(paths) and len(paths) == 12
  for path in paths:
    w = np.asarray(as_matrix(path, params_at(params, path))[0], np.float64)
    energy = np.trace(w.T @ np.asarray(stats[path].xtx, np.float64) @ w)
    np.testing.assert_allclose(energy, np.sum(_output(inter, path) ** 2), rtol=1e-4)
    assert float(stats[path].count) == tokens.size


def params_at(params, path):
  for key in path.split('/'):
    params = params[key]
  return params


def test_absmax_is_the_per_channel_maximum_of_the_normed_inputs(lm):
  model, params, tokens, inter = lm
  stats = collect_layer_stats(model, params, [tokens])
  normed = np.asarray(inter['block_1']['ffn_norm']['__call__'][0]).reshape(-1, CFG.width)
  np.testing.assert_allclose(
    stats['block_1/ffn/wi/kernel'].absmax, np.abs(normed).max(0), rtol=1e-6
  )
  np.testing.assert_allclose(
    stats['block_1/ffn/wi/kernel'].hessian(), 2 * normed.T @ normed / 32, rtol=1e-4
  )


def test_block_inputs_chain_embedding_and_block_outputs(lm):
  model, params, tokens, inter = lm
  inputs = collect_block_inputs(model, params, tokens)
  np.testing.assert_allclose(inputs['block_0'], inter['embed']['__call__'][0], atol=1e-6)
  np.testing.assert_allclose(inputs['block_1'], inter['block_0']['__call__'][0], atol=1e-6)


def test_with_kernels_wraps_rank3_kernels_and_leaves_the_input_alone(lm):
  _, params, _, _ = lm
  path = 'block_0/attention/query/kernel'
  matrix, _ = as_matrix(path, params_at(params, path))
  out = with_kernels(params, {path: jax.jit(quantize, static_argnums=1)(matrix, 4)})
  leaf = params_at(out, path)
  assert is_quantized(leaf) and leaf.dequantize().shape == (16, 2, 8)
  assert not is_quantized(params_at(params, path))  # the input tree is untouched


def test_calibration_tokens_takes_rows_in_order_and_rejects_too_many():
  batches = [{'inputs': np.full((3, 5), i)} for i in range(3)]
  got = calibration_tokens(iter(batches), 7)
  assert got.shape == (7, 5) and list(got[:, 0]) == [0, 0, 0, 1, 1, 1, 2]
  with pytest.raises(ValueError, match='num_sequences'):
    calibration_tokens(iter(batches), 10)
