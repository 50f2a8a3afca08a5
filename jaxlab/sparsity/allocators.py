"""How much to remove where: group scores per family -> which groups to keep.

Every allocator takes the scores of each family's groups (a list of `[size]` arrays, higher =
keep) and a target sparsity (the fraction of groups to remove; traced values are fine) and
returns a list of boolean `[size]` keep vectors. Counts are exact: ties are broken by position
(stable sort), so `round(sparsity * groups)` groups are removed.

- `global`: one threshold over all groups of all families (Han et al., 2015; SNIP, SynFlow).
- `uniform`: the same fraction removed in every family.
- `ratio`: a given density per family (PreCropping's layerwise ratios, Sec. 4), ignoring the
  target sparsity.
- `per_output`: the same fraction removed among the inputs of every output unit of each kernel
  (Wanda's comparison group, Sun et al., 2024, Sec. 3); unstructured families only.
- `nm`: N:M semi-structured sparsity, keeping the `n` best of every `m` consecutive entries
  along a kernel's inputs (Mishra et al., 2021); unstructured families only.

Kernels are seen as `[in, out]` matrices (`jaxlab.nn.kernels.as_matrix`: a conv kernel as
`[H*W*in, out]`, the attention's `[embed, heads, kv]` query as `[embed, heads*kv]`).

`min_keep` groups of every family survive any allocation (no layer collapse: a removed layer
would disconnect the network).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core.registry import Registry
from jaxlab.nn.kernels import as_matrix
from jaxlab.sparsity.groups import Family

Allocator = Callable[..., list[jax.Array]]
ALLOCATORS: Registry[Allocator] = Registry('allocator')


def _protect_best(scores: jax.Array, min_keep: int) -> jax.Array:
  """Scores with the `min_keep` best set to +inf (so they rank last for removal)."""
  if min_keep <= 0:
    return scores
  top = jnp.argsort(-scores, stable=True)[:min_keep]
  return scores.at[top].set(jnp.inf)


def _keep_all_but_lowest(scores: jax.Array, k: jax.Array) -> jax.Array:
  """Keeps everything except the `k` lowest scores (ties: the earlier index goes first)."""
  rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
  return rank >= k


@ALLOCATORS.register('global')
def global_threshold(
  scores: Sequence[jax.Array], sparsity: jax.Array, *, min_keep: int = 1, **_
) -> list[jax.Array]:
  """Removes the `round(sparsity * total)` lowest-scoring groups over all families (at most
  all but the `min_keep` best of each family)."""
  sizes = [s.shape[0] for s in scores]
  flat = jnp.concatenate([_protect_best(s.astype(jnp.float32), min_keep) for s in scores])
  protected = sum(min(max(min_keep, 0), n) for n in sizes)
  k = jnp.round(sparsity * flat.shape[0]).astype(jnp.int32)
  k = jnp.minimum(k, flat.shape[0] - protected)  # the protected (+inf) groups never go
  keep = _keep_all_but_lowest(flat, k)
  return list(jnp.split(keep, np.cumsum(sizes)[:-1]))


@ALLOCATORS.register('uniform')
def uniform(
  scores: Sequence[jax.Array], sparsity: jax.Array, *, min_keep: int = 1, **_
) -> list[jax.Array]:
  """Removes `round(sparsity * size)` groups of each family (at most `size - min_keep`)."""
  out = []
  for s in scores:
    k = jnp.minimum(jnp.round(sparsity * s.shape[0]).astype(jnp.int32), s.shape[0] - min_keep)
    out.append(_keep_all_but_lowest(s.astype(jnp.float32), k))
  return out


@ALLOCATORS.register('ratio')
def ratio(
  scores: Sequence[jax.Array],
  sparsity: jax.Array,
  *,
  families: Sequence[Family],
  densities: Mapping[str, float],
  min_keep: int = 1,
  **_,
) -> list[jax.Array]:
  """Keeps `max(round(density[f] * size), min_keep)` groups of each family `f`."""
  del sparsity
  missing = [f.name for f in families if f.name not in densities]
  if missing:
    raise ValueError(f'ratio allocator: no density given for families {missing}')
  out = []
  for s, f in zip(scores, families, strict=True):
    kept = max(round(densities[f.name] * f.size), min_keep)
    out.append(_keep_all_but_lowest(s.astype(jnp.float32), f.size - kept))
  return out


def nm_keep(scores: jax.Array, n: int, m: int, axis: int = -2) -> jax.Array:
  """Keep mask with exactly the `n` best of every `m` consecutive entries along `axis`."""
  axis = axis % scores.ndim
  if scores.shape[axis] % m:
    raise ValueError(f'N:M sparsity: axis of size {scores.shape[axis]} is not a multiple of {m}')
  moved = jnp.moveaxis(scores, axis, -1)
  blocks = moved.reshape(*moved.shape[:-1], -1, m)
  rank = jnp.argsort(jnp.argsort(-blocks, axis=-1, stable=True), axis=-1, stable=True)
  keep = (rank < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


def _kernel_matrices(
  scores: Sequence[jax.Array],
  families: Sequence[Family],
  shapes: Mapping[str, tuple[int, ...]],
  allocator: str,
) -> list[tuple[jax.Array, Family]]:
  """Each unstructured family's scores as the `[in, out]` matrix of its kernel."""
  out = []
  for s, f in zip(scores, families, strict=True):
    (member,) = f.members
    if member.axis is not None:
      raise ValueError(
        f'{allocator} allocation needs unstructured families; {f.name} is structured'
      )
    shape = shapes[member.path]
    if len(shape) < 2:
      matrix = s.reshape(-1, 1)
    else:
      matrix, _ = as_matrix(member.path.removeprefix('params/'), s.reshape(shape))
    out.append((matrix, f))
  return out


@ALLOCATORS.register('per_output')
def per_output(
  scores: Sequence[jax.Array],
  sparsity: jax.Array,
  *,
  families: Sequence[Family],
  shapes: Mapping[str, tuple[int, ...]],
  **_,
) -> list[jax.Array]:
  """Removes `round(sparsity * in)` of the lowest-scoring inputs of every output column."""
  out = []
  for matrix, _ in _kernel_matrices(scores, families, shapes, 'per_output'):
    k = jnp.round(sparsity * matrix.shape[0]).astype(jnp.int32)
    keep = jax.vmap(_keep_all_but_lowest, in_axes=(1, None), out_axes=1)(
      matrix.astype(jnp.float32), k
    )
    out.append(keep.reshape(-1))
  return out


@ALLOCATORS.register('nm')
def nm(
  scores: Sequence[jax.Array],
  sparsity: jax.Array,
  *,
  families: Sequence[Family],
  shapes: Mapping[str, tuple[int, ...]],
  n: int = 2,
  m: int = 4,
  **_,
) -> list[jax.Array]:
  """N:M along each kernel's inputs; the sparsity is `1 - n/m`."""
  del sparsity
  out = []
  for matrix, f in _kernel_matrices(scores, families, shapes, 'N:M'):
    if matrix.shape[0] % m:
      raise ValueError(
        f'N:M sparsity: {f.name} has {matrix.shape[0]} inputs per output, not a multiple of '
        f'{m}; exclude it (plugins.prune.exclude)'
      )
    out.append(nm_keep(matrix, n, m, axis=0).reshape(-1))
  return out
