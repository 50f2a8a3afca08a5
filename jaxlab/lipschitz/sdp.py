"""Global Lipschitz bounds by semidefinite programming: LipSDP and quadratic constraints (QCs)
for MaxMin, GroupSort and Householder, with the matrix-product bound as the baseline.

The network is `f(x) = W_l phi(W_{l-1} ... phi(W_0 x))` with `kernels = [W_0, ..., W_l]`, each
`[out, in]` (`y = W x`; biases do not change a Lipschitz constant). Every bound here is an
upper bound on `sup ||f(x) - f(y)|| / ||x - y||` for the chosen norm (l2 -> l2, or
l_inf -> l_inf, the largest over output rows of the l_inf -> |.| bound of that row).

Three ways to describe the activation with a quadratic constraint `s^T Q s >= 0` that holds for
every pair of inputs (`Δz` pre-, `Δv` post-activation):

- Slope-restricted on `[a, b]` (ReLU: `[0, 1]`; Fazlyab et al., 2019, LipSDP-Neuron): with
  diagonal `T >= 0`, `(Δv - a Δz)^T T (b Δz - Δv) >= 0`. Only diagonal multipliers: the coupled
  "LipSDP-Network" multipliers are unsound.
- The new QC for MaxMin / GroupSort (Pauli et al., 2024, "Novel quadratic constraints for
  extending LipSDP beyond slope-restricted activations", Sec. 3): per group `g` of size `n_g`
  the activation is 1-Lipschitz (`||Δv_g|| <= ||Δz_g||`) and sum-preserving
  (`1^T Δv_g = 1^T Δz_g`), so `Δz^T T Δz - Δv^T T Δv >= 0` for
  `T = blkdiag_g(λ_g I + μ_g 1 1^T)`, `λ_g >= 0` and `μ_g` of either sign. Householder is
  1-Lipschitz and keeps the component orthogonal to `v`, so `1 1^T` becomes `I - v v^T`.
- The residual-ReLU rewrite (Pauli et al., Sec. 2, the baseline): per pair `(a, b)`,
  `MaxMin(a, b) = [b, b] + diag(1, -1) ReLU([a - b, b - a])`, then LipSDP for ReLU. It is
  conservative: it does not even recover `Lip(MaxMin) = 1`.

With the new QC the SDP decouples into a chain (Pauli et al., Sec. 4), one LMI per layer:

  l2:    ρ I - W_0^T T_1 W_0 ⪰ 0,  T_k - W_k^T T_{k+1} W_k ⪰ 0,  T_l - W_l^T W_l ⪰ 0;  L = √ρ
  l_inf: diag(τ) - W_0^T T_1 W_0 ⪰ 0,  the same chain,  [[T_l, w^T], [w, 2ρ - Σ τ]] ⪰ 0  per
         output row `w` of `W_l`;  L_row = ρ, and the l_inf -> l_inf bound is max over rows.

ReLU and the residual rewrite use one LMI over `ξ = [x; all ReLU outputs]`:
`ρ J_x^T J_x - C^T C - QC(T) ⪰ 0` (l2) or its l_inf form with `diag(τ)` and the row's Schur
block, with `q = A ξ` the ReLU inputs and `y = C ξ`.

In l2 the input dimension `n_0` only enters through `W_0`: with the thin QR `W_0^T = Q R`,
`x -> [Q^T x, Q_perp^T x]` splits the LMI into `ρ I - (...)` on `Q^T x` and `ρ I ⪰ 0`, so
replacing `W_0` by `R^T` (`m x m`) is exact and shrinks an `n_0`-sized LMI to an `m`-sized one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxlab.nn import certifiable

ACTIVATIONS = ('relu', 'maxmin', 'groupsort', 'householder')
NORMS = ('l2', 'linf')
METHODS = ('qc', 'residual_relu')
SOLVERS = ('AUTO', 'CLARABEL', 'SCS')
# Clarabel (interior point) is accurate and, up to ~100-wide LMIs, also faster than SCS here: on
# the tiny digits net its l_inf QC program (LMIs 64/16/17) took 11 s against SCS's 213 s, and
# SCS stopped 'inaccurate' about 0.4% *below* Clarabel's optimum (a first-order solution can
# undershoot, i.e. be slightly unsound). Its KKT system holds a dense block of side
# d (d + 1) / 2 per d x d LMI, so 'auto' hands wider LMIs to SCS (eigendecompositions, ~d^3).
AUTO_CLARABEL_MAX_SIDE = 100
# SCS is a first-order method: its default tolerance (1e-4) leaves bounds ~1e-3 apart from an
# interior-point solution; 1e-6 makes the two agree to ~1e-6 on small networks (1e-7 costs
# about twice the time for no visible change in the bound). Later rows start from the last.
_SOLVER_OPTIONS = {
  'CLARABEL': {},
  'SCS': {'eps_abs': 1e-6, 'eps_rel': 1e-6, 'max_iters': 200_000, 'warm_start': True},
}
_OK = ('optimal', 'optimal_inaccurate')


@dataclasses.dataclass(frozen=True)
class LipSDPResult:
  """The bound and how it was obtained.

  Attributes:
    bound: the Lipschitz upper bound (l2: `√ρ`; l_inf: the largest row bound).
    row_bounds: l_inf: the bound of each output row solved for; l2: `(bound,)`.
    status: the solver's status of the worst row (`optimal` or `optimal_inaccurate`).
    solver: the solver used ('CLARABEL' or 'SCS').
    solve_time_s: the solver's own time, summed over rows.
    wall_time_s: wall time including building and compiling the program (cvxpy).
    lmi_sizes: the side of each LMI of one program (the chain has one per layer).
  """

  bound: float
  row_bounds: tuple[float, ...]
  status: str
  solver: str
  solve_time_s: float
  wall_time_s: float
  lmi_sizes: tuple[int, ...]


def lipsdp(
  kernels: Sequence[np.ndarray],
  *,
  activation: str = 'relu',
  norm: str = 'l2',
  method: str = 'qc',
  solver: str = 'auto',
  group_size: int = 2,
  mu_free: bool = True,
  output_row: int | None = None,
  householder_v: np.ndarray | None = None,
) -> float:
  """An SDP upper bound on the Lipschitz constant of `W_l phi(... phi(W_0 x))`.

  Args:
    kernels: `[W_0, ..., W_l]`, each `[out, in]`, at least two (one activation layer).
    activation: 'relu' (slope-restricted QC, Fazlyab et al. 2019), 'maxmin' (pairs `2j, 2j+1`
      -> `[max, min]`), 'groupsort' (descending sort of consecutive groups of `group_size`) or
      'householder' (`z if v^T z > 0 else (I - 2 v v^T) z` per group, `v = householder_v`).
    norm: 'l2' (l2 -> l2) or 'linf' (l_inf -> l_inf).
    method: 'qc' (ReLU: slope QC; MaxMin/GroupSort: the new sum-preserving QC, Pauli et al.
      2024) or 'residual_relu' (MaxMin rewritten as a residual ReLU network, the baseline).
    solver: 'clarabel' (interior point, accurate), 'scs' (first order, for LMIs too wide for
      Clarabel) or 'auto' (Clarabel while every LMI side is <= `AUTO_CLARABEL_MAX_SIDE`).
    group_size: GroupSort's group size (MaxMin is GroupSort with 2).
    mu_free: the new QC with free `μ_g` (True) or `μ_g = 0` (only the 1-Lipschitz part).
    output_row: l_inf: bound only this output row (`|f_row(x) - f_row(y)| <= L ||x - y||_inf`);
      None: every row, the largest is the l_inf -> l_inf bound.
    householder_v: activation 'householder': its vector `v` `[g]` (shared by all groups).

  Returns:
    The bound (`√ρ` in l2, `ρ` in l_inf).

  Raises:
    ValueError: bad kernels or options.
    RuntimeError: the solver did not reach an (inaccurate) optimum.
  """
  return lipsdp_info(
    kernels,
    activation=activation,
    norm=norm,
    method=method,
    solver=solver,
    group_size=group_size,
    mu_free=mu_free,
    output_row=output_row,
    householder_v=householder_v,
  ).bound


def lipsdp_info(
  kernels: Sequence[np.ndarray],
  *,
  activation: str = 'relu',
  norm: str = 'l2',
  method: str = 'qc',
  solver: str = 'auto',
  group_size: int = 2,
  mu_free: bool = True,
  output_row: int | None = None,
  householder_v: np.ndarray | None = None,
) -> LipSDPResult:
  """`lipsdp` with its status, per-row bounds, solve time and LMI sizes (same arguments)."""
  ws = _check_kernels(kernels)
  solver = solver.upper()
  _check_choice('activation', activation, ACTIVATIONS)
  _check_choice('norm', norm, NORMS)
  _check_choice('method', method, METHODS)
  _check_choice('solver', solver, SOLVERS)
  preserved = None
  if activation != 'relu':
    group_size, preserved = _preserved_directions(activation, group_size, householder_v)
    _check_groups(ws, group_size)
  if method == 'residual_relu' and (activation in ('relu', 'householder') or group_size != 2):
    raise ValueError(
      'method residual_relu: expected a MaxMin network (activation maxmin, or groupsort with '
      f'group_size 2), got activation {activation!r} with group_size {group_size}'
    )
  rows = list(range(ws[-1].shape[0])) if output_row is None else [output_row]
  if any(not 0 <= r < ws[-1].shape[0] for r in rows):
    raise ValueError(f'output_row: expected 0 <= row < {ws[-1].shape[0]}, got {output_row}')
  if norm == 'l2':
    ws = [_reduce_input(ws[0]), *ws[1:]]
    rows = [None]
  start = time.perf_counter()
  if activation != 'relu' and method == 'qc':
    prob, rho, row, last, sizes = _chain_program(ws, norm, preserved, mu_free)
  else:
    prob, rho, row, last, sizes = _relu_program(ws, norm, method == 'residual_relu')
  if solver == 'AUTO':
    solver = 'CLARABEL' if max(sizes) <= AUTO_CLARABEL_MAX_SIDE else 'SCS'
  bounds, statuses, total = [], [], 0.0
  for r in rows:
    if row is not None:
      row.value = last[r : r + 1]
    prob.solve(solver=solver, **_SOLVER_OPTIONS[solver])
    total += prob.solver_stats.solve_time or 0.0
    if prob.status not in _OK or rho.value is None:
      raise RuntimeError(f'LipSDP ({activation}, {norm}, {method}): solver {solver} {prob.status}')
    value = max(float(rho.value), 0.0)
    bounds.append(float(np.sqrt(value)) if norm == 'l2' else value)
    statuses.append(prob.status)
  wall = time.perf_counter() - start
  worst = 'optimal' if all(s == 'optimal' for s in statuses) else 'optimal_inaccurate'
  return LipSDPResult(max(bounds), tuple(bounds), worst, solver, total, wall, sizes)


def matrix_product_bound(
  kernels: Sequence[np.ndarray], *, norm: str = 'l2', output_row: int | None = None
) -> float:
  """The naive bound `Π_k ||W_k||` for 1-Lipschitz activations (ReLU, MaxMin, GroupSort).

  l2: spectral norms. l_inf: `||W||_{inf->inf}` = largest absolute row sum; with `output_row`
  the last factor is that row's l1 norm (the bound of that output alone).
  """
  ws = _check_kernels(kernels)
  _check_choice('norm', norm, NORMS)
  if norm == 'l2':
    return float(np.prod([np.linalg.norm(w, 2) for w in ws]))
  last = ws[-1] if output_row is None else ws[-1][output_row : output_row + 1]
  return float(np.prod([np.abs(w).sum(1).max() for w in [*ws[:-1], last]]))


def network_fn(
  kernels: Sequence[np.ndarray],
  activation: str,
  group_size: int = 2,
  householder_v: np.ndarray | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """`x [n_0] -> W_l phi(... phi(W_0 x))` in JAX with `jaxlab.nn.certifiable`'s activations."""
  ws = [jnp.asarray(w) for w in _check_kernels(kernels)]
  _check_choice('activation', activation, ACTIVATIONS)
  act = {
    'relu': jax.nn.relu,
    'maxmin': certifiable.maxmin,
    'groupsort': lambda z: certifiable.groupsort(z, group_size),
    'householder': lambda z: certifiable.householder(z, householder_v),
  }[activation]

  def f(x: jax.Array) -> jax.Array:
    for w in ws[:-1]:
      x = act(w @ x)
    return ws[-1] @ x

  return f


