"""Bound propagation on the forward graph and on the backward (Jacobian) graph of a `Chain`.

Forward (CROWN, Zhang et al. 2018; α-CROWN, Xu et al. 2021): pre-activation bounds `[l_k, u_k]`
by back-substituting `z_k = W_k h_k + b_k` through the linear relaxations of the activations
down to the input box, intersected with interval (IBP) bounds. The ReLU lower slopes α are
optimised (Adam, 20 steps, lr 0.5, decay 0.98, as in Shi et al.'s `parser.py`) to minimise the
total width of the intermediate bounds; every α in [0, 1] is sound, so so is the result.

Backward (Shi et al., NeurIPS 2022, Sec. 3): for output j the gradient is
`p_n = W_nᵀ e_j`, `q_k = J_kᵀ p_{k+1}`, `p_k = W_kᵀ q_k`, and `L_j ≤ max Σ_i |p_{0,i}|`.
The Jacobian nodes are relaxed with `relax.backward_relaxation` (chords of the envelopes of
`J g`; `relax.permutation_relaxation` for MaxMin/GroupSort), and bounds of each `p_k` come from
back-substitution up to the constant `p_n`; `|p_0|` is relaxed by its chord (`ReLU(g) + ReLU(−g)`
relaxed as in CROWN). The backward graph's only input is the constant `e_j`, so every ReLU-of-g
relaxation it needs is an upper chord: α acts on the forward bounds only. Three variants share
the code: `'ibp'` (interval arithmetic, IBP forward bounds), `'recurjac'` (terms whose slope is
not fixed become interval constants, like RecurJac) and `'crown'` (the full relaxation). Each
tighter variant intersects its intermediate bounds with the looser one's and the caller takes
the elementwise minimum of the final bounds; both are sound, so the minimum is, and the ordering
holds by construction.

Everything here is written against an array namespace (`relax.xp_of`): it runs eagerly in
float64 NumPy (milliseconds, no compilation, what BaB needs), and under `jax.numpy` inside the
jitted α optimisation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.lipschitz import relax
from jaxlab.lipschitz.graph import Chain

Array = jax.Array
Bounds = list[tuple[Array, Array]]


# ----------------------------------------------------------------------------------------------
# Forward graph.
# ----------------------------------------------------------------------------------------------


def ibp_forward(chain: Chain, xl: Array, xu: Array, splits=None) -> Bounds:
  """Interval bounds `[l_k, u_k]` of every pre-activation (`splits` clamp BaB-split neurons)."""
  bounds, hl, hu = [], xl, xu
  for k, act in enumerate(chain.acts):
    w, b = chain.weights[k], chain.biases[k]
    c, r = (hl + hu) / 2, (hu - hl) / 2
    zl, zu = _clamp(w @ c + b - abs(w) @ r, w @ c + b + abs(w) @ r, splits, k)
    bounds.append((zl, zu))
    hl, hu = relax.forward_interval(act, zl, zu)
  return bounds


def _clamp(lb, ub, splits, k):
  if splits is None:
    return lb, ub
  xp, s = relax.xp_of(lb, ub), splits[k]
  return xp.where(s > 0, xp.maximum(lb, 0), lb), xp.where(s < 0, xp.minimum(ub, 0), ub)


def _through_act(lam: Array, rel: relax.Relaxation, upper: bool) -> tuple[Array, Array]:
  """Back-substitutes `lam · y` (lam: (m, n)) through `y` relaxed by `rel`: (coef, const)."""
  a_lo, c_lo, a_hi, c_hi = rel
  xp = relax.xp_of(lam, a_lo, a_hi)
  pos, neg = xp.maximum(lam, 0), xp.minimum(lam, 0)
  if upper:
    pos, neg = neg, pos  # the upper bound uses the upper relaxation for positive coefficients
  g = a_lo.shape[-1]
  m = lam.shape[0]
  const = pos @ c_lo + neg @ c_hi
  if g == 1:  # elementwise activation: diagonal relaxation
    return pos * a_lo[:, 0, 0] + neg * a_hi[:, 0, 0], const
  pg, ng = pos.reshape(m, -1, g), neg.reshape(m, -1, g)
  coef = xp.einsum('mGi,Gik->mGk', pg, a_lo) + xp.einsum('mGi,Gik->mGk', ng, a_hi)
  return coef.reshape(m, -1), const


def _concretize(lam, const, xl, xu, upper):
  c, r = (xl + xu) / 2, (xu - xl) / 2
  return lam @ c + const + (1 if upper else -1) * (abs(lam) @ r)


def crown_forward(
  chain: Chain, xl: Array, xu: Array, alphas: Sequence[Array] | None = None, splits=None
) -> Bounds:
  """CROWN bounds of every pre-activation, intersected with IBP."""
  ibp = ibp_forward(chain, xl, xu, splits)
  bounds, rels = [], []
  for k, act in enumerate(chain.acts):
    out = []
    for upper in (False, True):
      lam, const = chain.weights[k], chain.biases[k]
      for i in range(k - 1, -1, -1):
        lam, c = _through_act(lam, rels[i], upper)
        const = const + c
        const = const + lam @ chain.biases[i]
        lam = lam @ chain.weights[i]
      out.append(_concretize(lam, const, xl, xu, upper))
    xp = relax.xp_of(out[0], out[1])
    lb = xp.maximum(out[0], ibp[k][0])
    ub = xp.minimum(out[1], ibp[k][1])
    lb, ub = _clamp(lb, ub, splits, k)
    bounds.append((lb, ub))
    rels.append(relax.forward_relaxation(act, lb, ub, None if alphas is None else alphas[k]))
  return bounds


def to_numpy(tree):
  """A chain (or bounds) as float64 NumPy arrays: bound propagation runs eagerly in NumPy."""
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# A one-off optimisation of a small unrolled graph: compile time dominates, so skip XLA's
# expensive backend passes.
@functools.partial(
  jax.jit,
  static_argnames=('steps', 'lr', 'decay'),
  compiler_options={'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True},
)
def _optimize_alphas(chain: Chain, xl: Array, xu: Array, steps: int, lr: float, decay: float):
  init = crown_forward(chain, xl, xu)
  alphas = [jnp.where(ub > -lb, 1.0, 0.0) for lb, ub in init]

  def loss(al):
    return sum(jnp.sum(ub - lb) for lb, ub in crown_forward(chain, xl, xu, al))

  opt = optax.adam(optax.exponential_decay(lr, 1, decay))

  def step(carry, _):
    al, state = carry
    updates, state = opt.update(jax.grad(loss)(al), state)
    return ([jnp.clip(a, 0.0, 1.0) for a in optax.apply_updates(al, updates)], state), None

  (alphas, _), _ = jax.lax.scan(step, (alphas, opt.init(alphas)), None, length=steps)
  return alphas


def optimized_forward(
  chain: Chain, xl, xu, *, steps: int = 20, lr: float = 0.5, decay: float = 0.98
) -> Bounds:
  """α-CROWN: optimises the ReLU lower slopes α to tighten the intermediate bounds.

  The loss is the total width of all intermediate bounds (Adam, `steps` iterations, learning
  rate `lr` decayed by `decay` per step). Every α in [0, 1] gives sound bounds, so the final
  bounds are recomputed in float64 with the optimised α and intersected with plain CROWN.
  """
  np_chain, xl, xu = to_numpy((chain, xl, xu))
  init = crown_forward(np_chain, xl, xu)
  if steps == 0 or not any(a.act.name in relax.SPLITTABLE for a in chain.acts):
    return init
  alphas = _optimize_alphas(jax.tree.map(jnp.asarray, np_chain), xl, xu, steps, lr, decay)
  cur = crown_forward(np_chain, xl, xu, [np.asarray(a, np.float64) for a in alphas])
  return [
    (np.maximum(bl, cl), np.minimum(bu, cu)) for (bl, bu), (cl, cu) in zip(init, cur, strict=False)
  ]


# ----------------------------------------------------------------------------------------------
# Backward (Jacobian) graph.
# ----------------------------------------------------------------------------------------------


def jacobian_ranges(chain: Chain, bounds: Bounds, splits=None) -> list[tuple[Array, Array]]:
  """Slope-rule ranges of each activation's Jacobian over its bounds; splits fix the slope."""
  out = []
  for k, (act, (lb, ub)) in enumerate(zip(chain.acts, bounds, strict=False)):
    jlo, jhi = relax.jacobian_range(act, lb, ub)
    if splits is not None and act.act.name in relax.SPLITTABLE:
      pos, neg = relax.split_slopes(act, lb.shape)
      s = splits[k][:, None, None]
      fixed = np.where(s > 0, pos[:, None, None], neg[:, None, None])
      jlo, jhi = np.where(s != 0, fixed, jlo), np.where(s != 0, fixed, jhi)
    out.append((jlo, jhi))
  return out


