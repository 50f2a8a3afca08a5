"""Certifiable activations: a `jax.custom_jvp` function plus a slope rule bounding its derivative.

Bound propagation on the Jacobian of a network (Shi et al., NeurIPS 2022, "Efficiently Computing
Local Lipschitz Constants of Neural Networks via Bound Propagation", Sec. 3) needs, for every
activation `σ`, the range of its Clarke derivative over an interval of pre-activations:

  elementwise:  σ'(z) ∈ [dmin, dmax]      for all z ∈ [l, u]
  grouped:      J(z)_{ik} ∈ [jlo_{ik}, jhi_{ik}]  for the per-group Jacobian of z ∈ [l, u]

An activation is made certifiable by writing that one rule: `certifiable(name, slope=...)`
wraps the primal function in a `jax.custom_jvp` whose JVP uses the same derivative, so the slope
that training differentiates through is the one the certifier bounds. Bound propagation
(`jaxlab.lipschitz.graph`) recognises the `custom_jvp_call` of a registered activation in the
model's jaxpr by its name (`'certifiable.<name>'`), reads the rule from `CERTIFIABLE`, and
treats constant extra arguments (a leaky slope, a Householder vector) as parameters of the rule.

`check_slope_rule` samples derivatives on random intervals and raises `SlopeRuleError` when a
rule is too narrow, which is the failure that would make a Lipschitz bound unsound.

Contract of the grouped activations (groups are consecutive entries of the last axis):
`maxmin(x)` maps each pair `(x_{2j}, x_{2j+1})` to `(max, min)` (Anil et al., 2019);
`groupsort(x, g)` sorts each group of `g` entries in descending order, so
`maxmin(x) == groupsort(x, 2)`; `householder(x, v)` maps each group `z` to `z` if `vᵀz > 0`
and to `(I − 2vvᵀ) z` otherwise (Singla et al., 2021), with `v` normalised to a unit vector.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SlopeRule = Callable[..., tuple[Array, Array]]
_PREFIX = 'certifiable.'


class SlopeRuleError(ValueError):
  """A slope rule that misses a sampled derivative: bounds built on it would be unsound."""


@dataclasses.dataclass(frozen=True)
class Certifiable:
  """A registered certifiable activation.

  Attributes:
    name: registry key; the custom-JVP primal is named `'certifiable.' + name` in jaxprs.
    fn: the `jax.custom_jvp` function `fn(x, *params)`.
    slope: the slope rule `slope(lb, ub, *params)`. Elementwise: `(dmin, dmax)` shaped like `lb`.
      Grouped: `(jlo, jhi)` shaped `(*lb.shape[:-1], n // g, g, g)`, entry `[i, k]` bounding
      `∂y_i / ∂z_k` inside each group.
    group_size: `None` for an elementwise activation, else the size of its groups (for
      Householder the size comes from `v`, see `group_size_of`).
    interval: optional tight interval map `(lb, ub, *params) -> (lo, hi)` of the output; without
      it, bound propagation derives one from the slope rule.
    permutation: every Jacobian is a permutation matrix (sort-type activations); then each
      entry of `Jᵀ g` is one of the `g_i` allowed by `jhi`, which bound propagation exploits.
  """

  name: str
  fn: Callable[..., Array]
  slope: SlopeRule
  group_size: int | None = None
  interval: Callable[..., tuple[Array, Array]] | None = None
  permutation: bool = False

  @property
  def grouped(self) -> bool:
    return self.group_size is not None

  def group_size_of(self, *params: Array) -> int:
    """The group size; Householder reads it from its vector's last axis."""
    if self.group_size == -1:
      return int(jnp.shape(params[0])[-1])
    return int(self.group_size)


CERTIFIABLE: dict[str, Certifiable] = {}


