"""A packed low-bit weight tensor, round-to-nearest quantization and the bits-per-weight account.

A weight matrix `W ∈ R^{in×out}` (Flax `Dense` kernel orientation) is stored as `bits`-bit
unsigned codes `c ∈ {0, …, 2^b − 1}` packed into words (`jaxlab.quant.packing`), plus a scale
`s` (and for an asymmetric grid an integer zero-point `z`) per *group*: the whole tensor, one
output channel (column), or `group_size` consecutive input rows of one column. Dequantization:

- symmetric grid (no zero-point): `ŵ = s·(2c − (2^b − 1))`, the odd integers
  `{−(2^b−1), …, −1, 1, …, 2^b−1}` scaled by `s`. This is the bipolar-INT format of
  arbitrary-precision LLM acceleration on tensor cores (`bipolar_int` in PAPERS.md): symmetric, no
  wasted code, and the code bits are exactly the bipolar planes, `2c − (2^b−1) = Σ_i 2^i(2c_i−1)`.
  With `b = 1` it is binarization `ŵ = α·sign(w)`.
- asymmetric grid: `ŵ = s·(c − z)` with `s = (max − min)/(2^b − 1)`, `z = round(−min/s)`
  (the GPTQ/RTN convention).

Storage dtypes (every bit counts in `storage_bits`): codes in `uint32` words (the last word
padded), scales in `scale_dtype` (float16 by default, 16 bits each: the usual choice of
GPTQ-style kernels), zero-points in `uint8` (8 bits each).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxlab.quant import packing


def is_quantized(x: Any) -> bool:
  """A quantized leaf: anything with `dequantize()`, `storage_bits()` and `num_weights`."""
  return hasattr(x, 'storage_bits') and hasattr(x, 'dequantize')


def _array_bits(x: jax.Array | None) -> int:
  return 0 if x is None else int(x.size) * jnp.dtype(x.dtype).itemsize * 8


def _check_matrix(w: jax.Array, name: str = 'w') -> None:
  if w.ndim != 2:
    raise ValueError(f'{name}: expected a [in, out] matrix, got shape {w.shape}')


def _group_rows(num_in: int, group_size: int | None) -> int:
  """Rows sharing one scale: `in` (per channel), `group_size`, or -1 → per tensor (`in`)."""
  if group_size is None or group_size == -1:
    return num_in
  if not isinstance(group_size, int | np.integer) or group_size <= 0:
    raise ValueError(f'group_size: expected None, -1 or a positive int, got {group_size!r}')
  if num_in % group_size:
    raise ValueError(
      f'group_size: expected a divisor of the input dimension {num_in}, got {group_size}'
    )
  return int(group_size)


def _grouped(w: jax.Array, rows: int) -> jax.Array:
  """`[in, out]` → `[in/rows, rows, out]` so a group reduces over axis 1."""
  return w.reshape(w.shape[0] // rows, rows, w.shape[1])


def _expand(p: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Broadcasts a `[groups, out]` (or `[1, 1]`) parameter over the rows of its groups."""
  rows = shape[0] // p.shape[0]
  return jnp.broadcast_to(jnp.repeat(p, rows, axis=0), shape)


def _round_up(s: jax.Array, dtype) -> jax.Array:
  """Casts `s` to `dtype` rounding up, so `s_stored ≥ s` and no weight clips."""
  t = s.astype(dtype)
  return jnp.where(t.astype(jnp.float32) < s, jnp.nextafter(t, jnp.asarray(jnp.inf, dtype)), t)


def quantize_to_grid(
  w: jax.Array, scale: jax.Array, zero: jax.Array | None, bits: int
) -> jax.Array:
  """Round-to-nearest codes of `w` on the grid of `scale` (and `zero`), as `uint8`.

  `scale`/`zero` broadcast against `w` (a whole matrix or one column, as GPTQ needs).
  Symmetric (`zero is None`): `c = clip(round((w/s + 2^b − 1)/2), 0, 2^b − 1)`;
  asymmetric: `c = clip(round(w/s) + z, 0, 2^b − 1)`.
  """
  top = 2**bits - 1
  s = jnp.asarray(scale, jnp.float32)
  s = jnp.where(s == 0, 1.0, s)
  w = jnp.asarray(w, jnp.float32)
  if zero is None:
    c = jnp.round((w / s + top) / 2)
  else:
    c = jnp.round(w / s) + jnp.asarray(zero, jnp.float32)
  return jnp.clip(c, 0, top).astype(jnp.uint8)


