"""Bipolar-INT: exact decomposition/recovery and exact bit-plane matmul (jnp and Pallas)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import quant
from jaxlab.quant import bipolar
from jaxlab.quant.bitplane_pallas import bitplane_matmul


def _bipolar(rng, bits, shape):
  return 2 * rng.integers(0, 2**bits, shape) - (2**bits - 1)


@pytest.mark.parametrize('bits', range(1, 9))
def test_every_representable_integer_is_recovered_exactly(bits):
  q = jnp.arange(-(2**bits - 1), 2**bits, 2)  # all 2^bits odd integers of the format
  b = bipolar.planes(q, bits)
  assert b.shape == (bits, 2**bits) and set(np.unique(b)) <= {-1, 1}
  np.testing.assert_array_equal(bipolar.from_planes(b), q)
  # The plane decomposition is a bijection: 2^bits distinct patterns.
  assert len({tuple(col) for col in np.asarray(b).T}) == 2**bits


@pytest.mark.parametrize('a_bits,w_bits', [(2, 1), (8, 4), (3, 5)])
@pytest.mark.parametrize('method', ['int8', 'xnor'])
def test_bitplane_matmul_equals_the_integer_matmul_exactly(a_bits, w_bits, method):
  rng = np.random.default_rng(a_bits * 10 + w_bits)
  a, w = _bipolar(rng, a_bits, (5, 70)), _bipolar(rng, w_bits, (70, 3))
  out = quant.bipolar_matmul(jnp.asarray(a), jnp.asarray(w), a_bits, w_bits, method=method)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(out, a @ w)


@pytest.mark.parametrize('a_bits,w_bits,shape', [(4, 3, (20, 40, 18))])
def test_pallas_kernel_in_interpret_mode_is_exact(a_bits, w_bits, shape):
  m, k, n = shape
  rng = np.random.default_rng(k)
  a, w = _bipolar(rng, a_bits, (m, k)), _bipolar(rng, w_bits, (k, n))
  pa = bipolar.pack_planes(jnp.asarray(a), a_bits, axis=1)
  pw = bipolar.pack_planes(jnp.asarray(w).T, w_bits, axis=1)
  out = bitplane_matmul(pa, pw, k, block_m=16, block_n=16, block_k=1, interpret=True)
  np.testing.assert_array_equal(out, a @ w)
  with pytest.raises(ValueError, match='block_m: expected a power of two'):
    bitplane_matmul(pa, pw, k, block_m=24, interpret=True)
  via_api = quant.bipolar_matmul(jnp.asarray(a), jnp.asarray(w), a_bits, w_bits, method='pallas')
  np.testing.assert_array_equal(via_api, a @ w)


def test_under_jit_no_check_but_the_result_is_exact_for_valid_input():
  rng = np.random.default_rng(0)
  a, w = _bipolar(rng, 3, (4, 9)), _bipolar(rng, 2, (9, 2))
  f = jax.jit(lambda a, w: quant.bipolar_matmul(a, w, 3, 2))
  np.testing.assert_array_equal(f(jnp.asarray(a), jnp.asarray(w)), a @ w)


def test_unrepresentable_values_and_bad_shapes_are_rejected():
  ok = jnp.ones((2, 3), jnp.int32)
  with pytest.raises(ValueError, match=r'a: expected odd integers in \[-3, 3\]'):
    quant.bipolar_matmul(ok.at[0, 0].set(2), ok.T, 2, 2)
  with pytest.raises(ValueError, match=r'w: expected odd integers in \[-1, 1\]'):
    quant.bipolar_matmul(ok, (3 * ok).T, 2, 1)
  with pytest.raises(ValueError, match='expected an integer array'):
    quant.bipolar_matmul(ok.astype(jnp.float32), ok.T, 2, 2)
  with pytest.raises(ValueError, match=r'expected \[m, k\] and \[k, n\]'):
    quant.bipolar_matmul(ok, ok, 2, 2)
  with pytest.raises(ValueError, match='method: expected one of'):
    quant.bipolar_matmul(ok, ok.T, 2, 2, method='cuda')
  with pytest.raises(ValueError, match='for an exact int32 result'):
    quant.bipolar_matmul(jnp.ones((1, 2**16), jnp.int32), jnp.ones((2**16, 1), jnp.int32), 8, 8)


def test_bipolar_dense_is_the_scaled_integer_product():
  x = jax.random.normal(jax.random.key(0), (6, 32))
  w = jax.random.normal(jax.random.key(1), (32, 5))
  leaf = quant.quantize(w, 4)
  q, s = jax.jit(quant.quantize_activations, static_argnums=1)(x, 8)
  assert np.all(np.abs(np.asarray(s * q - x)) <= np.asarray(s) * (1 + 1e-6))
  expected = (np.asarray(s * q, np.float64)) @ np.asarray(leaf.dequantize(), np.float64)
  out = jax.jit(bipolar.bipolar_dense(8))(x, leaf)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='symmetric per-channel or per-tensor'):
    bipolar.bipolar_dense(8)(x, quant.quantize(w, 4, group_size=8))


def test_prepared_weights_give_the_same_levels_and_products():
  x = jax.random.normal(jax.random.key(0), (6, 40))
  leaf = quant.quantize(jax.random.normal(jax.random.key(1), (40, 5)), 3)
  tree = quant.prepare_params({'k': quant.KernelView(leaf, (40, 5, 1)), 'b': jnp.ones(2)}, 'xnor')
  assert isinstance(tree['k'].matrix, quant.PreparedBipolarWeight)
  np.testing.assert_array_equal(tree['k'].dequantize(), leaf.dequantize()[..., None])
  dense = jax.jit(bipolar.bipolar_dense(4, 'int8'))
  prepared = bipolar.prepare(leaf, 'int8')
  assert prepared.planes.dtype == jnp.int8 and prepared.planes.shape == (40, 15)
  np.testing.assert_array_equal(prepared.levels(), leaf.levels())
  np.testing.assert_array_equal(dense(x, prepared), dense(x, leaf))
  with pytest.raises(ValueError, match="expected weights prepared for 'int8'"):
    dense(x, tree['k'].matrix)


@pytest.mark.gpu
def test_pallas_kernel_compiled_on_gpu_is_exact():
  rng = np.random.default_rng(0)
  a, w = _bipolar(rng, 4, (64, 4096)), _bipolar(rng, 2, (4096, 96))
  pa = bipolar.pack_planes(jnp.asarray(a), 4, axis=1)
  pw = bipolar.pack_planes(jnp.asarray(w).T, 2, axis=1)
  out = bitplane_matmul(pa, pw, 4096, interpret=False)
  np.testing.assert_array_equal(out, a.astype(np.int64) @ w)
