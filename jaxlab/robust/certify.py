"""Certified robustness from a Lipschitz bound: every input closer than the radius keeps the
prediction, provably (Tsuzuku et al., 2018, "Lipschitz-margin training", Sec. 3).

With logits `f`, predicted class `y` and margin `m = f_y(x) - max_{j != y} f_j(x)`, a
perturbation `δ` changes `f_y - f_j` by at most `K_j ||δ||`, so the prediction cannot change
while `||δ|| < min_j (f_y - f_j) / K_j`. The constant `K_j` depends on what is bounded:

- a global l2 bound `L` (`||f(x) - f(x')||_2 <= L ||x - x'||_2`): `|(e_y - e_j)^T Δf| <=
  ||e_y - e_j||_2 ||Δf||_2 = √2 L ||δ||`, so the radius is `m / (√2 L)`;
- a global l_inf -> l_inf bound `L` (`max_j |Δf_j| <= L ||δ||_inf`): `K_j = 2 L`, radius
  `m / (2 L)` in l_inf;
- per-output bounds `L_j` (`|Δf_j| <= L_j ||δ||`, either norm, e.g. LipSDP's l_inf row bounds):
  `K_j = L_y + L_j`, radius `min_{j != y} (f_y - f_j) / (L_y + L_j)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ('l2', 'linf')


def certified_radius(
  logits: jax.Array, lipschitz: float | jax.Array, *, norm: str = 'l2'
) -> jax.Array:
  """The radius `[B]` around each input inside which its predicted class cannot change.

  Args:
    logits: `[B, C]` outputs at the inputs.
    lipschitz: a scalar global bound (l2 -> l2, or l_inf -> l_inf), or `[C]` per-output bounds.
    norm: 'l2' or 'linf': the input norm the bound and the radius are in.

  Returns:
    `[B]` non-negative radii (0 where the top two logits tie).
  """
  if norm not in NORMS:
    raise ValueError(f'norm: expected one of {NORMS}, got {norm!r}')
  logits = jnp.asarray(logits)
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(f'logits: expected [batch, classes >= 2], got shape {logits.shape}')
  lip = jnp.asarray(lipschitz, logits.dtype)
  if lip.ndim == 0:
    lip_scalar = float(lipschitz)
    if not lip_scalar > 0:
      raise ValueError(f'lipschitz: expected a positive bound, got {lip_scalar}')
  elif lip.shape != (logits.shape[1],) or not bool(jnp.all(lip > 0)):
    raise ValueError(
      f'lipschitz: expected a positive scalar or [{logits.shape[1]}] positive per-output '
      f'bounds, got shape {lip.shape}'
    )
  pred = jnp.argmax(logits, axis=-1)
  top = jnp.take_along_axis(logits, pred[:, None], axis=-1)
  gaps = top - logits  # [B, C], f_y - f_j
  if lip.ndim == 0:
    per_pair = (jnp.sqrt(2.0) if norm == 'l2' else 2.0) * lip
  else:
    per_pair = lip[pred][:, None] + lip[None, :]
  ratios = jnp.where(jax.nn.one_hot(pred, logits.shape[1], dtype=bool), jnp.inf, gaps / per_pair)
  return jnp.maximum(jnp.min(ratios, axis=-1), 0.0)


def certified_accuracy(
  logits: jax.Array,
  labels: jax.Array,
  lipschitz: float | jax.Array,
  eps: float,
  *,
  norm: str = 'l2',
  mask: jax.Array | None = None,
) -> float:
  """Fraction of inputs classified correctly with a certified radius greater than `eps`.

  `mask` `[B]` (1 = real example) leaves padding rows out; `eps = 0` gives clean accuracy
  except for exact ties.
  """
  if eps < 0:
    raise ValueError(f'eps: expected >= 0, got {eps}')
  radius = certified_radius(logits, lipschitz, norm=norm)
  ok = (jnp.argmax(logits, -1) == jnp.asarray(labels)) & (radius > eps)
  weights = np.ones(ok.shape[0]) if mask is None else np.asarray(mask, np.float64)
  return float(np.sum(np.asarray(ok) * weights) / max(weights.sum(), 1.0))
