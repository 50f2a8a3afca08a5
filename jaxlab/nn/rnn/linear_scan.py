"""Linear recurrences `y_t = A_t y_{t-1} + b_t` in O(log T) depth with `jax.lax.associative_scan`.

The pairs `e_t = (A_t, b_t)` compose associatively (ParaRNN Sec. 3; DEER Sec. 3.2):

  (A_i, b_i) ∘ (A_j, b_j) = (A_j A_i, A_j b_i + b_j)      (i earlier than j)

and `y_t` is the `b` part of the inclusive prefix of `(0, y_0), e_1, ..., e_t`. Three structures
of `A` (time is axis 0 of every array):

  'diag'   A: [T, D]        b: [T, D]        elementwise, O(T D)
  'block'  A: [T, N, k, k]  b: [T, N, k]     N independent k x k blocks (k = 2, 3), O(T N k^3)
  'dense'  A: [T, D, D]     b: [T, D]        O(T D^3) work, O(T D^2) memory: small D only
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from jaxlab.core.errors import ConfigError

STRUCTURES = ('diag', 'block', 'dense')
DENSE_WARN_SIZE = 256  # a dense scan over D > this holds T x D x D products: warn


def matvec(structure: str, a: jax.Array, y: jax.Array) -> jax.Array:
  """`A y` for one structure (leading dimensions broadcast)."""
  if structure == 'diag':
    return a * y
  return jnp.einsum('...ij,...j->...i', a, y)


def matmul(structure: str, a_later: jax.Array, a_earlier: jax.Array) -> jax.Array:
  """`A_j A_i` for one structure."""
  if structure == 'diag':
    return a_later * a_earlier
  return jnp.einsum('...ij,...jk->...ik', a_later, a_earlier)


def transpose(structure: str, a: jax.Array) -> jax.Array:
  """`Aᵀ` (blocks transposed in place for 'block')."""
  return a if structure == 'diag' else jnp.swapaxes(a, -1, -2)


def check_structure(structure: str, a: jax.Array, b: jax.Array) -> None:
  """Shapes of `A` and `b` must fit `structure`; errors say what was expected and what came."""
  if structure not in STRUCTURES:
    raise ConfigError(f'structure: expected one of {STRUCTURES}, got {structure!r}')
  want = {'diag': b.shape, 'block': b.shape + b.shape[-1:], 'dense': b.shape + b.shape[-1:]}
  if a.shape != want[structure]:
    raise ValueError(
      f'{structure} recurrence: expected A of shape {want[structure]} for b of '
      f'shape {b.shape}, got {a.shape}'
    )
  if structure == 'dense' and b.shape[-1] > DENSE_WARN_SIZE:
    warnings.warn(
      f'dense linear scan over D={b.shape[-1]} holds T x D x D = {b.shape[0]}x{b.shape[-1]}^2 '
      "matrices; use a 'diag' or 'block' cell (quasi-DEER) for large D",
      stacklevel=3,
    )


def linear_recurrence(
  structure: str, a: jax.Array, b: jax.Array, y0: jax.Array, *, reverse: bool = False
) -> jax.Array:
  """Solves `y_t = A_t y_{t-1} + b_t`, t = 1..T, for all t at once.

  Args:
    structure: 'diag', 'block' or 'dense' (see the module docstring for shapes).
    a: `A_1..A_T`, time on axis 0.
    b: `b_1..b_T`, time on axis 0.
    y0: the initial state, shaped like `b[0]`.
    reverse: run from t = T down to 1 instead (`y_t = A_t y_{t+1} + b_t`, `y0` after the end);
      the adjoint (backward) pass of a recurrence is this.

  Returns:
    `y_1..y_T`, shaped like `b`.
  """
  check_structure(structure, a, b)
  b = b.at[-1 if reverse else 0].add(matvec(structure, a[-1 if reverse else 0], y0))

  def combine(earlier, later):
    a_i, b_i = earlier
    a_j, b_j = later
    return matmul(structure, a_j, a_i), matvec(structure, a_j, b_i) + b_j

  return jax.lax.associative_scan(combine, (a, b), reverse=reverse)[1]


def sequential_linear_recurrence(
  structure: str, a: jax.Array, b: jax.Array, y0: jax.Array
) -> jax.Array:
  """The same recurrence with `lax.scan` (the reference the parallel one is tested against)."""
  check_structure(structure, a, b)

  def step(y, ab):
    y = matvec(structure, ab[0], y) + ab[1]
    return y, y

  return jax.lax.scan(step, y0, (a, b))[1]
