"""Linear relaxations of activations (forward graph) and of the Jacobian products (backward graph).

Every relaxation is returned per group as `(A_lo, c_lo, A_hi, c_hi)` with `A` of shape
`(G, g, g)` (an elementwise activation is the case `g = 1`) and `c` of shape `(n,)`, meaning

  A_lo[G] z_G + c_lo[G] ≤ y_G ≤ A_hi[G] z_G + c_hi[G]   for all z in the box [l, u].

Forward (Shi et al., NeurIPS 2022, Sec. 3; CROWN, Zhang et al. 2018):
- ReLU / leaky ReLU: upper chord, lower line `α z` with an optimisable slope α.
- tanh / sigmoid: two lines parallel to the chord through the extreme points of
  `σ(z) − k z` (found from `σ'(z) = k`).
- MaxMin: `max(a, b) = b + ReLU(a − b)` and `min = a − ReLU(a − b)`, ReLU relaxed as above.
- any other activation, from its slope rule alone (Lebourg's mean-value theorem:
  `y − σ(c) ∈ [J_lo, J_hi](z − c)` with `c` the centre): midpoint slope, offset ± half-width.

Backward (the Jacobian node `y = J(z)ᵀ g`, Shi et al. Sec. 3.2): each product term
`J_ik g_i` with `J_ik ∈ [J_lo, J_hi]` lies between `min(J_lo g, J_hi g)` (concave in g) and
`max(J_lo g, J_hi g)` (convex); both are bounded by their chords over `[g_l, g_u]`. For ReLU this
is exactly the paper's `y ∈ [−ReLU(−g), ReLU(g)]` relaxed by CROWN. With `interval=True` the
terms whose slope is not fixed (`J_lo ≠ J_hi`) become interval constants: the RecurJac-style
relaxation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.lipschitz.graph import Activation

Array = jax.Array
Relaxation = tuple[Array, Array, Array, Array]
SPLITTABLE = ('relu', 'leaky_relu')  # piecewise linear with one kink at 0: BaB can split them


def xp_of(*arrays):
  """`jax.numpy` inside traced code (α optimisation), NumPy otherwise (no compile, fast on CPU)."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def call(xp, fn, *args):
  """Calls a JAX function (an activation or its rule) and returns arrays of namespace `xp`.

  In NumPy mode the call runs in float64 (`jax.enable_x64`), so rounding to float32 cannot
  move a bound inwards.
  """
  if xp is jnp:
    return fn(*args)
  with jax.enable_x64(True):
    out = fn(*args)
    return tuple(np.asarray(o) for o in out) if isinstance(out, tuple) else np.asarray(out)


def jacobian_range(act: Activation, lb: Array, ub: Array) -> tuple[Array, Array]:
  """The slope rule as per-group matrices `(J_lo, J_hi)`, `(G, g, g)`, entry `[i, k]` ∂y_i/∂z_k."""
  lo, hi = call(xp_of(lb, ub), act.slope, lb, ub)
  if act.group_size is not None:
    return lo, hi
  return lo[:, None, None], hi[:, None, None]


def _diag(slope_lo, off_lo, slope_hi, off_hi) -> Relaxation:
  return slope_lo[:, None, None], off_lo, slope_hi[:, None, None], off_hi


def _relu_like(lb, ub, s, alpha) -> Relaxation:
  xp = xp_of(lb, ub, alpha)
  active, dead = lb >= 0, ub <= 0
  width = xp.where(active | dead, 1.0, ub - lb)
  chord = (ub - s * lb) / width
  up_slope = xp.where(active, 1.0, xp.where(dead, s, chord))
  up_off = xp.where(active | dead, 0.0, s * lb - chord * lb)
  if alpha is None:
    alpha = xp.where(ub > -lb, 1.0, s)
  lo_slope = xp.where(active, 1.0, xp.where(dead, s, xp.clip(alpha, s, 1.0)))
  return _diag(lo_slope, xp.zeros_like(lb), up_slope, up_off)


