"""Scaling-law fits: Chinchilla's `L(N, D) = E + A/N^α + B/D^β` (Hoffmann et al., 2022).

Approach 3 of the paper (Sec. 3.3, App. D.2): minimise the Huber loss (δ = 1e-3) between the
predicted and the observed log loss,

  min_{a, b, e, α, β}  Σ_i Huber_δ( LSE(a − α log N_i, b − β log D_i, e) − log L_i ),

with `A = exp(a)`, `B = exp(b)`, `E = exp(e)`, by L-BFGS from every point of the paper's grid of
initialisations (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}) and keeping
the best. All 4,500 starts run at once (`jax.vmap` over `optax.lbfgs`) in float64.

Derived quantities: the compute-optimal allocation for `C ≈ 6ND` (Eq. 4: `N*(C) = G (C/6)^a`,
`D*(C) = G⁻¹ (C/6)^b`, `G = (αA / βB)^{1/(α+β)}`, `a = β/(α+β)`, `b = α/(α+β)`) and bootstrap
confidence intervals (points resampled with replacement, each refit warm-started from the best
fit and from the grid's best few starts). Also approach 2's IsoFLOP optima (`isoflop_optima`)
and the asymptote fit `L(x) = A/x^B + C` of "Pre-training under infinite compute"
(`fit_asymptote`). `journey`'s average-parameter law is `fit_chinchilla` with `N` replaced by the
average non-zero parameter count over training (`jaxlab.sparsity.masking`'s exact `N̄`).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

HUBER_DELTA = 1e-3
# Hoffmann et al., App. D.2: the grid of initialisations (alpha, beta, e, a, b).
INIT_GRID = np.array(
  list(
    itertools.product(
      np.arange(0.0, 2.01, 0.5),
      np.arange(0.0, 2.01, 0.5),
      np.arange(-1.0, 1.01, 0.5),
      np.arange(0.0, 25.1, 5.0),
      np.arange(0.0, 25.1, 5.0),
    )
  )
)
PARAMS = ('alpha', 'beta', 'e', 'a', 'b')


def _check(N, D, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  arrays = [np.asarray(x, np.float64).reshape(-1) for x in (N, D, loss)]
  n = {a.size for a in arrays}
  if len(n) != 1:
    raise ValueError(f'N, D, loss: expected arrays of one length, got {[a.size for a in arrays]}')
  for name, a in zip(('N', 'D', 'loss'), arrays, strict=True):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name}: expected finite values, got {a[~np.isfinite(a)][:3]}')
    if np.any(a <= 0):
      raise ValueError(f'{name}: expected positive values, got {a[a <= 0][:3]}')
  if arrays[0].size < 5:
    raise ValueError(
      f'N, D, loss: expected at least 5 points for 5 parameters, got {arrays[0].size}'
    )
  return tuple(arrays)


def _objective(theta: jax.Array, log_n: jax.Array, log_d: jax.Array, log_l: jax.Array) -> jax.Array:
  alpha, beta, e, a, b = theta
  pred = jax.nn.logsumexp(jnp.stack([a - alpha * log_n, b - beta * log_d, e + 0 * log_n]), axis=0)
  return jnp.sum(optax.losses.huber_loss(pred, log_l, delta=HUBER_DELTA))


@functools.partial(jax.jit, static_argnums=4)
def _minimise_jit(inits, log_n, log_d, log_l, iterations):
  fun = functools.partial(_objective, log_n=log_n, log_d=log_d, log_l=log_l)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def run(theta):
    def body(_, carry):
      theta, state = carry
      value, grad = value_and_grad(theta, state=state)
      updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
      return optax.apply_updates(theta, updates), state

    theta, _ = jax.lax.fori_loop(0, iterations, body, (theta, opt.init(theta)))
    return theta, fun(theta)

  return jax.vmap(run)(inits)


def _minimise(
  inits: np.ndarray, log_n, log_d, log_l, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
  """L-BFGS from each row of `inits` (float64); returns the final points and objective values.
  The data are arguments, so refits of same-sized data (bootstrap) reuse one compilation."""
  with jax.enable_x64(True):
    args = (jnp.asarray(x, jnp.float64) for x in (inits, log_n, log_d, log_l))
    thetas, values = _minimise_jit(*args, iterations)
    return np.asarray(thetas), np.asarray(values)


def _best(thetas: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float]:
  values = np.where(np.isfinite(values), values, np.inf)
  i = int(np.argmin(values))
  return thetas[i], float(values[i])


def fit_chinchilla(
  N: Any,
  D: Any,
  loss: Any,
  *,
  bootstrap: int = 0,
  seed: int = 0,
  iterations: int = 100,
  init_grid: np.ndarray | None = None,
) -> dict[str, Any]:
  """Fits `L = E + A/N^α + B/D^β` by approach 3 (see the module docstring).

  Args:
    N: parameter counts (positive).
    D: training tokens (positive).
    loss: final losses (positive), one per (N, D).
    bootstrap: number of bootstrap resamples for 95% confidence intervals (0: none).
    seed: the bootstrap's resampling seed.
    iterations: L-BFGS iterations per start.
    init_grid: `[k, 5]` starts (alpha, beta, e, a, b); default the paper's 4,500.

  Returns:
    `{'A', 'B', 'E', 'alpha', 'beta'}` (floats), `'objective'` (the Huber sum), `'residuals'`
    (log predicted − log observed, per point) and, with `bootstrap`, `'ci'`: name -> (low, high).
  """
  n, d, obs = _check(N, D, loss)
  logs = tuple(np.log(x) for x in (n, d, obs))
  grid = INIT_GRID if init_grid is None else np.asarray(init_grid, np.float64)
  theta, value = _best(*_minimise(grid, *logs, iterations))
  out = _as_dict(theta)
  out['objective'] = value
  out['residuals'] = np.asarray(predict(out, n, d)[1]) - logs[2]
  if bootstrap:
    rng = np.random.default_rng(seed)
    order = np.argsort(_minimise(grid, *logs, 1)[1])[:8]  # the grid's most promising starts
    starts = np.concatenate([theta[None], grid[order]])
    samples = []
    for _ in range(bootstrap):
      idx = rng.integers(0, n.size, n.size)
      sub = tuple(np.log(x[idx]) for x in (n, d, obs))
      samples.append(_as_dict(_best(*_minimise(starts, *sub, iterations))[0]))
    out['ci'] = {k: tuple(np.percentile([s[k] for s in samples], [2.5, 97.5])) for k in samples[0]}
  return out


def _as_dict(theta: np.ndarray) -> dict[str, float]:
  alpha, beta, e, a, b = (float(x) for x in theta)
  return {
    'A': float(np.exp(a)),
    'B': float(np.exp(b)),
    'E': float(np.exp(e)),
    'alpha': alpha,
    'beta': beta,
  }


def predict(fit: dict[str, Any], N: Any, D: Any) -> tuple[np.ndarray, np.ndarray]:
  """`(L(N, D), log L(N, D))` of a fit."""
  N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
  loss = fit['E'] + fit['A'] / N ** fit['alpha'] + fit['B'] / D ** fit['beta']
  return loss, np.log(loss)


def compute_optimal(fit: dict[str, Any], C: Any) -> tuple[np.ndarray, np.ndarray]:
  """`(N*(C), D*(C))` minimising `L(N, D)` subject to `6ND = C` (Hoffmann et al., Eq. 4)."""
  alpha, beta = fit['alpha'], fit['beta']
  G = (alpha * fit['A'] / (beta * fit['B'])) ** (1.0 / (alpha + beta))
  C = np.asarray(C, np.float64)
  return G * (C / 6.0) ** (beta / (alpha + beta)), (C / 6.0) ** (alpha / (alpha + beta)) / G


def isoflop_optima(N: Any, D: Any, loss: Any, budgets: Any) -> dict[str, np.ndarray]:
  """Approach 2 (Hoffmann et al., Sec. 3.2): per compute budget, the loss-minimising size.

  The runs of one budget (`budgets[i]`, the run's compute label; runs of one budget share it)
  get a parabola in `log N`; its vertex is `N_opt(C)`, with `D_opt = C / (6 N_opt)`. Then
  `N_opt ∝ C^a` and `D_opt ∝ C^b` are fitted by least squares in log-log.

  Returns:
    `'C'`, `'N_opt'`, `'D_opt'` (per budget, sorted) and the exponents `'a'`, `'b'`.
  """
  n, d, obs = _check(N, D, loss)
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  if budgets.size != n.size:
    raise ValueError(f'budgets: expected one per run ({n.size}), got {budgets.size}')
  cs, n_opt = [], []
  for c in np.unique(budgets):
    pick = budgets == c
    if pick.sum() < 3:
      raise ValueError(f'budgets: expected at least 3 runs per budget, got {pick.sum()} at {c:g}')
    curv, slope, _ = np.polyfit(np.log(n[pick]), obs[pick], 2)
    if curv <= 0:
      raise ValueError(f'budget {c:g}: the loss is not convex in log N; no IsoFLOP minimum')
    cs.append(c)
    n_opt.append(np.exp(-slope / (2 * curv)))
  cs, n_opt = np.array(cs), np.array(n_opt)
  d_opt = cs / (6 * n_opt)
  return {
    'C': cs,
    'N_opt': n_opt,
    'D_opt': d_opt,
    'a': float(np.polyfit(np.log(cs), np.log(n_opt), 1)[0]),
    'b': float(np.polyfit(np.log(cs), np.log(d_opt), 1)[0]),
  }


def fit_asymptote(x: Any, loss: Any, *, grid: int = 4000) -> dict[str, float]:
  """`L(x) = A / x^B + C` (Pre-training under infinite compute: loss against parameters or
  ensemble members, `C` the asymptote as `x → ∞`).

  For each `C` on a grid of `[0, min L)` the rest is linear in log space
  (`log(L − C) = log A − B log x`); the `C` with the least squared error in `L` wins.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  obs = np.asarray(loss, np.float64).reshape(-1)
  if x.size != obs.size or x.size < 3:
    raise ValueError(f'x, loss: expected equal lengths of at least 3, got {x.size}, {obs.size}')
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(obs)) and np.all(x > 0)):
    raise ValueError('x, loss: expected finite values and positive x')
  best = None
  for c in np.linspace(0.0, obs.min(), grid, endpoint=False):
    slope, intercept = np.polyfit(np.log(x), np.log(obs - c), 1)
    err = np.sum((np.exp(intercept) * x**slope + c - obs) ** 2)
    if best is None or err < best[0]:
      best = (err, float(np.exp(intercept)), float(-slope), float(c))
  _, A, B, C = best
  return {'A': A, 'B': B, 'C': C}
