"""Adversarial attacks, the empirical counterpart of certification: FGSM (Goodfellow et al.,
2015) and PGD (Madry et al., 2018, Sec. 2.1), in l_inf and l2.

Both maximise the softmax cross-entropy of `apply_fn(x)` at the true labels inside the ball
`||δ|| <= eps` (per example when `eps` is `[B]`), optionally kept in the data box `clip`:

  FGSM:  x' = x + eps · sign(∇)             (l_inf),   x + eps · ∇ / ||∇||_2        (l2)
  PGD:   δ <- Π_eps(δ + α · sign(∇))       (l_inf),   Π_eps(δ + α · ∇ / ||∇||_2)   (l2)

with `Π_eps` the projection onto the ball (clipping in l_inf, rescaling in l2).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

ApplyFn = Callable[[jax.Array], jax.Array]  # inputs [B, ...] -> logits [B, C]
NORMS = ('l2', 'linf')


def fgsm(
  apply_fn: ApplyFn,
  x: jax.Array,
  labels: jax.Array,
  eps: float | jax.Array,
  *,
  norm: str = 'linf',
  clip: tuple[float, float] | None = None,
) -> jax.Array:
  """One gradient step of size `eps` (Goodfellow et al., 2015, Sec. 4); returns `x'`."""
  eps = _check(x, eps, norm)
  return _finish(x, x + eps * _direction(_grad(apply_fn, x, labels), norm), clip)


def pgd(
  apply_fn: ApplyFn,
  x: jax.Array,
  labels: jax.Array,
  eps: float | jax.Array,
  *,
  norm: str = 'linf',
  steps: int = 20,
  step_size: float | None = None,
  key: jax.Array | None = None,
  clip: tuple[float, float] | None = None,
) -> jax.Array:
  """Projected gradient ascent on the cross-entropy (Madry et al., 2018); returns `x'`.

  Args:
    apply_fn: `x [B, ...] -> logits [B, C]`.
    x: clean inputs.
    labels: `[B]` true classes.
    eps: the ball's radius, a scalar or `[B]`.
    norm: 'linf' or 'l2'.
    steps: ascent steps.
    step_size: `α`, as a fraction of `eps` (default `2.5 / steps`, Madry et al.).
    key: a random start inside the ball when given; else the attack starts at `x`.
    clip: `(low, high)` data range, or None.
  """
  if steps < 1:
    raise ValueError(f'steps: expected >= 1, got {steps}')
  eps = _check(x, eps, norm)
  alpha = eps * (2.5 / steps if step_size is None else step_size)
  delta = jnp.zeros_like(x)
  if key is not None:
    delta = _project(jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps, eps, norm)

  def step(delta, _):
    g = _grad(apply_fn, _finish(x, x + delta, clip), labels)
    delta = _project(delta + alpha * _direction(g, norm), eps, norm)
    return _finish(x, x + delta, clip) - x, None

  delta, _ = jax.lax.scan(step, delta, None, length=steps)
  return _finish(x, x + delta, clip)


def _grad(apply_fn: ApplyFn, x: jax.Array, labels: jax.Array) -> jax.Array:
  def loss(x):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(x), labels).sum()

  return jax.grad(loss)(x)


def _norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def _direction(g: jax.Array, norm: str) -> jax.Array:
  if norm == 'linf':
    return jnp.sign(g)
  return g / jnp.maximum(_norm(g), 1e-12)


def _project(delta: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  return delta * jnp.minimum(1.0, eps / jnp.maximum(_norm(delta), 1e-12))


def _finish(x: jax.Array, adv: jax.Array, clip: tuple[float, float] | None) -> jax.Array:
  return adv if clip is None else jnp.clip(adv, clip[0], clip[1])


def _check(x: jax.Array, eps: float | jax.Array, norm: str) -> jax.Array:
  """`eps` broadcast to `[B, 1, ...]`; errors name the bad argument."""
  if norm not in NORMS:
    raise ValueError(f'norm: expected one of {NORMS}, got {norm!r}')
  eps = jnp.asarray(eps, x.dtype)
  if eps.ndim not in (0, 1) or (eps.ndim == 1 and eps.shape[0] != x.shape[0]):
    raise ValueError(f'eps: expected a scalar or [{x.shape[0]}], got shape {eps.shape}')
  if bool(jnp.any(eps < 0)):
    raise ValueError('eps: expected >= 0, got a negative radius')
  return eps.reshape((-1,) + (1,) * (x.ndim - 1)) if eps.ndim else eps
