"""ELK: the Newton step with a trust region, as a parallel Kalman smoother (quasi-ELK).

ELK (Gonzalez et al., NeurIPS 2024, Sec. 4) replaces the DEER/Newton update by

  H^{k+1} = argmin_H  Σ_t ‖h_t − A_t h_{t−1} − b_t‖² + λ Σ_t ‖h_t − h^k_t‖²,

the posterior mean of a linear-Gaussian state-space model with dynamics
`h_t ~ N(A_t h_{t−1} + b_t, I)`, `h_0` known, and pseudo-observations `h^k_t ~ N(h_t, σ² I)`,
`σ² = 1/λ`. λ → 0 recovers the Newton step; λ > 0 keeps each step near the current iterate,
which is what stops the iterates from overflowing when the Jacobian products explode.

For diagonal `A` (quasi-ELK) every dimension is an independent scalar filter, and all three of
its recursions run as associative scans:

1. filter variances: `P_t = σ²(a_t² P_{t−1} + 1) / (a_t² P_{t−1} + 1 + σ²)` is a Möbius map of
   `P_{t−1}`, i.e. the 2×2 matrix `[[σ² a², σ²], [a², 1 + σ²]]` acting on `[P; 1]`; products of
   those matrices are normalised at every combine (only the ratio matters), `P_0 = 0`;
2. filter means: `m_t = (1 − K_t)(a_t m_{t−1} + b_t) + K_t h^k_t`, `K_t = P⁻_t / (P⁻_t + σ²)`,
   `P⁻_t = a_t² P_{t−1} + 1` — a diagonal linear recurrence;
3. RTS smoother: `s_t = G_t s_{t+1} + m_t − G_t (a_{t+1} m_t + b_{t+1})`,
   `G_t = P_t a_{t+1} / P⁻_{t+1}`, `s_T = m_T` — the same recurrence run in reverse.

Caveat (seen here, not a bug of the scan): on expanding dynamics (|a_t| > 1 along the iterate)
the least-squares step can settle on a trajectory whose residual `r_1` is nonzero and decays as
`r_{t+1} = r_t / a_{t+1}` — a stationary point, not the root. ELK does not inherit DEER's
"k iterations make h_1..h_k exact"; check `NewtonInfo.residual` (or set `fallback=True`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.nn.rnn.linear_scan import linear_recurrence


def _filter_variances(a: jax.Array, sigma2: float) -> jax.Array:
  """`P_1..P_T` of the scalar filters (`P_0 = 0`), by a normalised scan of Möbius matrices."""
  a2 = a * a
  one = jnp.ones_like(a)
  m = jnp.stack(
    [jnp.stack([sigma2 * a2, sigma2 * one], -1), jnp.stack([a2, (1.0 + sigma2) * one], -1)], -2
  )  # [T, ..., 2, 2]

  def combine(earlier, later):
    prod = jnp.einsum('...ij,...jk->...ik', later, earlier)
    return prod / jnp.max(jnp.abs(prod), axis=(-2, -1), keepdims=True)

  cumulative = jax.lax.associative_scan(combine, m)
  # Applied to [P_0; 1] = [0; 1]: the second column.
  return cumulative[..., 0, 1] / cumulative[..., 1, 1]


def trust_region_step(
  a: jax.Array, b: jax.Array, h0: jax.Array, guess: jax.Array, lam: float
) -> jax.Array:
  """`argmin_H Σ (h_t − a_t h_{t−1} − b_t)² + λ Σ (h_t − guess_t)²` for diagonal `a`.

  Args:
    a: `[T, ...]` diagonal Jacobians.
    b: `[T, ...]` offsets (`f(h^k_{t−1}) − a_t h^k_{t−1}` in the Newton step).
    h0: the known initial state.
    guess: `[T, ...]` the current iterate `h^k`.
    lam: λ > 0, the trust-region weight (σ² = 1/λ).
  """
  sigma2 = 1.0 / lam
  p = _filter_variances(a, sigma2)
  p_prev = jnp.concatenate([jnp.zeros_like(p[:1]), p[:-1]], axis=0)
  p_pred = a * a * p_prev + 1.0
  k = p_pred / (p_pred + sigma2)
  m = linear_recurrence('diag', (1.0 - k) * a, (1.0 - k) * b + k * guess, h0)
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)
  b_next = jnp.concatenate([b[1:], jnp.zeros_like(b[:1])], axis=0)
  p_pred_next = jnp.concatenate([p_pred[1:], jnp.ones_like(p_pred[:1])], axis=0)
  g = p * a_next / p_pred_next  # zero at t = T, where s_T = m_T
  return linear_recurrence(
    'diag', g, m - g * (a_next * m + b_next), jnp.zeros_like(h0), reverse=True
  )