def sampled_lower_bound(
  fn: Callable[[jax.Array], jax.Array],
  xs: jax.Array,
  *,
  norm: str = 'l2',
  output_row: int | None = None,
) -> float:
  """`max_i ||J_f(x_i)||`: a lower bound on the Lipschitz constant of a piecewise-linear `fn`.

  l2: the largest singular value; l_inf: the largest absolute row sum of the Jacobian (with
  `output_row`, that row's l1 norm). `fn` maps one input `[n]` to one output `[m]`; `xs` is
  `[samples, n]`.
  """
  _check_choice('norm', norm, NORMS)
  jac = jax.jit(jax.vmap(jax.jacfwd(fn)))(xs)
  if output_row is not None:
    jac = jac[:, output_row : output_row + 1]
  if norm == 'l2':
    per = jnp.linalg.norm(jac, ord=2, axis=(1, 2))
  else:
    per = jnp.abs(jac).sum(-1).max(-1)
  return float(per.max())


# ------------------------------------------------------------------------------ Programs
# Every LMI is `constant + Σ_i var_i M_i`, built as `reshape(B @ var)` with one sparse column
# `vec(M_i)` per variable: cvxpy compiles that in milliseconds, where products such as
# `W^T @ diag(t) @ W` of expressions take seconds at width 128.