def _parallel_chord(f, df, inverse_derivative, lb, ub) -> Relaxation:
  """Lines with the chord's slope k through the min and max of `f(z) − k z` on [lb, ub]."""
  xp = xp_of(lb, ub)
  width = ub - lb
  safe = xp.where(width > 0, width, 1.0)
  k = xp.where(width > 0, (f(xp, ub) - f(xp, lb)) / safe, df(xp, lb))
  z_star = inverse_derivative(xp, k)  # σ'(±z*) = k
  cands = xp.stack([lb, ub, xp.clip(z_star, lb, ub), xp.clip(-z_star, lb, ub)])
  vals = f(xp, cands) - k * cands
  return _diag(k, vals.min(0), k, vals.max(0))


def _tanh(xp, z):
  return xp.tanh(z)


def _dtanh(xp, z):
  return 1 - xp.tanh(z) ** 2


def _tanh_inv(xp, k):
  return xp.arctanh(xp.sqrt(xp.clip(1 - k, 0.0, 1 - 1e-12)))


def _sigmoid(xp, z):
  return 1 / (1 + xp.exp(-z))


def _dsigmoid(xp, z):
  return _sigmoid(xp, z) * (1 - _sigmoid(xp, z))


def _sigmoid_inv(xp, k):
  s = (1 + xp.sqrt(xp.clip(1 - 4 * k, 0.0, 1.0))) / 2
  s = xp.clip(s, 0.5, 1 - 1e-12)
  return xp.log(s) - xp.log1p(-s)


def _mean_value(act: Activation, lb, ub) -> Relaxation:
  xp = xp_of(lb, ub)
  jlo, jhi = jacobian_range(act, lb, ub)
  g = jlo.shape[-1]
  c, r = (lb + ub) / 2, (ub - lb) / 2
  mid, half = (jlo + jhi) / 2, (jhi - jlo) / 2
  cg, rg = c.reshape(-1, g), r.reshape(-1, g)
  base = call(xp, act, c).reshape(-1, g) - xp.einsum('Gik,Gk->Gi', mid, cg)
  slack = xp.einsum('Gik,Gk->Gi', half, rg)
  return mid, (base - slack).reshape(-1), mid, (base + slack).reshape(-1)


def _maxmin(lb, ub) -> Relaxation:
  """MaxMin per pair (a, b): `max = b + ReLU(a − b)`, `min = a − ReLU(a − b)`, with the ReLU of
  `d = a − b ∈ [d_l, d_u]` relaxed as in CROWN (upper chord, lower slope 1 or 0)."""
  xp = xp_of(lb, ub)
  lp, up = lb.reshape(-1, 2), ub.reshape(-1, 2)
  dl, du = lp[:, 0] - up[:, 1], up[:, 0] - lp[:, 1]
  unstable = (dl < 0) & (du > 0)
  s = xp.where(dl >= 0, 1.0, xp.where(du <= 0, 0.0, du / xp.where(unstable, du - dl, 1.0)))
  alpha = xp.where(unstable, (du > -dl).astype(lb.dtype), s)
  off = xp.where(unstable, s * dl, 0.0)
  zero = xp.zeros_like(off)

  def rows(r0, r1):  # [G, 2 (out), 2 (in)]
    return xp.stack([xp.stack(r0, -1), xp.stack(r1, -1)], -2)

  a_lo = rows((alpha, 1 - alpha), (1 - s, s))
  a_hi = rows((s, 1 - s), (1 - alpha, alpha))
  return a_lo, xp.stack([zero, off], -1).reshape(-1), a_hi, xp.stack([-off, zero], -1).reshape(-1)


def forward_relaxation(act: Activation, lb: Array, ub: Array, alpha: Array | None) -> Relaxation:
  """Linear bounds of `act` on the box `[lb, ub]`; `alpha` is the ReLU-like lower slope."""
  name = act.act.name
  xp = xp_of(lb, ub)
  if name == 'relu':
    return _relu_like(lb, ub, xp.zeros_like(lb), alpha)
  if name == 'leaky_relu':  # slope in [0, 1], checked by `graph.trace_chain`
    return _relu_like(lb, ub, xp.zeros_like(lb) + act.params[0], alpha)
  if name == 'tanh':
    return _parallel_chord(_tanh, _dtanh, _tanh_inv, lb, ub)
  if name == 'sigmoid':
    return _parallel_chord(_sigmoid, _dsigmoid, _sigmoid_inv, lb, ub)
  if name in ('maxmin', 'groupsort2'):
    return _maxmin(lb, ub)
  return _mean_value(act, lb, ub)


