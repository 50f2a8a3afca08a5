"""Dense bit packing of small unsigned integer codes into machine words.

A tensor of `bits`-bit codes is stored as one little-endian bit stream: code `t` (in row-major
order) occupies stream bits `[t·bits, (t+1)·bits)`, its bit `i` at stream position
`t·bits + i`, and stream bit `s` is bit `s mod W` of word `⌊s / W⌋` (`W` = 8, 16 or 32 for
`uint8`/`uint16`/`uint32` words). Codes may therefore straddle a word boundary (3-, 5-, 6- and
7-bit codes), so storage is exactly `⌈N·bits / W⌉` words for `N` codes: no bit is wasted
except the padding of the last word.

`pack_bits`/`unpack_bits` pack single bits along one axis (the layout of a 1-bit plane whose
rows are contracted with XNOR/popcount, see `jaxlab.quant.bipolar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

WORD_DTYPES = (jnp.uint8, jnp.uint16, jnp.uint32)


def _word_bits(dtype) -> int:
  dtype = jnp.dtype(dtype)
  if dtype not in [jnp.dtype(d) for d in WORD_DTYPES]:
    raise ValueError(f'word dtype: expected one of uint8, uint16, uint32, got {dtype}')
  return dtype.itemsize * 8


def _check_bits(bits: int) -> None:
  if not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
    raise ValueError(f'bits: expected an integer in [1, 8], got {bits!r}')


def num_words(num_codes: int, bits: int, dtype=jnp.uint32) -> int:
  """Number of words holding `num_codes` codes of `bits` bits: `⌈num_codes·bits / W⌉`."""
  return -(-num_codes * bits // _word_bits(dtype))


def _check_codes(codes: jax.Array, bits: int) -> None:
  """Eagerly rejects codes outside `[0, 2^bits)`; under jit the caller's codes are masked."""
  if isinstance(codes, jax.core.Tracer):
    return
  values = np.asarray(codes)
  if not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f'codes: expected an integer array, got dtype {values.dtype}')
  if values.size and (values.min() < 0 or values.max() >= 2**bits):
    raise ValueError(
      f'codes: expected values in [0, {2**bits - 1}] for {bits}-bit codes, '
      f'got range [{values.min()}, {values.max()}]'
    )


def pack(codes: jax.Array, bits: int, dtype=jnp.uint32) -> jax.Array:
  """Packs `bits`-bit unsigned codes (any shape) into a 1-D array of words.

  Args:
    codes: integer array with values in `[0, 2^bits)`. Checked eagerly; under `jax.jit` the
      values are masked to their low `bits` bits instead.
    bits: code width, 1 to 8.
    dtype: word dtype, `uint8`, `uint16` or `uint32`.

  Returns:
    `[num_words(codes.size, bits, dtype)]` words holding the bit stream (module docstring).
  """
  _check_bits(bits)
  word = _word_bits(dtype)
  _check_codes(codes, bits)
  flat = jnp.ravel(codes).astype(jnp.uint32) & jnp.uint32(2**bits - 1)
  stream = (flat[:, None] >> jnp.arange(bits, dtype=jnp.uint32)) & jnp.uint32(1)
  stream = stream.reshape(-1)
  pad = num_words(flat.size, bits, dtype) * word - stream.size
  stream = jnp.pad(stream, (0, pad)).reshape(-1, word)
  # Distinct powers of two: the sum is the bitwise or, exact in uint32.
  words = jnp.sum(stream << jnp.arange(word, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)
  return words.astype(dtype)


def unpack(words: jax.Array, bits: int, shape: Sequence[int]) -> jax.Array:
  """Inverse of `pack`: the `uint8` codes of the given shape.

  Args:
    words: 1-D word array produced by `pack` (its dtype gives the word width).
    bits: code width used when packing.
    shape: shape of the packed code tensor.

  Returns:
    `uint8` array of `shape` with the codes.
  """
  _check_bits(bits)
  word = _word_bits(words.dtype)
  n = math.prod(shape)
  if words.ndim != 1 or words.shape[0] != num_words(n, bits, words.dtype):
    raise ValueError(
      f'words: expected shape ({num_words(n, bits, words.dtype)},) for {n} codes of '
      f'{bits} bits in {words.dtype} words, got {words.shape}'
    )
  stream = (words.astype(jnp.uint32)[:, None] >> jnp.arange(word, dtype=jnp.uint32)) & 1
  stream = stream.reshape(-1)[: n * bits].reshape(n, bits)
  codes = jnp.sum(stream << jnp.arange(bits, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)
  return codes.astype(jnp.uint8).reshape(tuple(shape))


def pack_bits(bits01: jax.Array, axis: int = -1, dtype=jnp.uint32) -> jax.Array:
  """Packs a 0/1 array along `axis` into words, bit `j` of word `w` = element `w·W + j`.

  The axis is zero-padded to a multiple of the word width `W`; its length becomes `⌈n / W⌉`.
  """
  word = _word_bits(dtype)
  x = jnp.moveaxis(jnp.asarray(bits01).astype(jnp.uint32) & 1, axis, -1)
  n = x.shape[-1]
  pad = -(-n // word) * word - n
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  x = x.reshape(*x.shape[:-1], -1, word)
  words = jnp.sum(x << jnp.arange(word, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)
  return jnp.moveaxis(words.astype(dtype), -1, axis)


def unpack_bits(words: jax.Array, length: int, axis: int = -1) -> jax.Array:
  """Inverse of `pack_bits`: the `uint8` 0/1 array with `length` elements along `axis`."""
  word = _word_bits(words.dtype)
  x = jnp.moveaxis(words.astype(jnp.uint32), axis, -1)
  x = (x[..., None] >> jnp.arange(word, dtype=jnp.uint32)) & 1
  x = x.reshape(*x.shape[:-2], -1)[..., :length]
  return jnp.moveaxis(x.astype(jnp.uint8), -1, axis)