def certifiable(
  name: str,
  *,
  slope: SlopeRule,
  derivative: Callable[..., Array] | None = None,
  group_size: int | None = None,
  interval: Callable[..., tuple[Array, Array]] | None = None,
  permutation: bool = False,
) -> Callable[[Callable[..., Array]], Callable[..., Array]]:
  """Decorator registering `fun(x, *params)` as a certifiable activation.

  Args:
    name: registry key (unique).
    slope: the slope rule (see `Certifiable.slope`).
    derivative: for elementwise activations, `σ'(x, *params)`; the JVP is then
      `tx ⊙ σ'(x)` (plus the JVP in the parameters). Without it the JVP differentiates `fun`.
    group_size: `None` (elementwise), a positive group size, or `-1` (taken from `params[0]`).
    interval: optional output interval map (see `Certifiable.interval`).
    permutation: whether every Jacobian is a permutation matrix (see `Certifiable`).

  Returns:
    A decorator returning the `jax.custom_jvp` function, which is also stored in `CERTIFIABLE`.
  """
  if name in CERTIFIABLE:
    raise ValueError(f'certifiable activation {name!r} is already registered')

  def decorator(fun: Callable[..., Array]) -> Callable[..., Array]:
    def primal(x, *params):
      return fun(x, *params)

    # The jaxpr's `custom_jvp_call` carries this name; `jaxlab.lipschitz.graph` looks it up.
    primal.__name__ = primal.__qualname__ = _PREFIX + name
    f = jax.custom_jvp(primal)

    @f.defjvp
    def _jvp(primals, tangents):
      x, *params = primals
      tx, *tparams = tangents
      y = f(x, *params)
      if derivative is None:
        _, dy = jax.jvp(fun, primals, tangents)
        return y, dy
      dy = tx * derivative(x, *params)
      if params:
        _, dp = jax.jvp(lambda *p: fun(x, *p), tuple(params), tuple(tparams))
        dy = dy + dp
      return y, dy

    CERTIFIABLE[name] = Certifiable(name, f, slope, group_size, interval, permutation)
    return f

  return decorator


def lookup(primal_name: str) -> Certifiable | None:
  """The registered activation whose custom-JVP primal is called `primal_name`, if any."""
  if not primal_name.startswith(_PREFIX):
    return None
  return CERTIFIABLE.get(primal_name[len(_PREFIX) :])


# ----------------------------------------------------------------------------------------------
# Elementwise activations.
# ----------------------------------------------------------------------------------------------


def _relu_slope(lb: Array, ub: Array) -> tuple[Array, Array]:
  # Clarke derivative of ReLU at 0 is [0, 1]; an interval touching 0 gets the whole hull.
  return (lb > 0).astype(lb.dtype), (ub >= 0).astype(lb.dtype)


@certifiable(
  'relu',
  slope=_relu_slope,
  derivative=lambda x: (x > 0).astype(x.dtype),
  interval=lambda lb, ub: (jnp.maximum(lb, 0), jnp.maximum(ub, 0)),
)
def relu(x: Array) -> Array:
  """ReLU, `max(x, 0)`; derivative 1[x > 0]."""
  return jnp.maximum(x, 0)


def _leaky_slope(lb: Array, ub: Array, s: Array) -> tuple[Array, Array]:
  lo_slope, hi_slope = jnp.minimum(s, 1), jnp.maximum(s, 1)
  dmin = jnp.where(lb > 0, 1.0, jnp.where(ub < 0, s, lo_slope))
  dmax = jnp.where(lb > 0, 1.0, jnp.where(ub < 0, s, hi_slope))
  return dmin.astype(lb.dtype), dmax.astype(lb.dtype)


def _leaky(x: Array, s: Array) -> Array:
  return jnp.where(x > 0, x, s * x)


_leaky_cert = certifiable(
  'leaky_relu',
  slope=_leaky_slope,
  derivative=lambda x, s: jnp.where(x > 0, 1.0, s).astype(x.dtype),
)(_leaky)


def leaky_relu(x: Array, slope: float | Array = 0.01) -> Array:
  """Leaky ReLU, `x if x > 0 else slope·x`; derivative in `{slope, 1}`."""
  return _leaky_cert(x, jnp.asarray(slope, x.dtype))


def _monotone_interval(f: Callable[[Array], Array]) -> Callable[..., tuple[Array, Array]]:
  return lambda lb, ub: (f(lb), f(ub))


def _tanh_slope(lb: Array, ub: Array) -> tuple[Array, Array]:
  # tanh' = 1 − tanh² is even and decreasing in |z|: max at the point of [lb, ub] nearest 0.
  def d(z):
    return 1 - jnp.tanh(z) ** 2

  nearest = jnp.clip(0, lb, ub)
  return jnp.minimum(d(lb), d(ub)), d(nearest)


@certifiable(
  'tanh',
  slope=_tanh_slope,
  derivative=lambda x: 1 - jnp.tanh(x) ** 2,
  interval=_monotone_interval(jnp.tanh),
)
def tanh(x: Array) -> Array:
  """Hyperbolic tangent; derivative `1 − tanh(x)²` ∈ (0, 1]."""
  return jnp.tanh(x)


def _sigmoid_slope(lb: Array, ub: Array) -> tuple[Array, Array]:
  # σ' = σ(1 − σ) is even and decreasing in |z| as well.
  def d(z):
    return jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z))

  nearest = jnp.clip(0, lb, ub)
  return jnp.minimum(d(lb), d(ub)), d(nearest)


@certifiable(
  'sigmoid',
  slope=_sigmoid_slope,
  derivative=lambda x: jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x)),
  interval=_monotone_interval(jax.nn.sigmoid),
)
def sigmoid(x: Array) -> Array:
  """Logistic sigmoid; derivative `σ(x)(1 − σ(x))` ∈ (0, 1/4]."""
  return jax.nn.sigmoid(x)


