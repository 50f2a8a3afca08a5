"""Kernels as `[in, out]` matrices: which leading axes a kernel contracts with its input.

Compression methods (pruning allocators, LoRA, quantization) reason about a linear layer as a
matrix `y = x W` with `W ∈ R^{in×out}`. Flax kernels keep more axes:

- `nn.Dense`: `[in, out]`; `nn.Conv`: `[*window, in, out]` (all axes but the last contracted);
- the transformer's per-head `Projection`s: query/key/value `[embed, heads, kv]` contract only
  `embed`; the attention output `[heads, kv, embed]` contracts `heads, kv` (all but the last).

So every kernel contracts all axes but its last, except the rank-3 query/key/value kernels,
which contract their first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Rank-3 kernels whose output is `[heads, kv]`: the attention's query, key and value.
_HEADS_OUT = re.compile(r'(.*/)?(query|key|value)/kernel')


def in_rank(path: str, ndim: int) -> int:
  """How many leading axes of the kernel at `path` are contracted with the input."""
  return 1 if ndim == 3 and _HEADS_OUT.fullmatch(path) else ndim - 1


def as_matrix(path: str, kernel: jax.Array) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
  """The `[in, out]` matrix view of a kernel, and `restore(matrix) -> kernel`."""
  if kernel.ndim < 2:
    raise ValueError(f'{path}: expected a kernel of rank >= 2, got shape {kernel.shape}')
  shape = kernel.shape
  r = in_rank(path, kernel.ndim)
  matrix = kernel.reshape(math.prod(shape[:r]), math.prod(shape[r:]))
  return matrix, lambda m: jnp.reshape(m, shape)