def forward_interval(act: Activation, lb: Array, ub: Array) -> tuple[Array, Array]:
  """Output interval of `act` on `[lb, ub]` (the activation's own map, else the mean value)."""
  xp = xp_of(lb, ub)
  if act.act.interval is not None:
    return call(xp, act.act.interval, lb, ub, *act.params)
  a_lo, c_lo, a_hi, c_hi = _mean_value(act, lb, ub)
  g = a_lo.shape[-1]
  lg, ug = lb.reshape(-1, g), ub.reshape(-1, g)

  def extreme(a, c, pick):
    terms = pick(a * lg[:, None, :], a * ug[:, None, :]).sum(-1)
    return terms.reshape(-1) + c

  return extreme(a_lo, c_lo, xp.minimum), extreme(a_hi, c_hi, xp.maximum)


def split_slopes(act: Activation, shape) -> tuple[Array, Array]:
  """Derivative on the positive and the negative side of the kink (for BaB splits)."""
  one = np.ones(shape)
  return np.asarray(act.slope(one, one)[0]), np.asarray(act.slope(-one, -one)[0])


def _chord(v_lo, v_hi, gl, gu):
  xp = xp_of(v_lo, v_hi, gl, gu)
  width = gu - gl
  safe = xp.where(width > 0, width, 1.0)
  slope = xp.where(width > 0, (v_hi - v_lo) / safe, 0.0)
  return slope, v_lo - slope * gl


def backward_relaxation(
  jlo: Array, jhi: Array, gl: Array, gu: Array, *, interval: bool = False
) -> Relaxation:
  """Relaxation of `y = Jᵀ g` per group, for J in `[jlo, jhi]` (G, g, g) and g in `[gl, gu]` (n,).

  Returns matrices indexed `[G, k, i]` (output k = input coordinate of the forward activation,
  i = coordinate of g) and offsets of shape `(n,)`.
  """
  xp = xp_of(jlo, jhi, gl, gu)
  g = jlo.shape[-1]
  gl_, gu_ = gl.reshape(-1, g)[:, :, None], gu.reshape(-1, g)[:, :, None]  # [G, i, 1]
  lo_at = lambda v: xp.minimum(jlo * v, jhi * v)  # noqa: E731  (concave envelope in g)
  hi_at = lambda v: xp.maximum(jlo * v, jhi * v)  # noqa: E731  (convex envelope in g)
  s_lo, o_lo = _chord(lo_at(gl_), lo_at(gu_), gl_, gu_)
  s_hi, o_hi = _chord(hi_at(gl_), hi_at(gu_), gl_, gu_)
  if interval:
    fixed = jlo == jhi
    s_lo, o_lo = (
      xp.where(fixed, s_lo, 0.0),
      xp.where(fixed, o_lo, xp.minimum(lo_at(gl_), lo_at(gu_))),
    )
    s_hi, o_hi = (
      xp.where(fixed, s_hi, 0.0),
      xp.where(fixed, o_hi, xp.maximum(hi_at(gl_), hi_at(gu_))),
    )
  # Terms are indexed [G, i, k]; y_k sums over i.
  t = lambda a: xp.swapaxes(a, -1, -2)  # noqa: E731
  return t(s_lo), o_lo.sum(-2).reshape(-1), t(s_hi), o_hi.sum(-2).reshape(-1)


def backward_interval(jlo: Array, jhi: Array, gl: Array, gu: Array) -> tuple[Array, Array]:
  """Interval of `y = Jᵀ g` by interval arithmetic (IBP-Jac)."""
  xp = xp_of(jlo, jhi, gl, gu)
  g = jlo.shape[-1]
  gl_, gu_ = gl.reshape(-1, g)[:, :, None], gu.reshape(-1, g)[:, :, None]
  prods = xp.stack([jlo * gl_, jlo * gu_, jhi * gl_, jhi * gu_])
  return prods.min(0).sum(-2).reshape(-1), prods.max(0).sum(-2).reshape(-1)