def _chain_program(ws: list[np.ndarray], norm: str, preserved: np.ndarray, mu_free: bool):
  """The decoupled chain of LMIs with the new QC (Pauli et al., 2024, Sec. 4)."""
  ng = preserved.shape[0]
  rho = cp.Variable(nonneg=True)
  n0 = ws[0].shape[1]
  tau = cp.Variable(n0, nonneg=True) if norm == 'linf' else None
  head = rho * np.eye(n0) if tau is None else _span(_diag_basis(n0), tau)
  cons, sizes = [], []
  for w in ws[:-1]:
    lam, mu = cp.Variable(w.shape[0] // ng, nonneg=True), cp.Variable(w.shape[0] // ng)
    groups = np.kron(np.eye(w.shape[0] // ng), np.ones((1, ng)))  # [groups, n]
    mu = mu if mu_free else None
    cons.append(_psd(head - _group_form(w, groups, preserved, lam, mu)))
    sizes.append(w.shape[1])
    head = _group_form(np.eye(w.shape[0]), groups, preserved, lam, mu)
  last = ws[-1]
  row = None
  if tau is None:
    cons.append(_psd(head - last.T @ last))
    sizes.append(last.shape[1])
  else:
    row = cp.Parameter((1, last.shape[1]))
    corner = cp.reshape(2 * rho - cp.sum(tau), (1, 1), order='C')
    cons.append(_psd(cp.bmat([[head, row.T], [row, corner]])))
    sizes.append(last.shape[1] + 1)
  return cp.Problem(cp.Minimize(rho), cons), rho, row, last, tuple(sizes)


def _group_form(
  w: np.ndarray, groups: np.ndarray, u: np.ndarray, lam: cp.Variable, mu: cp.Variable | None
):
  """`W^T T W` for `T = blkdiag_g(λ_g I + μ_g U U^T)` (`groups[g]` = indicator of group g,
  `U` `[g, r]` the directions the activation preserves)."""
  n_in, ng = w.shape[1], u.shape[0]
  cols_lam = [(w.T * g) @ w for g in groups]  # W_g^T W_g
  out = _span(_stack(cols_lam, n_in), lam)
  if mu is not None:
    kept = [u.T @ w[j * ng : (j + 1) * ng] for j in range(len(groups))]  # U^T W_g, [r, n_in]
    out = out + _span(_stack([k.T @ k for k in kept], n_in), mu)
  return out


def _preserved_directions(
  activation: str, group_size: int, v: np.ndarray | None
) -> tuple[int, np.ndarray]:
  """`(g, U)`: the group size and a basis `U` `[g, r]` of what the activation keeps exactly.

  GroupSort / MaxMin keep the sum (`U = 1`). Householder keeps the component orthogonal to
  `v` (it only flips the sign of `v^T z`), so its QC has `U` = an orthonormal basis of `v^⊥`.
  """
  if activation == 'maxmin':
    return 2, np.ones((2, 1))
  if activation == 'groupsort':
    return group_size, np.ones((group_size, 1))
  v = np.asarray(v if v is not None else [], dtype=np.float64).ravel()
  if v.size < 2 or not np.isfinite(v).all() or np.linalg.norm(v) == 0:
    raise ValueError(f'householder_v: expected a nonzero finite vector [g >= 2], got {v}')
  basis = np.linalg.svd(v[None] / np.linalg.norm(v))[2]  # rows: v, then v^⊥
  return v.size, basis[1:].T


def _relu_program(ws: list[np.ndarray], norm: str, residual: bool):
  """One LipSDP-Neuron LMI over `ξ = [x; ReLU outputs]` (Fazlyab et al., 2019, Thm. 2)."""
  a, c = _relu_graph(ws, residual)
  n0, nw = ws[0].shape[1], a.shape[0]
  d = n0 + nw
  # ReLU is slope-restricted on [0, 1]: 2 q_i w_i - 2 w_i^2 >= 0, weighted by diagonal T >= 0.
  rows, cols, vals = [], [], []
  for i in range(nw):
    k = n0 + i
    nz = np.flatnonzero(a[i])
    # vec(a_i e_k^T + e_k a_i^T - 2 e_k e_k^T), column-major (the order cp.reshape uses).
    rows += [*(nz + k * d), *(k + nz * d), k + k * d]
    vals += [*a[i, nz], *a[i, nz], -2.0]
    cols += [i] * (2 * len(nz) + 1)
  basis = sp.csc_matrix((vals, (rows, cols)), shape=(d * d, nw))
  t = cp.Variable(nw, nonneg=True)
  qc = _span(basis, t)
  rho = cp.Variable(nonneg=True)
  row = None
  if norm == 'l2':
    lmi = rho * sp.diags(np.r_[np.ones(n0), np.zeros(nw)]) - c.T @ c - qc
    sizes = (d,)
  else:
    tau = cp.Variable(n0, nonneg=True)
    body = _span(_diag_basis(n0, d), tau) - qc
    row = cp.Parameter((1, d))
    corner = cp.reshape(2 * rho - cp.sum(tau), (1, 1), order='C')
    lmi = cp.bmat([[body, row.T], [row, corner]])
    sizes = (d + 1,)
  return cp.Problem(cp.Minimize(rho), [_psd(lmi)]), rho, row, c, sizes


def _span(basis: sp.spmatrix | np.ndarray, var: cp.Variable) -> cp.Expression:
  """`Σ_i var_i M_i` from `basis[:, i] = vec(M_i)` (column-major, `d x d`)."""
  d = int(round(np.sqrt(basis.shape[0])))
  return cp.reshape(basis @ var, (d, d), order='F')


def _stack(mats: list[np.ndarray], d: int) -> sp.csc_matrix:
  return sp.csc_matrix(np.stack([m.reshape(d * d, order='F') for m in mats], axis=1))


def _diag_basis(n: int, d: int | None = None) -> sp.csc_matrix:
  """Columns `vec(e_i e_i^T)`, `i < n`, of `d x d` matrices (`d = n` by default)."""
  d = n if d is None else d
  idx = np.arange(n)
  return sp.csc_matrix((np.ones(n), (idx + idx * d, idx)), shape=(d * d, n))


# MaxMin(a, b) = [b, b] + diag(1, -1) ReLU([a - b, b - a]) = [max(a, b), min(a, b)].
_PAIR_IN = np.array([[1.0, -1.0], [-1.0, 1.0]])
_PAIR_SKIP = np.array([[0.0, 1.0], [0.0, 1.0]])
_PAIR_OUT = np.diag([1.0, -1.0])


def _relu_graph(ws: list[np.ndarray], residual: bool) -> tuple[np.ndarray, np.ndarray]:
  """`(A, C)`: ReLU inputs `q = A ξ` and network output `y = C ξ`, with `ξ = [x; w]`."""
  widths = [w.shape[0] for w in ws[:-1]]
  n0, nw = ws[0].shape[1], sum(widths)
  d = n0 + nw
  signal = np.eye(n0, d)  # the current layer's input as a function of ξ
  a_rows, offset = [], n0
  for w, width in zip(ws[:-1], widths, strict=True):
    z = w @ signal
    out = np.zeros((width, d))
    out[:, offset : offset + width] = np.eye(width)
    offset += width
    if residual:
      pairs = np.eye(width // 2)
      a_rows.append(np.kron(pairs, _PAIR_IN) @ z)
      signal = np.kron(pairs, _PAIR_SKIP) @ z + np.kron(pairs, _PAIR_OUT) @ out
    else:
      a_rows.append(z)
      signal = out
  return np.vstack(a_rows), ws[-1] @ signal


def _psd(m: cp.Expression) -> cp.Constraint:
  return (m + m.T) / 2 >> 0


# ------------------------------------------------------------------------------ Checks


def _reduce_input(w0: np.ndarray) -> np.ndarray:
  """`R^T` of the thin QR `W_0^T = Q R` when `W_0` is wide (exact in l2, see module doc)."""
  m, n0 = w0.shape
  if n0 <= m:
    return w0
  _, r = np.linalg.qr(w0.T)
  return r.T


def _check_kernels(kernels: Sequence[np.ndarray]) -> list[np.ndarray]:
  ws = [np.asarray(w, dtype=np.float64) for w in kernels]
  if len(ws) < 2 or any(w.ndim != 2 for w in ws):
    shapes = [np.shape(w) for w in kernels]
    raise ValueError(f'kernels: expected >= 2 matrices [out, in], got shapes {shapes}')
  for k in range(1, len(ws)):
    if ws[k].shape[1] != ws[k - 1].shape[0]:
      raise ValueError(
        f'kernels: kernel {k} is {ws[k].shape} but kernel {k - 1} has {ws[k - 1].shape[0]} '
        'outputs; expected [out, in] matrices that chain'
      )
  if not all(np.isfinite(w).all() for w in ws):
    raise ValueError('kernels: expected finite entries, got inf or nan')
  return ws


def _check_groups(ws: list[np.ndarray], group_size: int) -> None:
  bad = [w.shape[0] for w in ws[:-1] if w.shape[0] % group_size]
  if group_size < 2 or bad:
    raise ValueError(
      f'group_size: expected >= 2 dividing every hidden width, got {group_size} for widths '
      f'{[w.shape[0] for w in ws[:-1]]}'
    )


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f'{field}: expected one of {allowed}, got {value!r}')
