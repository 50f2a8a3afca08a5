"""QuantizedTensor: RTN error bounds, binarization, the exact bits account, pytree behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import quant


def _w(shape=(48, 10), seed=0):
  return jax.random.normal(jax.random.key(seed), shape) * jnp.linspace(0.1, 2.0, shape[1])


def _group_max(x, rows):
  return np.repeat(np.abs(np.asarray(x)).reshape(-1, rows, x.shape[1]).max(1), rows, 0)


@pytest.mark.parametrize('bits,group_size', [(2, None), (3, 16), (4, -1), (8, 16)])
def test_symmetric_rtn_error_is_within_half_a_step(bits, group_size):
  w = _w()
  t = quant.quantize(w, bits, group_size=group_size)
  rows = {None: 48, 16: 16}.get(group_size)
  s = t.scale.astype(jnp.float32)
  s = jnp.broadcast_to(s, (1, 10)) if group_size == -1 else s
  s_full = np.repeat(np.asarray(s), 48 // s.shape[0], axis=0)
  # Step of the bipolar grid is 2s: error ≤ s; s ≥ max|w| / (2^b − 1) of the group.
  err = np.abs(np.asarray(t.dequantize() - w))
  assert np.all(err <= s_full * (1 + 1e-6))
  if rows is not None:
    assert np.all(s_full >= _group_max(w, rows) / (2**bits - 1))
  levels = np.asarray(t.levels())
  assert np.all(levels % 2 == 1) and np.abs(levels).max() <= 2**bits - 1


@pytest.mark.parametrize('bits', [2, 4])
def test_asymmetric_rtn_matches_a_numpy_reference(bits):
  w = np.asarray(_w((32, 6), seed=1))
  t = quant.quantize(w, bits, group_size=8, symmetric=False)
  g = w.reshape(4, 8, 6)
  lo, hi = np.minimum(g.min(1), 0), np.maximum(g.max(1), 0)
  s = np.asarray(t.scale, np.float32)
  assert np.all(s >= (hi - lo) / (2**bits - 1)) and np.allclose(
    s, (hi - lo) / (2**bits - 1), rtol=1e-3
  )
  z = np.clip(np.round(-lo / s), 0, 2**bits - 1)
  np.testing.assert_array_equal(t.zero, z)
  codes = np.clip(np.round(w / np.repeat(s, 8, 0)) + np.repeat(z, 8, 0), 0, 2**bits - 1)
  np.testing.assert_array_equal(t.codes(), codes)
  inside = (w >= np.repeat(-z * s, 8, 0)) & (w <= np.repeat((2**bits - 1 - z) * s, 8, 0))
  err = np.abs(np.asarray(t.dequantize()) - w)
  assert np.all(err[inside] <= np.repeat(s, 8, 0)[inside] / 2 * (1 + 1e-5))


def test_binarize_is_alpha_sign_with_the_mean_magnitude():
  w = _w((32, 5))
  t = quant.binarize(w, group_size=8)
  alpha = np.abs(np.asarray(w)).reshape(4, 8, 5).mean(1)
  np.testing.assert_allclose(t.scale, alpha.astype(np.float16))
  expected = np.repeat(alpha.astype(np.float16).astype(np.float32), 8, 0) * np.where(w >= 0, 1, -1)
  np.testing.assert_array_equal(t.dequantize(), expected)
  assert t.bits == 1 and t.symmetric


@pytest.mark.parametrize(
  'make',
  [
    lambda w: quant.quantize(w, 3, group_size=16),
    lambda w: quant.quantize(w, 4, group_size=8, symmetric=False),
    lambda w: quant.quantize(w, 2, group_size=-1),
    lambda w: quant.binarize(w),
  ],
)
def test_bits_account_equals_the_bytes_of_the_stored_arrays(make):
  w = _w((48, 10))
  t = make(w)
  leaves = jax.tree_util.tree_leaves(t)
  stored = sum(np.asarray(x).nbytes for x in leaves) * 8
  assert t.storage_bits() == stored
  # Packed codes: ⌈N·b/32⌉ words, i.e. less than one word of padding.
  assert 0 <= t.packed.size * 32 - 480 * t.bits < 32
  tree = {'a': t, 'norm': jnp.ones(7), 'b': quant.binarize(_w((16, 4)))}
  b = quant.binarize(_w((16, 4)))
  expected = (stored + b.storage_bits()) / (480 + 64)
  assert quant.bits_per_weight(tree) == pytest.approx(expected)
  report = quant.storage_report(tree)
  assert [r['path'] for r in report] == ["['a']", "['b']"]
  assert report[0]['storage_bits'] == stored and report[0]['num_weights'] == 480


def test_rtn_bits_per_weight_closed_form():
  # 4-bit codes + one fp16 scale per 128-row group: 4 + 16/128 bits per weight.
  t = quant.quantize(_w((256, 64)), 4, group_size=128)
  assert quant.bits_per_weight(t) == 4 + 16 / 128
  t = quant.quantize(_w((256, 64)), 4, group_size=128, symmetric=False)
  assert quant.bits_per_weight(t) == 4 + (16 + 8) / 128


def test_pytree_jit_and_tree_dequantize():
  t = quant.quantize(_w(), 4, group_size=16)
  out = jax.jit(lambda x: x.dequantize())(t)
  np.testing.assert_array_equal(out, t.dequantize())
  tree = {'k': t, 'bias': jnp.arange(3.0)}
  dq = quant.dequantize(tree)
  np.testing.assert_array_equal(dq['k'], t.dequantize())
  np.testing.assert_array_equal(dq['bias'], tree['bias'])
  assert jax.tree_util.tree_structure(jax.tree_util.tree_map(lambda x: x, t)) == (
    jax.tree_util.tree_structure(t)
  )


def test_from_codes_round_trip_and_quantize_to_grid():
  w = _w((16, 4))
  t = quant.quantize(w, 3, group_size=8)
  full_s = jnp.repeat(t.scale.astype(jnp.float32), 8, axis=0)
  codes = quant.quantize_to_grid(w, full_s, None, 3)
  np.testing.assert_array_equal(codes, t.codes())
  # Column by column (GPTQ's use) gives the same codes.
  cols = [quant.quantize_to_grid(w[:, j], full_s[:, j], None, 3) for j in range(4)]
  np.testing.assert_array_equal(jnp.stack(cols, 1), t.codes())
  u = quant.QuantizedTensor.from_codes(codes, t.scale, None, 3, 8, True)
  np.testing.assert_array_equal(u.dequantize(), t.dequantize())


def test_bad_input_is_rejected():
  with pytest.raises(ValueError, match='group_size: expected a divisor'):
    quant.quantize(_w((10, 4)), 4, group_size=3)
  with pytest.raises(ValueError, match=r'w: expected a \[in, out\] matrix'):
    quant.quantize(jnp.ones(5), 4)
  with pytest.raises(ValueError, match='zero: expected None'):
    quant.QuantizedTensor.from_codes(
      jnp.zeros((4, 2), jnp.uint8), jnp.ones((1, 2)), jnp.zeros((1, 2)), 2, None, True
    )
  with pytest.raises(ValueError, match='scale: expected shape'):
    quant.QuantizedTensor.from_codes(
      jnp.zeros((4, 2), jnp.uint8), jnp.ones((2, 2)), None, 2, None, True
    )
  with pytest.raises(ValueError, match='expected at least one quantized leaf'):
    quant.bits_per_weight({'a': jnp.ones(2)})