def _sources(jhi, gl, gu):
  """Per output k of `Jᵀ g` (permutation J): the allowed sources `S_k = {i : jhi[i, k] > 0}`."""
  xp = xp_of(jhi, gl, gu)
  g = jhi.shape[-1]
  mask = jhi > 0  # [G, i, k]
  pl, pu = gl.reshape(-1, g)[:, :, None], gu.reshape(-1, g)[:, :, None]
  lo = xp.where(mask, pl, xp.inf).min(-2)  # [G, k]
  hi = xp.where(mask, pu, -xp.inf).max(-2)
  return xp, g, mask, pl, pu, lo, hi


def permutation_interval(jhi: Array, gl: Array, gu: Array) -> tuple[Array, Array]:
  """Interval of `q = Jᵀ g` for permutation Jacobians: `q_k ∈ [min_{S_k} g_l, max_{S_k} g_u]`.

  Every Clarke Jacobian is doubly stochastic (a hull of permutations), so `q_k` is a convex
  combination of the `g_i` with `i ∈ S_k`.
  """
  _, _, _, _, _, lo, hi = _sources(jhi, gl, gu)
  return lo.reshape(-1), hi.reshape(-1)


def permutation_relaxation(
  jhi: Array, gl: Array, gu: Array, *, interval: bool = False
) -> Relaxation:
  """Linear relaxation of `q = Jᵀ g` for permutation Jacobians (MaxMin, GroupSort).

  `|S_k| = 1`: `q_k = g_a` exactly. `|S_k| = 2` (`S_k = {a, b}`): `q_k ∈ [min, max](g_a, g_b)`,
  and `max(g_a, g_b) = g_b + ReLU(g_a − g_b)`, `min = g_b − ReLU(g_b − g_a)` are relaxed by the
  CROWN chord of the ReLU over the interval of `g_a − g_b`. Larger sets (or `interval=True`, the
  RecurJac-style variant) use the interval hull as constants.
  """
  xp, g, mask, pl, pu, lo, hi = _sources(jhi, gl, gu)
  count = mask.sum(-2)  # [G, k]
  idx = xp.arange(g)[None, :, None]
  a = xp.where(mask, idx, g).min(-2)
  b = xp.where(mask, idx, -1).max(-2)
  onehot_a = (idx == a[:, None, :]).astype(pl.dtype)  # [G, i, k]
  onehot_b = (idx == b[:, None, :]).astype(pl.dtype)
  pick = lambda v, oh: (oh * v).sum(-2)  # noqa: E731
  dl = pick(pl, onehot_a) - pick(pu, onehot_b)  # bounds of d = g_a − g_b
  du = pick(pu, onehot_a) - pick(pl, onehot_b)
  unstable = (dl < 0) & (du > 0)
  width = xp.where(unstable, du - dl, 1.0)
  s_hi = xp.where(dl >= 0, 1.0, xp.where(du <= 0, 0.0, du / width))
  c_hi = xp.where(unstable, -s_hi * dl, 0.0)
  s_lo = xp.where(dl >= 0, 0.0, xp.where(du <= 0, 1.0, -dl / width))
  c_lo = xp.where(unstable, -s_lo * du, 0.0)
  single, pair = count == 1, (count == 2) & (not interval)
  one = xp.ones_like(s_hi)
  s_hi, s_lo = xp.where(single, one, s_hi), xp.where(single, one, s_lo)
  c_hi, c_lo = xp.where(single, 0.0, c_hi), xp.where(single, 0.0, c_lo)
  linear = single | pair
  c_hi, c_lo = xp.where(linear, c_hi, hi), xp.where(linear, c_lo, lo)

  def matrix(s):  # [G, k, i]
    m = s[:, None, :] * onehot_a + (1 - s)[:, None, :] * onehot_b
    return xp.swapaxes(xp.where(linear[:, None, :], m, 0.0), -1, -2)

  return matrix(s_lo), c_lo.reshape(-1), matrix(s_hi), c_hi.reshape(-1)