@struct.dataclass
class QuantizedTensor:
  """Packed `bits`-bit codes of a `[in, out]` matrix with per-group scales (module docstring).

  Attributes:
    packed: `uint32` words of the code bit stream (`packing.pack`, row-major codes).
    scale: `[in/group_rows, out]` scales (`[1, 1]` per tensor, `[1, out]` per channel).
    zero: integer zero-points (`uint8`, same shape as `scale`), or None for the symmetric grid.
    shape: the matrix shape `(in, out)`.
    bits: code width, 1 to 8.
    group_size: None (per output channel), -1 (per tensor) or the rows per group.
  """

  packed: jax.Array
  scale: jax.Array
  zero: jax.Array | None
  shape: tuple[int, int] = struct.field(pytree_node=False)
  bits: int = struct.field(pytree_node=False)
  group_size: int | None = struct.field(pytree_node=False)

  @property
  def symmetric(self) -> bool:
    return self.zero is None

  @property
  def num_weights(self) -> int:
    return math.prod(self.shape)

  @classmethod
  def from_codes(
    cls,
    codes: jax.Array,
    scale: jax.Array,
    zero: jax.Array | None,
    bits: int,
    group_size: int | None,
    symmetric: bool,
  ) -> QuantizedTensor:
    """Packs `[in, out]` codes with their `[groups, out]` scales (and zero-points).

    `scale` is stored as given (cast it to the storage dtype first, e.g. float16); `zero` is
    stored as `uint8`. `symmetric=True` requires `zero is None` and vice versa.
    """
    _check_matrix(codes, 'codes')
    if symmetric != (zero is None):
      raise ValueError(
        f'zero: expected {"None" if symmetric else "an array"} for symmetric={symmetric}, '
        f'got {type(zero).__name__}'
      )
    rows = _group_rows(codes.shape[0], group_size)
    groups = (1, 1) if group_size == -1 else (codes.shape[0] // rows, codes.shape[1])
    scale = jnp.asarray(scale)
    if scale.shape != groups:
      raise ValueError(f'scale: expected shape {groups}, got {scale.shape}')
    if zero is not None:
      zero = jnp.asarray(zero)
      if zero.shape != groups:
        raise ValueError(f'zero: expected shape {groups}, got {zero.shape}')
      zero = zero.astype(jnp.uint8)
    packed = packing.pack(codes, bits)
    return cls(packed, scale, zero, tuple(int(d) for d in codes.shape), bits, group_size)

  def codes(self) -> jax.Array:
    """The `[in, out]` `uint8` codes."""
    return packing.unpack(self.packed, self.bits, self.shape)

  def levels(self) -> jax.Array:
    """Integer grid values before scaling: `2c − (2^b − 1)` (symmetric) or `c − z`, as int32."""
    c = self.codes().astype(jnp.int32)
    if self.zero is None:
      return 2 * c - (2**self.bits - 1)
    return c - _expand(self.zero.astype(jnp.int32), self.shape)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """The float `[in, out]` weight `ŵ = s·level`."""
    s = _expand(self.scale.astype(jnp.float32), self.shape)
    return (s * self.levels().astype(jnp.float32)).astype(dtype)

  def storage_bits(self) -> int:
    """Every stored bit: packed words (with padding), scales and zero-points at their dtypes."""
    return _array_bits(self.packed) + _array_bits(self.scale) + _array_bits(self.zero)


def quantize(
  w: jax.Array,
  bits: int,
  *,
  group_size: int | None = None,
  symmetric: bool = True,
  scale_dtype=jnp.float16,
) -> QuantizedTensor:
  """Round-to-nearest (RTN) quantization of a `[in, out]` matrix.

  Per group `g` (tensor, output channel, or `group_size` input rows of a channel):
  symmetric `s = max_g|w| / (2^b − 1)` on the bipolar grid `s·{±1, ±3, …, ±(2^b−1)}` (step
  `2s`, error ≤ `s`); asymmetric `s = (max_g w − min_g w)/(2^b − 1)`, `z = round(−min_g w/s)`
  (step `s`, error ≤ `s/2` inside the grid's range). The stored scale is rounded *up* to
  `scale_dtype`, so no weight is clipped by the rounding of its scale.

  Args:
    w: `[in, out]` float matrix.
    bits: 1 to 8.
    group_size: None = per output channel, -1 = per tensor, k = k consecutive input rows.
    symmetric: bipolar (zero-free, symmetric) grid, or min/max grid with a zero-point.
    scale_dtype: storage dtype of the scales.
  """
  _check_matrix(w)
  packing._check_bits(bits)
  w = jnp.asarray(w, jnp.float32)
  rows = _group_rows(w.shape[0], group_size)
  top = 2**bits - 1
  g = w.reshape(1, -1, 1) if group_size == -1 else _grouped(w, rows)
  if symmetric:
    scale = _round_up(jnp.max(jnp.abs(g), axis=1) / top, scale_dtype)
    zero = None
  else:
    # The range always contains 0 (as in GPTQ), so a zero weight stays exactly representable.
    lo = jnp.minimum(jnp.min(g, axis=1), 0.0)
    hi = jnp.maximum(jnp.max(g, axis=1), 0.0)
    scale = _round_up((hi - lo) / top, scale_dtype)
    safe = jnp.where(scale == 0, 1.0, scale.astype(jnp.float32))
    zero = jnp.clip(jnp.round(-lo / safe), 0, top).astype(jnp.uint8)
  full_zero = None if zero is None else _expand(zero, w.shape)
  codes = quantize_to_grid(w, _expand(scale.astype(jnp.float32), w.shape), full_zero, bits)
  return QuantizedTensor.from_codes(codes, scale, zero, bits, group_size, symmetric)


def binarize(w: jax.Array, *, group_size: int | None = None, scale_dtype=jnp.float16):
  """Binarization `ŵ = α·sign(w)` with `α = mean_g |w|` per output channel or group.

  `α` minimizes `‖w − α·sign(w)‖²` over the group (XNOR-Net). Codes are the sign bits
  (`c = 1` for `w ≥ 0`); the result is the 1-bit symmetric `QuantizedTensor`.
  """
  _check_matrix(w)
  w = jnp.asarray(w, jnp.float32)
  rows = _group_rows(w.shape[0], group_size)
  g = w.reshape(1, -1, 1) if group_size == -1 else _grouped(w, rows)
  alpha = jnp.mean(jnp.abs(g), axis=1).astype(scale_dtype)
  codes = (w >= 0).astype(jnp.uint8)
  return QuantizedTensor.from_codes(codes, alpha, None, 1, group_size, True)


def dequantize(tree: Any, dtype=jnp.float32) -> Any:
  """Dequantizes a quantized leaf or every quantized leaf of a tree; float leaves pass through."""
  return jax.tree_util.tree_map(
    lambda x: x.dequantize(dtype) if is_quantized(x) else x, tree, is_leaf=is_quantized
  )


def _quantized_leaves(tree: Any) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_quantized)
  return [(jax.tree_util.keystr(p), x) for p, x in flat if is_quantized(x)]


def storage_report(tree: Any) -> list[dict[str, Any]]:
  """Per quantized leaf: path, class, num_weights, storage_bits and bits_per_weight."""
  return [
    dict(
      path=path,
      kind=type(x).__name__,
      num_weights=int(x.num_weights),
      storage_bits=int(x.storage_bits()),
      bits_per_weight=x.storage_bits() / x.num_weights,
    )
    for path, x in _quantized_leaves(tree)
  ]


def bits_per_weight(tree: Any) -> float:
  """`Σ storage_bits / Σ num_weights` over the quantized leaves (float leaves not counted)."""
  leaves = _quantized_leaves(tree)
  if not leaves:
    raise ValueError('tree: expected at least one quantized leaf, got none')
  return sum(x.storage_bits() for _, x in leaves) / sum(x.num_weights for _, x in leaves)