# ----------------------------------------------------------------------------------------------
# Grouped activations: MaxMin, GroupSort, Householder.
# ----------------------------------------------------------------------------------------------


def _groups(x: Array, g: int) -> Array:
  if x.shape[-1] % g:
    raise ValueError(f'last axis: expected a multiple of the group size {g}, got {x.shape[-1]}')
  return x.reshape(*x.shape[:-1], x.shape[-1] // g, g)


def _sort_slope(lb: Array, ub: Array, g: int) -> tuple[Array, Array]:
  """Jacobian range of a descending sort: a permutation matrix, `J[i, k] = 1` iff `z_k` has rank i.

  Input k has rank (0 = largest) at least `#{j : l_j > u_k}` and at most
  `g − 1 − #{j : u_j < l_k}`; at ties the Clarke Jacobian is the hull of the permutations, which
  these bounds contain because the counts use strict inequalities.
  """
  lg, ug = _groups(lb, g), _groups(ub, g)
  above = (lg[..., :, None] > ug[..., None, :]).sum(-2)  # [k]: j definitely above k
  below = (ug[..., :, None] < lg[..., None, :]).sum(-2)  # [k]: j definitely below k
  rank_min, rank_max = above, g - 1 - below
  i = jnp.arange(g)[:, None]
  jhi = (rank_min[..., None, :] <= i) & (i <= rank_max[..., None, :])
  jlo = (rank_min[..., None, :] == i) & (rank_max[..., None, :] == i)
  return jlo.astype(lb.dtype), jhi.astype(lb.dtype)


def _sort_interval(lb: Array, ub: Array, g: int) -> tuple[Array, Array]:
  # The r-th largest entry is monotone in every input, so it ranges over the r-th largest
  # lower and the r-th largest upper endpoint.
  def sort(a):
    return -jnp.sort(-_groups(a, g), axis=-1)

  return sort(lb).reshape(lb.shape), sort(ub).reshape(ub.shape)


@functools.cache
def _groupsort_fn(g: int) -> Callable[..., Array]:
  def fun(x: Array) -> Array:
    return (-jnp.sort(-_groups(x, g), axis=-1)).reshape(x.shape)

  return certifiable(
    f'groupsort{g}',
    slope=functools.partial(_sort_slope, g=g),
    group_size=g,
    interval=functools.partial(_sort_interval, g=g),
    permutation=True,
  )(fun)


def groupsort(x: Array, group_size: int) -> Array:
  """GroupSort (Anil et al., 2019): sorts each `group_size` block of the last axis, descending."""
  if int(group_size) < 1:
    raise ValueError(f'group_size: expected a positive integer, got {group_size!r}')
  return _groupsort_fn(int(group_size))(x)


@certifiable(
  'maxmin',
  slope=functools.partial(_sort_slope, g=2),
  group_size=2,
  interval=functools.partial(_sort_interval, g=2),
  permutation=True,
)
def maxmin(x: Array) -> Array:
  """MaxMin: each pair `(x_{2j}, x_{2j+1})` becomes `(max, min)`; equals `groupsort(x, 2)`."""
  p = _groups(x, 2)
  return jnp.stack([p.max(-1), p.min(-1)], axis=-1).reshape(x.shape)


def _unit(v: Array) -> Array:
  return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _householder_slope(lb: Array, ub: Array, v: Array) -> tuple[Array, Array]:
  """Jacobian is `I` where `vᵀz > 0` and `I − 2vvᵀ` where `vᵀz < 0` (both on the hyperplane)."""
  v = _unit(v)
  g = v.shape[-1]
  lg, ug = _groups(lb, g), _groups(ub, g)
  s_lo = jnp.minimum(v * lg, v * ug).sum(-1)
  s_hi = jnp.maximum(v * lg, v * ug).sum(-1)
  eye = jnp.eye(g, dtype=lb.dtype)
  reflect = eye - 2 * v[..., :, None] * v[..., None, :]
  eye, reflect = jnp.broadcast_arrays(eye, reflect)
  pos, neg = (s_lo > 0)[..., None, None], (s_hi < 0)[..., None, None]
  jlo = jnp.where(pos, eye, jnp.where(neg, reflect, jnp.minimum(eye, reflect)))
  jhi = jnp.where(pos, eye, jnp.where(neg, reflect, jnp.maximum(eye, reflect)))
  return jlo, jhi


@certifiable('householder', slope=_householder_slope, group_size=-1)
def _householder(x: Array, v: Array) -> Array:
  v = _unit(v)
  z = _groups(x, v.shape[-1])
  s = (z * v).sum(-1, keepdims=True)
  return jnp.where(s > 0, z, z - 2 * s * v).reshape(x.shape)


def householder(x: Array, v: Array) -> Array:
  """Householder activation (Singla et al., 2021): per group `z`, `z if vᵀz > 0 else (I−2vvᵀ)z`.

  Args:
    x: input whose last axis is a multiple of `v.shape[-1]`.
    v: shape `(g,)` (shared by all groups) or `(n // g, g)`; normalised to unit length.
  """
  v = jnp.asarray(v, x.dtype)
  if v.ndim not in (1, 2) or x.shape[-1] % v.shape[-1]:
    raise ValueError(
      f'v: expected shape (g,) or (n // g, g) with g dividing {x.shape[-1]}, got {v.shape}'
    )
  return _householder(x, v)


# ----------------------------------------------------------------------------------------------
# Checker.
# ----------------------------------------------------------------------------------------------


def _jacobians(act: Certifiable, z: Array, params: Sequence[Array]) -> Array:
  """Derivatives through the custom JVP: elementwise `(m, n)`, grouped `(m, n/g, g, g)`."""
  if not act.grouped:
    return jax.jvp(lambda a: act.fn(a, *params), (z,), (jnp.ones_like(z),))[1]
  g = act.group_size_of(*params)
  jac = jax.vmap(jax.jacfwd(lambda a: act.fn(a, *params)))(z)  # (m, n, n)
  m, n = z.shape
  blocks = jac.reshape(m, n // g, g, n // g, g)
  idx = jnp.arange(n // g)
  return blocks[:, idx, :, idx, :].transpose(1, 0, 2, 3)


def check_slope_rule(
  act: Certifiable | str,
  key: Array,
  *,
  params: Sequence[Array] = (),
  width: int = 8,
  num_intervals: int = 64,
  num_samples: int = 32,
  scale: float = 3.0,
  atol: float = 1e-6,
) -> None:
  """Samples derivatives on random intervals and checks the slope rule contains them all.

  Intervals `[lb, ub]` of `width` entries are drawn with centres `~ scale·N(0, 1)` and radii
  `~ scale·|N(0, 1)|` (a quarter of them degenerate, `lb = ub`); points are the endpoints, zero
  clipped into the interval, and uniform samples. For each point the derivative is computed
  through the activation's custom JVP, i.e. what training uses.

  Args:
    act: the activation or its registry name.
    key: PRNG key.
    params: extra arguments of the activation (e.g. the leaky slope, a Householder vector).
    width: number of entries per interval vector (a multiple of the group size).
    num_intervals: intervals drawn.
    num_samples: uniform points per interval, besides endpoints and zero.
    scale: spread of the intervals.
    atol: tolerance for floating-point round-off.

  Raises:
    SlopeRuleError: with the interval and the derivative outside `[dmin, dmax]`.
  """
  if isinstance(act, str):
    if act not in CERTIFIABLE:
      raise ValueError(f'act: expected one of {sorted(CERTIFIABLE)}, got {act!r}')
    act = CERTIFIABLE[act]
  params = [jnp.asarray(p) for p in params]
  k1, k2, k3 = jax.random.split(key, 3)
  c = scale * jax.random.normal(k1, (num_intervals, width))
  r = scale * jnp.abs(jax.random.normal(k2, (num_intervals, width)))
  r = r.at[: num_intervals // 4].set(0.0)
  lb, ub = c - r, c + r
  lo, hi = act.slope(lb, ub, *params)
  t = jax.random.uniform(k3, (num_samples, num_intervals, width))
  points = jnp.concatenate([lb[None], ub[None], jnp.clip(0.0, lb, ub)[None], lb + t * (ub - lb)])
  flat = points.reshape(-1, width)
  d = jax.jit(lambda z, p: _jacobians(act, z, p))(flat, params)
  d = np.asarray(d).reshape(points.shape[0], *np.shape(lo))
  bad = (d < np.asarray(lo) - atol) | (d > np.asarray(hi) + atol)
  if bad.any():
    p, i, *rest = (int(a) for a in np.argwhere(bad)[0])
    g = act.group_size_of(*params) if act.grouped else 1
    cols = slice(rest[0] * g, rest[0] * g + g)  # the entry, or its group
    raise SlopeRuleError(
      f'slope rule of {act.name!r} is too narrow: on [{np.asarray(lb[i, cols])}, '
      f'{np.asarray(ub[i, cols])}] at z={np.asarray(points[p, i, cols])} the derivative '
      f'{d[p, i][tuple(rest)]} is outside [{np.asarray(lo[i])[tuple(rest)]}, '
      f'{np.asarray(hi[i])[tuple(rest)]}] (entry {tuple(rest)})'
    )
