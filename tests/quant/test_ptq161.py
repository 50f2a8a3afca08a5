"""PTQ1.61: the structured mask, the exact bits account, the dequantized structure, block-wise
reconstruction and the restorative-LoRA preprocessing."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core.task import build_task
from jaxlab.quant.calibration import calibration_tokens
from jaxlab.quant.model import DEFAULT_RULES, matrix_leaf
from jaxlab.quant.ptq161 import (
  SaliencyMaskedTensor,
  init_layer,
  num_salient,
  ptq161_params,
  restorative_lora,
  salient_mask,
  storage_bits_formula,
)
from jaxlab.quant.tensor import bits_per_weight, quantize
from tests.conftest import tiny_config


@pytest.mark.parametrize('n', [10, 37, 128])
def test_mask_selects_exactly_the_top_fraction_of_input_channels(n):
  stat = np.random.default_rng(n).integers(0, 5, size=n).astype(np.float32)  # many ties
  mask = np.asarray(salient_mask(stat, 0.2))
  k = max(round(0.2 * n), 1)
  assert mask.sum() == k == num_salient(n, 0.2)
  np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(np.argsort(-stat, kind='stable')[:k]))
  with pytest.raises(ValueError, match='fraction'):
    salient_mask(stat, 1.0)


@pytest.mark.parametrize('shape', [(40, 24), (64, 128)])
def test_bits_account_is_the_closed_form_and_the_bits_actually_stored(shape):
  rng = np.random.default_rng(0)
  w = rng.normal(size=shape).astype(np.float32)
  layer, theta = init_layer(w, rng.random(shape[0]).astype(np.float32))
  t = layer.pack(theta)
  stored = sum(x.size * x.dtype.itemsize * 8 for x in jax.tree_util.tree_leaves(t))
  k = num_salient(shape[0], 0.2)
  assert t.storage_bits() == stored == storage_bits_formula(*shape, k)
  assert bits_per_weight({'w': t}) == stored / (shape[0] * shape[1])


def test_bits_per_weight_at_llama_width_is_about_1_61_with_a_0_0002_bit_mask():
  n = 4096
  bpw = storage_bits_formula(n, n, num_salient(n, 0.2)) / n**2
  assert 1.60 < bpw < 1.63
  assert n / n**2 < 0.00025  # the mask: one bit per input channel


def test_dequantized_rows_are_4bit_salient_and_two_valued_binary():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(20, 6)).astype(np.float32)
  stat = rng.random(20).astype(np.float32)
  layer, theta = init_layer(w, stat)
  t = layer.pack(theta)
  w_hat = np.asarray(t.dequantize())
  mask = np.asarray(salient_mask(stat, 0.2))
  np.testing.assert_array_equal(np.asarray(t.salient_rows()), mask)
  rtn4 = jax.jit(lambda x: quantize(x, 4, symmetric=False).dequantize())(w[mask])
  np.testing.assert_allclose(w_hat[mask], rtn4, rtol=1e-6)
  mu = w[~mask].mean(0)
  alpha = np.abs(w[~mask] - mu).mean(0)  # the least-squares scale of sign(w − μ)
  expected = mu + alpha * np.where(w[~mask] >= mu, 1.0, -1.0)
  np.testing.assert_allclose(w_hat[~mask], expected, rtol=2e-3, atol=2e-3)  # float16 storage
  fake = jax.jit(lambda layer, theta: layer.fake_quant(theta))(layer, theta)
  np.testing.assert_allclose(w_hat, fake, rtol=2e-3, atol=2e-3)


def test_block_reconstruction_lowers_the_block_error_monotonically():
  # The model of tests/conftest.py's tiny config (one 32-wide block), as the experiment test
  # uses: in one pytest process the jitted pieces are compiled once for both.
  task = build_task(tiny_config())
  tokens = jnp.asarray(calibration_tokens(task.train_iterator(0, 0, 1), 8))
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(1)))
  qparams, histories = ptq161_params(
    task.model, params, tokens, DEFAULT_RULES, epochs=4, batch_size=1
  )
  history = np.asarray(histories['block_0'])
  assert len(history) == 5 and np.all(np.diff(history) <= 0.0)  # small steps
  assert history[-1] < 0.9 * history[0]
  leaves = jax.tree_util.tree_leaves(qparams, is_leaf=lambda x: hasattr(x, 'storage_bits'))
  quantized = [matrix_leaf(x) for x in leaves if hasattr(x, 'storage_bits')]
  assert len(quantized) == 6 and all(isinstance(x, SaliencyMaskedTensor) for x in quantized)


def test_restorative_lora_adds_a_low_rank_correction_that_lowers_the_loss():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(64, 12)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(12, 10)), jnp.float32)
  params = {'layer': {'kernel': jnp.zeros((12, 10))}}

  def loss_fn(p, batch):
    return jnp.mean(jnp.square(batch @ p['layer']['kernel'] - batch @ target))

  merged = restorative_lora(
    loss_fn,
    params,
    ['layer/kernel'],
    iter([x] * 30),
    rank=2,
    steps=30,
    learning_rate=0.05,
    key=jax.random.key(0),
  )
  delta = np.asarray(merged['layer']['kernel'])
  assert np.linalg.matrix_rank(delta, tol=1e-5) <= 2
  assert loss_fn(merged, x) < 0.9 * loss_fn(params, x)


def test_kernels_outside_the_blocks_are_refused_with_their_paths():
  model = build_task(tiny_config()).model
  params = {'head': {'kernel': jnp.zeros((4, 4))}, 'block_0': {}}
  with pytest.raises(ValueError, match='head/kernel'):
    ptq161_params(model, params, jnp.zeros((1, 8), jnp.int32), ('.*kernel',))
