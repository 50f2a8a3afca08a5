"""Bit packing: round trips at every width, exact storage size, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.quant import packing


@pytest.mark.parametrize(
  'bits,shape', [(b, (13, 11)) for b in range(1, 9)] + [(3, (2, 3, 5)), (7, (7,))]
)
def test_pack_unpack_round_trip(bits, shape):
  rng = np.random.default_rng(bits)
  codes = rng.integers(0, 2**bits, size=shape).astype(np.uint8)
  words = packing.pack(codes, bits)
  assert words.dtype == jnp.uint32
  assert words.shape == (-(-codes.size * bits // 32),)
  np.testing.assert_array_equal(packing.unpack(words, bits, shape), codes)


@pytest.mark.parametrize('dtype', [jnp.uint8, jnp.uint16, jnp.uint32])
def test_bit_stream_layout_matches_a_naive_reference(dtype):
  """Code t's bit i is stream bit t·bits + i; stream bit s is bit s mod W of word s // W."""
  bits, rng = 3, np.random.default_rng(0)
  codes = rng.integers(0, 8, size=23)
  stream = [(int(c) >> i) & 1 for c in codes for i in range(bits)]
  word = jnp.dtype(dtype).itemsize * 8
  stream += [0] * (-len(stream) % word)
  expected = [
    sum(b << j for j, b in enumerate(stream[k : k + word])) for k in range(0, len(stream), word)
  ]
  words = packing.pack(codes, bits, dtype)
  assert words.dtype == dtype
  np.testing.assert_array_equal(np.asarray(words, np.int64), expected)
  np.testing.assert_array_equal(packing.unpack(words, bits, codes.shape), codes)


def test_pack_under_jit_masks_to_low_bits():
  codes = jnp.array([0, 5, 9, 15])
  words = jax.jit(packing.pack, static_argnums=1)(codes, 3)
  np.testing.assert_array_equal(packing.unpack(words, 3, (4,)), [0, 5, 1, 7])


def test_bad_input_is_rejected():
  with pytest.raises(ValueError, match=r'codes: expected values in \[0, 3\]'):
    packing.pack(np.array([0, 4]), 2)
  with pytest.raises(ValueError, match='bits: expected an integer in'):
    packing.pack(np.array([0]), 9)
  with pytest.raises(ValueError, match='word dtype'):
    packing.pack(np.array([0]), 2, jnp.int32)
  with pytest.raises(ValueError, match='words: expected shape'):
    packing.unpack(jnp.zeros(3, jnp.uint32), 4, (7, 5))


@pytest.mark.parametrize('length', [1, 32, 70])
def test_pack_bits_round_trip_along_an_axis(length):
  rng = np.random.default_rng(length)
  x = rng.integers(0, 2, size=(3, length, 2))
  words = packing.pack_bits(x, axis=1)
  assert words.shape == (3, -(-length // 32), 2)
  assert int(words[0, 0, 0]) == sum(int(x[0, j, 0]) << j for j in range(min(32, length)))
  np.testing.assert_array_equal(packing.unpack_bits(words, length, axis=1), x)
