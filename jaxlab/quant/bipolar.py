"""Bipolar-INT arbitrary-precision integer matmul by ±1 bit planes (`bipolar_int` in PAPERS.md:
its bipolar-INT format and bit-level decomposition/recovery of a matmul).

A `p`-bit bipolar-INT value is `q = Σ_{i<p} 2^i·b_i` with every `b_i ∈ {−1, +1}`: exactly the
odd integers in `[−(2^p − 1), 2^p − 1]` (symmetric, no separate sign). With the unsigned code
`c = (q + 2^p − 1)/2`, plane `i` is `b_i = 2·bit_i(c) − 1` (so a symmetric `QuantizedTensor`'s
codes are its planes). A product of a `p_a`-bit `A [m, k]` and a `p_w`-bit `W [k, n]` is
recovered from `p_a·p_w` products of ±1 matrices:

  `A·W = Σ_i Σ_j 2^{i+j} (A_i·W_j)`,

each `A_i·W_j` computed exactly, either
- `'int8'`: as one int8 matmul with int32 accumulation of the stacked planes
  (`[p_a·m, k] @ [k, p_w·n]`), the tensor-core friendly form; or
- `'xnor'`: on planes packed 32 per `uint32` word along `k`: `a·w = k − 2·popcount(a ⊕ w)`; or
- `'pallas'`: the same packed XNOR/popcount as a Pallas kernel that fuses the recovery
  (`jaxlab.quant.bitplane_pallas`; `interpret=True` on CPU).

The LM runs its matmuls in this format through `bipolar_dense` (activations per token,
weights per output channel, both bipolar-INT) and `jaxlab.quant.model.apply_quantized`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlab.quant import packing
from jaxlab.quant.model import KernelView
from jaxlab.quant.tensor import QuantizedTensor, is_quantized, quantize_to_grid

METHODS = ('int8', 'xnor', 'pallas')


def _check_bits(bits: int, name: str) -> None:
  if not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
    raise ValueError(f'{name}: expected an integer in [1, 8], got {bits!r}')


def check_bipolar(q: jax.Array, bits: int, name: str = 'q') -> None:
  """Eagerly rejects values not representable in `bits`-bit bipolar-INT (no-op under jit)."""
  _check_bits(bits, f'{name} bits')
  if isinstance(q, jax.core.Tracer):
    return
  v = np.asarray(q)
  if not np.issubdtype(v.dtype, np.integer):
    raise ValueError(f'{name}: expected an integer array, got dtype {v.dtype}')
  top = 2**bits - 1
  bad = (v % 2 == 0) | (np.abs(v) > top)
  if bad.any():
    raise ValueError(
      f'{name}: expected odd integers in [-{top}, {top}] ({bits}-bit bipolar-INT), '
      f'got {v[bad].ravel()[0]} (and {int(bad.sum()) - 1} more)'
    )


def to_codes(q: jax.Array, bits: int) -> jax.Array:
  """`c = (q + 2^p − 1)/2` as `uint8`, the unsigned code whose bits are the planes."""
  return ((jnp.asarray(q, jnp.int32) + (2**bits - 1)) >> 1).astype(jnp.uint8)


def planes(q: jax.Array, bits: int) -> jax.Array:
  """The ±1 planes `b_i` of bipolar-INT `q`, as int8 `[bits, *q.shape]`."""
  c = to_codes(q, bits)
  return jnp.stack([2 * ((c >> i) & 1).astype(jnp.int8) - 1 for i in range(bits)])


def from_planes(b: jax.Array) -> jax.Array:
  """Recovery `q = Σ_i 2^i·b_i` from `[bits, ...]` planes, as int32."""
  weights = 2 ** jnp.arange(b.shape[0], dtype=jnp.int32)
  return jnp.tensordot(weights, b.astype(jnp.int32), axes=1)


def pack_planes(q: jax.Array, bits: int, axis: int) -> jax.Array:
  """Planes of `q` packed along `axis` (bit 1 = +1): `uint32` `[bits, ..., ⌈len/32⌉, ...]`."""
  c = to_codes(q, bits)
  return jnp.stack([packing.pack_bits((c >> i) & 1, axis=axis) for i in range(bits)])


def _recover(products: jax.Array) -> jax.Array:
  """`Σ_ij 2^{i+j} P_ij` for `products` `[p_a, p_w, m, n]` int32."""
  pa, pw = products.shape[:2]
  shifts = jnp.arange(pa)[:, None] + jnp.arange(pw)[None, :]
  return jnp.sum(products << shifts[:, :, None, None].astype(jnp.int32), axis=(0, 1))


def prepare_weight(w: jax.Array, w_bits: int, method: str = 'int8') -> jax.Array:
  """The weight's planes in the layout `method` reads, made once offline (the paper's matrix
  preprocessing).

  `'int8'`: ±1 int8 `[k, p_w·n]` (plane `j` in columns `j·n … (j+1)·n − 1`); `'xnor'` and
  `'pallas'`: the planes of `wᵀ` packed along `k`, uint32 `[p_w, n, ⌈k/32⌉]`.
  """
  if method not in METHODS:
    raise ValueError(f'method: expected one of {METHODS}, got {method!r}')
  if method == 'int8':
    k, n = w.shape
    return jnp.moveaxis(planes(w, w_bits), 0, 1).reshape(k, w_bits * n)
  return pack_planes(w.T, w_bits, axis=1)


def matmul_prepared(
  a: jax.Array, prepared: jax.Array, a_bits: int, w_bits: int, method: str = 'int8'
) -> jax.Array:
  """`a @ w` (int32) from bipolar-INT `a` `[m, k]` and `prepare_weight(w, w_bits, method)`.

  The activation planes are made here (they change every call); no value check (see
  `bipolar_matmul`).
  """
  m, k = a.shape
  if method == 'int8':
    n = prepared.shape[1] // w_bits
    pa = planes(a, a_bits).reshape(a_bits * m, k)
    p = jax.lax.dot(pa, prepared, preferred_element_type=jnp.int32)
    return _recover(p.reshape(a_bits, m, w_bits, n).transpose(0, 2, 1, 3))
  pa = pack_planes(a, a_bits, axis=1)  # [p_a, m, kw]
  if method == 'pallas':
    from jaxlab.quant.bitplane_pallas import bitplane_matmul

    return bitplane_matmul(pa, prepared, k)

  def add_word(mismatch, words):
    wa, ww = words  # [p_a, m], [p_w, n]
    x = wa[:, None, :, None] ^ ww[None, :, None, :]
    return mismatch + jax.lax.population_count(x).astype(jnp.int32), None

  init = jnp.zeros((a_bits, w_bits, m, prepared.shape[1]), jnp.int32)
  words = (jnp.moveaxis(pa, 2, 0), jnp.moveaxis(prepared, 2, 0))
  mismatch, _ = jax.lax.scan(add_word, init, words)
  # Padding bits are 0 in both operands: they never mismatch, and k counts only real ones.
  return _recover(k - 2 * mismatch)


def bipolar_matmul(
  a: jax.Array, w: jax.Array, a_bits: int, w_bits: int, *, method: str = 'int8'
) -> jax.Array:
  """Exact `a @ w` (int32) of bipolar-INT integer matrices by ±1 bit planes.

  Args:
    a: `[m, k]` integers, odd and in `[−(2^a_bits − 1), 2^a_bits − 1]`.
    w: `[k, n]` integers, odd and in `[−(2^w_bits − 1), 2^w_bits − 1]`.
    a_bits, w_bits: bit-widths, 1 to 8 each (W1A2 … W4A8 and beyond).
    method: `'int8'`, `'xnor'` or `'pallas'` (module docstring).

  Returns:
    `[m, n]` int32, equal to the integer product.

  Raises:
    ValueError: bad shapes, widths or method; a value not representable in the format (checked
      eagerly only: under `jax.jit` no check runs, and a value `q` is read as the code
      `((q + 2^p − 1) >> 1) mod 2^p`, i.e. silently replaced by another representable value);
      `k·(2^a_bits − 1)(2^w_bits − 1) ≥ 2^31` (the int32 result could overflow).
  """
  if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
    raise ValueError(f'a, w: expected [m, k] and [k, n] matrices, got {a.shape} and {w.shape}')
  if method not in METHODS:
    raise ValueError(f'method: expected one of {METHODS}, got {method!r}')
  check_bipolar(a, a_bits, 'a')
  check_bipolar(w, w_bits, 'w')
  if a.shape[1] * (2**a_bits - 1) * (2**w_bits - 1) >= 2**31:
    raise ValueError(
      f'k: expected k·(2^a_bits − 1)(2^w_bits − 1) < 2^31 for an exact int32 result, '
      f'got k={a.shape[1]} with W{w_bits}A{a_bits}'
    )
  return matmul_prepared(a, prepare_weight(w, w_bits, method), a_bits, w_bits, method)


def quantize_activations(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """Per-token bipolar-INT: `x ≈ s·q`, `s = max_row|x| / (2^p − 1)`, `q` odd int32.

  Returns `(q [tokens, k], s [tokens, 1])`; the error is at most `s` per entry.
  """
  top = 2**bits - 1
  s = jnp.max(jnp.abs(x), axis=-1, keepdims=True).astype(jnp.float32) / top
  c = quantize_to_grid(x, s, None, bits).astype(jnp.int32)
  return 2 * c - top, s


@struct.dataclass
class PreparedBipolarWeight:
  """A bipolar-INT weight in the compute layout of one method (`prepare_weight`), made once.

  A quantized leaf too (`dequantize`, `storage_bits`, `num_weights`), so `quantized_matmuls`
  finds it; its storage is the runtime layout (±1 int8 planes for `'int8'`: 8 bits per plane
  bit), not the packed format — count bits on the `QuantizedTensor` it came from.
  """

  planes: jax.Array
  scale: jax.Array  # [1, out] or [1, 1] float32
  shape: tuple[int, int] = struct.field(pytree_node=False)
  bits: int = struct.field(pytree_node=False)
  method: str = struct.field(pytree_node=False)

  @property
  def num_weights(self) -> int:
    return self.shape[0] * self.shape[1]

  def storage_bits(self) -> int:
    return sum(int(x.size) * x.dtype.itemsize * 8 for x in (self.planes, self.scale))

  def levels(self) -> jax.Array:
    k, n = self.shape
    if self.method == 'int8':
      b = jnp.moveaxis(self.planes.reshape(k, self.bits, n), 1, 0)
    else:
      b = 2 * packing.unpack_bits(self.planes, k, axis=2).astype(jnp.int8) - 1  # [p_w, n, k]
      b = jnp.swapaxes(b, 1, 2)
    return from_planes(b)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    return (self.levels().astype(jnp.float32) * self.scale).astype(dtype)


def _check_bipolar_leaf(leaf: Any) -> None:
  if not isinstance(leaf, QuantizedTensor) or not leaf.symmetric or leaf.scale.shape[0] != 1:
    raise ValueError(
      'leaf: expected a symmetric per-channel or per-tensor QuantizedTensor (bipolar-INT), '
      f'got {type(leaf).__name__}'
      + (f' with scale shape {leaf.scale.shape}' if hasattr(leaf, 'scale') else '')
    )


def prepare(leaf: QuantizedTensor, method: str = 'int8') -> PreparedBipolarWeight:
  """The offline preprocessing of a symmetric per-channel `QuantizedTensor` for `method`."""
  _check_bipolar_leaf(leaf)
  planes_ = prepare_weight(leaf.levels(), leaf.bits, method)
  scale = leaf.scale.astype(jnp.float32)
  return PreparedBipolarWeight(planes_, scale, leaf.shape, leaf.bits, method)


def prepare_params(qparams: Any, method: str = 'int8') -> Any:
  """`prepare` applied to every quantized kernel of a `quantize_params` tree (inside a
  `KernelView` too), so a deployed model makes its weight planes once, not on every call."""

  def prep(x):
    if isinstance(x, KernelView):
      return KernelView(prepare(x.matrix, method), x.shape)
    return prepare(x, method) if is_quantized(x) else x

  return jax.tree_util.tree_map(prep, qparams, is_leaf=is_quantized)


def bipolar_dense(a_bits: int, method: str = 'int8') -> Callable[[jax.Array, Any], jax.Array]:
  """A `matmul(x2d, leaf)` for `quantized_matmuls`: activations to `a_bits` bipolar-INT per
  token, the weight a symmetric per-channel (or per-tensor) `QuantizedTensor` (bipolar-INT
  already; its planes made on every call) or a `PreparedBipolarWeight` (planes made once):
  `y = s_x·s_w·(q_x @ q_w)` with the exact integer product by bit planes.
  """
  _check_bits(a_bits, 'a_bits')
  if method not in METHODS:
    raise ValueError(f'method: expected one of {METHODS}, got {method!r}')

  def matmul(x: jax.Array, leaf: Any) -> jax.Array:
    q, s = quantize_activations(x, a_bits)
    if isinstance(leaf, PreparedBipolarWeight):
      if leaf.method != method:
        raise ValueError(f'leaf: expected weights prepared for {method!r}, got {leaf.method!r}')
      y = matmul_prepared(q, leaf.planes, a_bits, leaf.bits, method)
      return y.astype(jnp.float32) * s * leaf.scale
    _check_bipolar_leaf(leaf)
    y = bipolar_matmul(q, leaf.levels(), a_bits, leaf.bits, method=method)
    return y.astype(jnp.float32) * s * leaf.scale.astype(jnp.float32)

  return matmul
