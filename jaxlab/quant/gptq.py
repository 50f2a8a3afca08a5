"""GPTQ: one-shot weight quantization with second-order error feedback (Frantar et al., 2022).

For a linear layer `y = x W` (`W ∈ R^{in×out}`, Flax kernel orientation) and calibration inputs
`X ∈ R^{n×in}`, GPTQ minimises the layer's output error `‖XW − XŴ‖²` over grid points `Ŵ`. Its
Hessian is `H = 2XᵀX/n`. Input rows are quantized one at a time, in order; the
rounding error of row `i` is spread over the rows not yet quantized with the inverse Hessian
(the OBS update):

  err = (w_i − q(w_i)) / [U]_ii,    w_j ← w_j − [U]_ij · err   for j > i,

where `U` is the upper Cholesky factor of `H⁻¹ = UᵀU` (§3 "Step 3: Cholesky reformulation";
`H` is first dampened by 1% of its mean diagonal). Updates are applied lazily: inside a block
of `block_size` rows immediately, to the rows after the block once per block (§3 "Step 2:
lazy batch-updates"). With `group_size`, a group's scales are computed from the (already
error-corrected) weights of its rows when its first row is reached (the paper's grouping).

The grid, scales and codes are those of `jaxlab.quant.tensor.quantize` (round-to-nearest), so
with `H ∝ I` (orthogonal calibration inputs) no error is fed forward and GPTQ equals RTN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.quant.calibration import (
  check_collected,
  collect_layer_stats,
  kernel_at,
  module_order,
  with_kernels,
)
from jaxlab.quant.model import as_matrix, kernel_paths
from jaxlab.quant.tensor import QuantizedTensor, quantize, quantize_to_grid


def hessian(x: jax.Array) -> jax.Array:
  """`H = 2XᵀX / n` of calibration inputs `x` (`[..., in]`, all leading axes are samples)."""
  x = jnp.asarray(x, jnp.float32).reshape(-1, x.shape[-1])
  return 2.0 * x.T @ x / x.shape[0]


def _levels(codes: jax.Array, zero: jax.Array | None, bits: int) -> jax.Array:
  """Integer grid values of `codes` (`2c − (2^b − 1)` symmetric, `c − z` asymmetric)."""
  c = codes.astype(jnp.float32)
  return 2 * c - (2**bits - 1) if zero is None else c - zero


def _grid(w: jax.Array, bits: int, symmetric: bool, scale_dtype) -> tuple[jax.Array, jax.Array]:
  """RTN scale and zero-point (`[out]` each, zero 0 when symmetric) of the rows `w`."""
  q = quantize(w, bits, group_size=None, symmetric=symmetric, scale_dtype=scale_dtype)
  zero = jnp.zeros_like(q.scale, jnp.float32) if q.zero is None else q.zero.astype(jnp.float32)
  return q.scale[0], zero[0]


def inverse_hessian_factor(h: jax.Array, damp: float = 0.01) -> jax.Array:
  """Upper Cholesky factor `U` of `(H + λI)⁻¹ = UᵀU`, `λ = damp · mean(diag H)`.

  Rows of dead inputs (`H_ii = 0`, never active in the calibration data) get `H_ii = 1`.
  """
  h = jnp.asarray(h, jnp.float32)
  diag = jnp.diag(h)
  h = h + jnp.diag(jnp.where(diag == 0, 1.0, 0.0))
  h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
  lower = jnp.linalg.cholesky(h)
  h_inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=h.dtype))
  return jnp.linalg.cholesky(h_inv).T


@functools.partial(
  jax.jit, static_argnames=('bits', 'group_size', 'symmetric', 'block_size', 'scale_dtype')
)
def _gptq_codes(w, u, bits, group_size, symmetric, block_size, scale_dtype):
  n_in, n_out = w.shape
  grouped = group_size is not None and group_size != -1
  rows = group_size if grouped else n_in
  n_groups = n_in // rows
  scale_dtype = jnp.dtype(scale_dtype)
  if grouped:
    scales = jnp.zeros((n_groups, n_out), scale_dtype)
    zeros = jnp.zeros((n_groups, n_out), jnp.float32)
  else:  # one grid for the whole matrix (per channel or per tensor), from the initial weights
    q = quantize(w, bits, group_size=group_size, symmetric=symmetric, scale_dtype=scale_dtype)
    scales = q.scale
    zeros = jnp.zeros(q.scale.shape, jnp.float32) if q.zero is None else q.zero.astype(jnp.float32)
  codes = jnp.zeros((n_in, n_out), jnp.uint8)

  for i1 in range(0, n_in, block_size):
    i2 = min(i1 + block_size, n_in)
    u1 = u[i1:i2, i1:i2]

    def row(j, carry, i1=i1, u1=u1):
      w1, err1, codes, scales, zeros = carry
      i = i1 + j
      if grouped:

        def new_group(sz):
          s, z = _grid(jax.lax.dynamic_slice_in_dim(w1, j, rows), bits, symmetric, scale_dtype)
          return sz[0].at[i // rows].set(s), sz[1].at[i // rows].set(z)

        scales, zeros = jax.lax.cond(i % rows == 0, new_group, lambda sz: sz, (scales, zeros))
      g = i // rows if grouped else 0
      s = jnp.broadcast_to(scales[g].astype(jnp.float32), (n_out,))
      z = None if symmetric else jnp.broadcast_to(zeros[g], (n_out,))
      c = quantize_to_grid(w1[j], s, z, bits)
      err = (w1[j] - s * _levels(c, z, bits)) / u1[j, j]
      w1 = w1 - u1[j][:, None] * err[None, :]  # U is upper triangular: rows < j untouched
      return w1, err1.at[j].set(err), codes.at[i].set(c), scales, zeros

    init = (w[i1:i2], jnp.zeros((i2 - i1, n_out), jnp.float32), codes, scales, zeros)
    _, err1, codes, scales, zeros = jax.lax.fori_loop(0, i2 - i1, row, init)
    w = w.at[i2:].add(-u[i1:i2, i2:].T @ err1)  # the lazy batch update of the later rows
  return codes, scales, zeros


def gptq(
  w: jax.Array,
  h: jax.Array,
  bits: int,
  *,
  group_size: int | None = None,
  symmetric: bool = True,
  block_size: int = 128,
  damp: float = 0.01,
  scale_dtype=jnp.float16,
) -> QuantizedTensor:
  """GPTQ-quantizes a `[in, out]` weight given the Hessian of its calibration inputs.

  Args:
    w: `[in, out]` float weight.
    h: `[in, in]` Hessian `2XᵀX/n` (`hessian`).
    bits: code width, 1 to 8.
    group_size: None = one scale per output channel, -1 = per tensor, k = per k input rows.
    symmetric: the bipolar symmetric grid of `quantize`, or the min/max grid with zero-points.
    block_size: rows per lazy batch update (the paper's 128); rounded up to a multiple of
      `group_size`, so a group never straddles two blocks.
    damp: dampening `λ = damp · mean(diag H)` added to the diagonal (the paper's 1%).
    scale_dtype: storage dtype of the scales.

  Returns:
    The `QuantizedTensor` (same layout and bits account as `quantize`'s).

  Raises:
    ValueError: on shapes that do not match, or a Hessian that is not positive definite even
      after dampening (raise `damp`).
  """
  if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
    raise ValueError(
      f'w, h: expected a [in, out] weight and a [in, in] Hessian, got {w.shape} and {h.shape}'
    )
  if block_size <= 0:
    raise ValueError(f'block_size: expected a positive int, got {block_size}')
  if group_size is not None and group_size != -1:
    if not isinstance(group_size, int) or group_size <= 0 or w.shape[0] % group_size:
      raise ValueError(
        f'group_size: expected None, -1 or a divisor of the input dimension {w.shape[0]}, '
        f'got {group_size!r}'
      )
    block_size = -(-block_size // group_size) * group_size
  q, finite = _gptq(
    jnp.asarray(w, jnp.float32),
    jnp.asarray(h, jnp.float32),
    damp,
    bits,
    group_size,
    symmetric,
    block_size,
    jnp.dtype(scale_dtype).name,
  )
  if not bool(finite):
    raise ValueError(f'h: not positive definite after dampening damp={damp}; raise damp')
  return q


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _gptq(w, h, damp, bits, group_size, symmetric, block_size, scale_dtype):
  dead = jnp.diag(h) == 0
  w = jnp.where(dead[:, None], 0.0, w)  # inputs never seen: their weights cannot matter
  u = inverse_hessian_factor(h, damp)
  codes, scales, zeros = _gptq_codes(w, u, bits, group_size, symmetric, block_size, scale_dtype)
  zero = None if symmetric else zeros.astype(jnp.uint8)
  q = QuantizedTensor.from_codes(codes, scales, zero, bits, group_size, symmetric)
  return q, jnp.all(jnp.isfinite(u))


_dequantize = jax.jit(lambda q: q.dequantize())


def gptq_params(
  model: Any,
  params: Any,
  batches: Sequence[jax.Array],
  rules: Sequence[str],
  bits: int,
  **kwargs,
) -> Any:
  """GPTQ-quantizes the kernels of `params` matched by `rules`, sequentially by module.

  As the paper does, the layers are quantized one top-level module (transformer
  block) at a time, in model order, and each block's Hessians come from inputs that went through
  the already-quantized blocks before it.

  Args:
    model: the Flax model (`model.apply({'params': p}, tokens)`).
    params: its float parameters.
    batches: calibration token arrays.
    rules: kernel path regexes (`jaxlab.quant.model.kernel_paths`).
    bits: code width.
    **kwargs: `gptq` options (`group_size`, `symmetric`, `block_size`, `damp`, `scale_dtype`).

  Returns:
    `params` with each selected kernel replaced by its quantized leaf.
  """
  paths = kernel_paths(params, rules)
  if not paths:
    raise ValueError(f'rules: expected to match at least one kernel, got none for {list(rules)}')
  groups: dict[str, list[str]] = {}
  for path in paths:
    groups.setdefault(path.split('/')[0], []).append(path)
  current, leaves = params, {}
  for name in sorted(groups, key=module_order):
    group = groups[name]
    stats = collect_layer_stats(model, current, batches)
    check_collected(stats, group)
    done = {}
    for path in group:
      matrix, restore = as_matrix(path, kernel_at(params, path))
      leaves[path] = gptq(matrix, stats[path].hessian(), bits, **kwargs)
      done[path] = restore(_dequantize(leaves[path]))
    current = with_kernels(current, done)
  return with_kernels(params, leaves)
