"""Pallas kernel: packed ±1 bit-plane matmul with the bipolar-INT recovery fused.

The kernel side of `bipolar_int` (PAPERS.md), whose GPU kernels recover the result from the
bit-plane products in fast on-chip memory.

Inputs are the planes packed along the contraction axis, 32 per `uint32` word (bit 1 = +1):
`a` `[p_a, m, kw]` and `w` `[p_w, n, kw]` (the weight transposed, so both read `k`
contiguously, the paper's preprocessing layout). Each program computes one `[block_m, block_n]`
output tile (block sizes powers of two, as GPU lowering wants): for every plane pair it
accumulates `popcount(a_i ⊕ w_j)` over `k` in chunks of `block_k` words, and adds
`2^{i+j}·(k − 2·mismatches)` to an int32 accumulator that never leaves the tile (the recovery
happens where the partial products are, not in a second pass over `p_a·p_w` output matrices).
With `interpret=True` (the default on a CPU backend) it runs on CPU through the Pallas
interpreter, for correctness; it has not been run on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _kernel(a_ref, w_ref, o_ref, *, planes: tuple[int, int, int, int], k: int, block_k: int):
  pa, pw, rows_a, rows_w = planes  # plane p of A is rows [p·rows_a, (p+1)·rows_a) of a_ref
  bm, bn = o_ref.shape
  m0, n0 = pl.program_id(0) * bm, pl.program_id(1) * bn
  acc = jnp.zeros((bm, bn), jnp.int32)
  for i in range(pa):
    for j in range(pw):

      def chunk(c, mismatch, i=i, j=j):
        cols = pl.ds(c * block_k, block_k)
        a = a_ref[pl.ds(i * rows_a + m0, bm), cols]
        w = w_ref[pl.ds(j * rows_w + n0, bn), cols]
        x = jax.lax.population_count(a[:, None, :] ^ w[None, :, :])
        return mismatch + jnp.sum(x.astype(jnp.int32), axis=-1)

      steps = a_ref.shape[1] // block_k
      mismatch = jax.lax.fori_loop(0, steps, chunk, jnp.zeros((bm, bn), jnp.int32))
      acc = acc + ((k - 2 * mismatch) << (i + j))
  o_ref[...] = acc


def _pad_to(x: jax.Array, axis: int, multiple: int) -> jax.Array:
  pad = -x.shape[axis] % multiple
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


@functools.partial(jax.jit, static_argnames=('k', 'block_m', 'block_n', 'block_k', 'interpret'))
def bitplane_matmul(
  a: jax.Array,
  w: jax.Array,
  k: int,
  *,
  block_m: int = 32,
  block_n: int = 32,
  block_k: int = 4,
  interpret: bool | None = None,
) -> jax.Array:
  """`Σ_ij 2^{i+j} (A_i·W_j)` from packed planes; the exact int32 `A @ W` (`[m, n]`).

  Args:
    a: `[p_a, m, kw]` uint32 packed planes of `A` (`bipolar.pack_planes(A, p_a, axis=1)`).
    w: `[p_w, n, kw]` uint32 packed planes of `Wᵀ` (`bipolar.pack_planes(W.T, p_w, axis=1)`).
    k: the true contraction length (zero padding bits never mismatch and are not counted).
    block_m, block_n: output tile; block_k: words per popcount step.
    interpret: run in the Pallas interpreter; None = when the backend is CPU.
  """
  if interpret is None:
    interpret = jax.default_backend() == 'cpu'
  if a.dtype != jnp.uint32 or w.dtype != jnp.uint32 or a.shape[2] != w.shape[2]:
    raise ValueError(
      f'a, w: expected uint32 [p_a, m, kw] and [p_w, n, kw], got {a.dtype}{a.shape} and '
      f'{w.dtype}{w.shape}'
    )
  for name, b in (('block_m', block_m), ('block_n', block_n), ('block_k', block_k)):
    if b < 1 or b & (b - 1):
      raise ValueError(f'{name}: expected a power of two (GPU block shapes), got {b}')
  m, n = a.shape[1], w.shape[1]
  block_k = min(block_k, 1 << (a.shape[2] - 1).bit_length())
  a = _pad_to(_pad_to(a, 1, block_m), 2, block_k)  # zero words: no mismatches
  w = _pad_to(_pad_to(w, 1, block_n), 2, block_k)
  pa, mp, kw = a.shape
  pw, np_ = w.shape[:2]
  # Planes stacked along rows; each program reads its tiles of every plane with `pl.ds`.
  out = pl.pallas_call(
    functools.partial(_kernel, planes=(pa, pw, mp, np_), k=k, block_k=block_k),
    out_shape=jax.ShapeDtypeStruct((mp, np_), jnp.int32),
    grid=(mp // block_m, np_ // block_n),
    out_specs=pl.BlockSpec((block_m, block_n), lambda i, j: (i, j)),
    interpret=interpret,
  )(a.reshape(pa * mp, kw), w.reshape(pw * np_, kw))
  return out[:m, :n]
