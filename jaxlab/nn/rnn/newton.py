"""Parallel evaluation of a nonlinear RNN by Newton's method (ParaRNN; DEER; quasi-DEER).

All states `H = (h_1..h_T)` of `h_t = f(h_{t-1}, x_t)` are the root of
`F_t(H) = h_t − f(h_{t−1}, x_t)`. A Newton step linearises `f` around the current iterate and
solves the resulting linear recurrence with an associative scan (DEER form, Lim et al. 2024,
eq. 6; ParaRNN Sec. 3):

  h^{k+1}_t = J_t h^{k+1}_{t-1} + (f(h^k_{t-1}, x_t) − J_t h^k_{t-1}),   J_t = ∂f/∂h(h^k_{t-1}, x_t)

then `H ← H + ω (H^{k+1} − H)` (ω < 1 damps), clipped to ±1e8 with NaN → 0 as in the DEER/ELK
code. By causality `h_1..h_k` are exact after k iterations, so T iterations always suffice;
ParaRNN uses a fixed 3, DEER iterates to `|ΔH| ≤ atol + rtol |H|`. ELK's trust-region step
(`jaxlab.nn.rnn.trust_region`) stabilises iterates whose Jacobian products explode.

Gradients use implicit differentiation, not back-propagation through the iterations
(`jax.custom_vjp`): with `g_t = ∂L/∂h_t` the adjoint solves the reverse recurrence
`μ_T = g_T, μ_t = g_t + J_{t+1}ᵀ μ_{t+1}` (the same scan, reversed), then
`∂L/∂θ = Σ_t (∂f/∂θ)ᵀ μ_t`, `∂L/∂x_t = (∂f/∂x)ᵀ μ_t`, `∂L/∂h_0 = J_1ᵀ μ_1`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxlab.core.errors import ConfigError
from jaxlab.nn.rnn import linear_scan
from jaxlab.nn.rnn.trust_region import trust_region_step

StepFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, h_prev, x_t) -> h_t
JacFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, h_prev, x_t) -> J_t

CLIP = 1e8


@dataclasses.dataclass(frozen=True)
class NewtonConfig:
  """Solver settings.

  Attributes:
    iterations: Newton iterations (ParaRNN: a fixed 3). With `tol` set, the maximum.
    tol: None for a fixed count, else stop when `max|ΔH| ≤ atol + rtol·|H|` (DEER; f32:
      atol 1e-4, rtol 1e-3) — `(atol, rtol)`.
    omega: damping, `H ← H + ω ΔH` (1 = plain Newton).
    trust_region: λ of the ELK step (0 = Newton/DEER); needs structure 'diag' (quasi-ELK).
    init: 'step' = `f(0, x_t)` for every t (ParaRNN), 'zeros', or 'h0' (h_0 broadcast, DEER).
    fallback: when the final residual `max|H − f(H_prev, x)|` exceeds `fallback_tol`, return the
      sequential solution instead (computed only then, except under vmap). Never silently wrong.
    fallback_tol: the residual above which the fallback is used.
  """

  iterations: int = 3
  tol: tuple[float, float] | None = None
  omega: float = 1.0
  trust_region: float = 0.0
  init: str = 'step'
  fallback: bool = False
  fallback_tol: float = 1e-3

  def __post_init__(self):
    if self.iterations < 1:
      raise ConfigError(f'iterations: expected >= 1, got {self.iterations}')
    if not 0.0 < self.omega <= 1.0:
      raise ConfigError(f'omega: expected a damping factor in (0, 1], got {self.omega}')
    if self.trust_region < 0:
      raise ConfigError(f'trust_region: expected lambda >= 0, got {self.trust_region}')
    if self.init not in ('step', 'zeros', 'h0'):
      raise ConfigError(f"init: expected 'step', 'zeros' or 'h0', got {self.init!r}")


class NewtonInfo(NamedTuple):
  iterations: jax.Array  # int32: Newton iterations run
  residual: jax.Array  # max_t |h_t − f(h_{t−1}, x_t)| at the returned H
  converged: jax.Array  # bool: tolerance met (fixed count: residual ≤ fallback_tol)
  used_fallback: jax.Array  # bool: the sequential solution was returned


def _shifted(h0: jax.Array, h: jax.Array) -> jax.Array:
  """`(h_0, h_1, ..., h_{T-1})`: the previous state of every step."""
  return jnp.concatenate([h0[None], h[:-1]], axis=0)


def _residual(step: StepFn, params, xs, h0, h) -> jax.Array:
  f = jax.vmap(step, in_axes=(None, 0, 0))(params, _shifted(h0, h), xs)
  return jnp.max(jnp.abs(h - f))


def sequential(step: StepFn, params: Any, xs: jax.Array, h0: jax.Array) -> jax.Array:
  """The reference: `lax.scan` of `h_t = f(h_{t-1}, x_t)`."""

  def body(h, x):
    h = step(params, h, x)
    return h, h

  return jax.lax.scan(body, h0, xs)[1]


def newton_iteration(
  step: StepFn,
  jac: JacFn,
  structure: str,
  params,
  xs,
  h0,
  h,
  omega: float = 1.0,
  trust_region: float = 0.0,
) -> jax.Array:
  """One Newton step from the iterate `h`, solved by the parallel linear scan; damped by
  `omega`, or an ELK trust-region step when `trust_region` (λ) > 0 ('diag' only)."""
  prev = _shifted(h0, h)
  f = jax.vmap(step, in_axes=(None, 0, 0))(params, prev, xs)
  a = jax.vmap(jac, in_axes=(None, 0, 0))(params, prev, xs)
  b = f - linear_scan.matvec(structure, a, prev)
  if trust_region > 0:
    new = trust_region_step(a, b, h0, h, trust_region)
  else:
    new = linear_scan.linear_recurrence(structure, a, b, h0)
  new = h + omega * (new - h) if omega != 1.0 else new
  return jnp.clip(jnp.nan_to_num(new, nan=0.0), -CLIP, CLIP)


def initial_guess(step: StepFn, params, xs, h0, init: str) -> jax.Array:
  """The iterate Newton starts from (`NewtonConfig.init`)."""
  if init == 'step':  # f(0, x_t) for all t in parallel (ParaRNN)
    return jax.vmap(step, in_axes=(None, None, 0))(params, jnp.zeros_like(h0), xs)
  if init == 'h0':
    return jnp.broadcast_to(h0, (xs.shape[0], *h0.shape))
  return jnp.zeros((xs.shape[0], *h0.shape), h0.dtype)


def newton_solve(
  step: StepFn,
  jac: JacFn,
  structure: str,
  params: Any,
  xs: jax.Array,
  h0: jax.Array,
  config: NewtonConfig = NewtonConfig(),
  guess: jax.Array | None = None,
) -> tuple[jax.Array, NewtonInfo]:
  """Newton iterations from `guess` (or `config.init`); forward only, no custom gradient.

  Args:
    step: the cell, `(params, h_prev, x_t) -> h_t` for one time step (no batch axis).
    jac: `(params, h_prev, x_t) -> J_t` in the layout of `structure`.
    structure: 'diag', 'block' or 'dense' (jaxlab.nn.rnn.linear_scan).
    params: the cell's parameters (any pytree).
    xs: inputs `[T, ...]`.
    h0: the initial state.
    config: solver settings.
    guess: a warm start `[T, *h0.shape]`, overriding `config.init`.

  Returns:
    States `[T, *h0.shape]` and a `NewtonInfo`.
  """
  h = initial_guess(step, params, xs, h0, config.init) if guess is None else guess
  if config.trust_region > 0 and structure != 'diag':
    raise ConfigError(
      f"trust_region: the ELK step needs structure 'diag' (quasi-ELK), got {structure!r}"
    )
  iterate = functools.partial(
    newton_iteration,
    step,
    jac,
    structure,
    params,
    xs,
    h0,
    omega=config.omega,
    trust_region=config.trust_region,
  )
  if config.tol is None:
    h = jax.lax.fori_loop(0, config.iterations, lambda _, h: iterate(h), h)
    iterations = jnp.int32(config.iterations)
    residual = _residual(step, params, xs, h0, h)
    converged = residual <= config.fallback_tol
  else:
    atol, rtol = config.tol

    def cond(carry):
      k, _, done = carry
      return (k < config.iterations) & ~done

    def body(carry):
      k, h, _ = carry
      new = iterate(h)
      return k + 1, new, jnp.all(jnp.abs(new - h) <= atol + rtol * jnp.abs(new))

    iterations, h, converged = jax.lax.while_loop(cond, body, (jnp.int32(0), h, jnp.bool_(False)))
    residual = _residual(step, params, xs, h0, h)
  used_fallback = jnp.bool_(False)
  if config.fallback:
    used_fallback = residual > config.fallback_tol
    h = jax.lax.cond(used_fallback, lambda: sequential(step, params, xs, h0), lambda: h)
  return h, NewtonInfo(iterations, residual, converged, used_fallback)


def newton_scan(
  step: StepFn,
  jac: JacFn,
  structure: str,
  params: Any,
  xs: jax.Array,
  h0: jax.Array,
  config: NewtonConfig = NewtonConfig(),
) -> tuple[jax.Array, NewtonInfo]:
  """`newton_solve` with gradients by implicit differentiation (the adjoint scan above).

  The backward pass recomputes the Jacobians at the solution (one parallel evaluation) instead
  of storing them, so memory is that of the states. Differentiable w.r.t. `params`, `xs`, `h0`;
  the returned `NewtonInfo` is a diagnostic (its cotangent is ignored). The gradient is exact
  for the returned states, i.e. up to the forward residual.
  """
  return _newton_scan(step, jac, structure, config, params, xs, h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _newton_scan(step, jac, structure, config, params, xs, h0):
  return newton_solve(step, jac, structure, params, xs, h0, config)


def _newton_scan_fwd(step, jac, structure, config, params, xs, h0):
  h, info = newton_solve(step, jac, structure, params, xs, h0, config)
  return (h, info), (params, xs, h0, h)


def _newton_scan_bwd(step, jac, structure, config, residuals, cotangents):
  params, xs, h0, h = residuals
  g = cotangents[0]
  prev = _shifted(h0, h)
  a = jax.vmap(jac, in_axes=(None, 0, 0))(params, prev, xs)  # A_t = J_t, t = 1..T
  # μ_t = g_t + J_{t+1}ᵀ μ_{t+1}: a reverse recurrence whose t-th matrix is J_{t+1}ᵀ (0 at T).
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)
  mu = linear_scan.linear_recurrence(
    structure, linear_scan.transpose(structure, a_next), g, jnp.zeros_like(h0), reverse=True
  )
  _, vjp = jax.vjp(jax.vmap(step, in_axes=(None, 0, 0)), params, prev, xs)
  d_params, d_prev, d_xs = vjp(mu)
  return d_params, d_xs, d_prev[0]


_newton_scan.defvjp(_newton_scan_fwd, _newton_scan_bwd)


def dense_jacobian(step: StepFn) -> JacFn:
  """`∂f/∂h` by `jax.jacfwd` (exact Newton = DEER); use with structure 'dense'."""
  return jax.jacfwd(step, argnums=1)


def diagonal_jacobian(step: StepFn) -> JacFn:
  """Only the diagonal of `∂f/∂h` (quasi-DEER, Gonzalez et al. 2024); structure 'diag'.

  Computed from the dense Jacobian, so it costs D JVPs; cells with an analytic diagonal
  (ParaGRU) should pass their own.
  """
  return lambda params, h, x: jnp.diagonal(jax.jacfwd(step, argnums=1)(params, h, x))