def _abs_chord(pl, pu):
  """Chord of |p| on [pl, pu]: |p| ≤ a p + c."""
  a, c = relax._chord(abs(pl), abs(pu), pl, pu)
  return a, c


def jacobian_bounds(
  chain: Chain,
  ranges: list[tuple[Array, Array]],
  seed: Array,
  method: str,
  prior: list[tuple[Array, Array]] | None = None,
) -> tuple[Array, list[tuple[Array, Array]]]:
  """Upper bound of `Σ_i |p_{0,i}|` and the bounds of every `p_k`, for one seed `e_j` row.

  Args:
    chain: the network.
    ranges: `(J_lo, J_hi)` per activation.
    seed: the output direction (`e_j`), shape `(n_out,)`.
    method: `'ibp'`, `'recurjac'` or `'crown'`.
    prior: bounds of every `p_k` from a looser method to intersect with.

  Returns:
    `(bound, p_bounds)`; `p_bounds[k]` bounds `p_k` (k = 0..n).
  """
  n = len(chain.acts)
  p_n = chain.weights[n].T @ seed
  pb: list = [None] * (n + 1)
  pb[n] = (p_n, p_n)
  rels: list = [None] * n
  for k in range(n - 1, -1, -1):
    jlo, jhi = ranges[k]
    gl, gu = pb[k + 1]
    perm = chain.acts[k].act.permutation
    if method == 'ibp':
      ql, qu = relax.backward_interval(jlo, jhi, gl, gu)
      if perm:
        hl, hu = relax.permutation_interval(jhi, gl, gu)
        ql, qu = relax.xp_of(ql).maximum(ql, hl), relax.xp_of(qu).minimum(qu, hu)
      w = chain.weights[k].T
      c, r = (ql + qu) / 2, (qu - ql) / 2
      lb, ub = w @ c - abs(w) @ r, w @ c + abs(w) @ r
    else:
      rel = relax.permutation_relaxation if perm else relax.backward_relaxation
      args = (jhi,) if perm else (jlo, jhi)
      rels[k] = rel(*args, gl, gu, interval=method == 'recurjac')
      lb = _backsub(chain, rels, chain.weights[k].T, k, p_n, upper=False)
      ub = _backsub(chain, rels, chain.weights[k].T, k, p_n, upper=True)
    if prior is not None:
      xp = relax.xp_of(lb, ub)
      lb, ub = xp.maximum(lb, prior[k][0]), xp.minimum(ub, prior[k][1])
    pb[k] = (lb, ub)
  pl, pu = pb[0]
  interval = relax.xp_of(pl).maximum(abs(pl), abs(pu)).sum()
  if method != 'crown':
    return interval, pb
  a, c = _abs_chord(pl, pu)
  linear = _backsub(chain, rels, (a @ chain.weights[0].T)[None], 0, p_n, upper=True)[0] + c.sum()
  return relax.xp_of(interval, linear).minimum(interval, linear), pb


def _backsub(chain, rels, lam, k, p_n, upper):
  """Bound of `lam · q_k` (lam: (m, dim q_k)) by back-substitution up to the constant `p_n`."""
  const = relax.xp_of(lam).zeros(lam.shape[0], lam.dtype)
  for i in range(k, len(chain.acts)):
    lam, c = _through_act(lam, rels[i], upper)
    const = const + c
    # q_i is now expressed in p_{i+1} = W_{i+1}ᵀ q_{i+1}.
    if i + 1 < len(chain.acts):
      lam = lam @ chain.weights[i + 1].T
  return lam @ p_n + const


def l2_from_intervals(pb: list[tuple[Array, Array]]) -> Array:
  """`‖p_0‖_2 ≤ sqrt(Σ max(p_l², p_u²))` from coordinate bounds."""
  pl, pu = pb[0]
  return float(np.sqrt(np.maximum(pl**2, pu**2).sum()))
