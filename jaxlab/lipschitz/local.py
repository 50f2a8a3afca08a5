"""Local Lipschitz constants of a Flax model by bound propagation (Shi et al., NeurIPS 2022).

For `X = {x : ‖x − x0‖_∞ ≤ ε} ∩ box` and each output j,

  L_j = max_{x ∈ X} max_{J ∈ ∂_C f_j(x)} ‖J‖_*,

with `‖·‖_* = ‖·‖_1` (dual of ℓ∞, `norm='inf'`, the paper's setting) or `‖·‖_2` (`norm='2'`,
bounded from coordinate bounds of the gradient). `L = max_j L_j` bounds the `∞→∞` local
Lipschitz constant. Methods, loosest first: `'naive'` (product of layer norms, global),
`'ibp'` (IBP-Jac), `'recurjac'` (RecurJac-style), `'crown'` (CROWN-Jac, Sec. 3) and `'bab'`
(branch and bound over unstable ReLUs, Sec. 3.4). Every method returns upper bounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.lipschitz import baselines, crown
from jaxlab.lipschitz.bab import bab_bounds
from jaxlab.lipschitz.graph import Chain, trace_chain

Array = jax.Array
METHODS = ('naive', 'ibp', 'recurjac', 'crown', 'bab')
NORMS = ('inf', '2')


def input_box(x0: Array, eps: float, box: tuple[float, float] | None) -> tuple[Array, Array]:
  """`[x0 − ε, x0 + ε]` intersected with the data box, flattened."""
  x0 = jnp.asarray(x0).reshape(-1)
  xl, xu = x0 - eps, x0 + eps
  if box is not None:
    xl, xu = jnp.clip(xl, box[0], box[1]), jnp.clip(xu, box[0], box[1])
  return xl, xu


def _check(method: str, norm: str, eps: float) -> None:
  if method not in METHODS:
    raise ValueError(f'method: expected one of {METHODS}, got {method!r}')
  if norm not in NORMS:
    raise ValueError(f'norm: expected one of {NORMS}, got {norm!r}')
  if not eps >= 0:
    raise ValueError(f'eps: expected a non-negative radius, got {eps!r}')


def jacobian_method_bounds(
  chain: Chain,
  xl,
  xu,
  method: str,
  *,
  norm: str = 'inf',
  alpha_steps: int = 20,
) -> tuple[np.ndarray, list]:
  """Per-output bounds of `'ibp'`, `'recurjac'` or `'crown'`, and the gradient bounds `p_k`.

  Runs in float64 NumPy (only the α optimisation is compiled). The tighter methods run the
  looser ones first and intersect with them (see `crown`).

  Returns:
    `(bounds (n_out,), p_bounds)` with `p_bounds[j][k] = (lower, upper)` of `p_k` for output j.
  """
  order = ('ibp', 'recurjac', 'crown')
  np_chain, xl, xu = crown.to_numpy((chain, xl, xu))
  n_out = np_chain.weights[-1].shape[0]
  ranges = crown.jacobian_ranges(np_chain, crown.ibp_forward(np_chain, xl, xu))
  bound, prior = np.full(n_out, np.inf), [None] * n_out
  for m in order[: order.index(method) + 1]:
    if m == 'recurjac':
      forward = crown.optimized_forward(chain, xl, xu, steps=alpha_steps)
      ranges = crown.jacobian_ranges(np_chain, forward)
    for j in range(n_out):
      b, prior[j] = crown.jacobian_bounds(np_chain, ranges, np.eye(n_out)[j], m, prior[j])
      if norm == '2':
        b = crown.l2_from_intervals(prior[j])
      bound[j] = min(bound[j], float(b))
  return bound, prior


def chain_lipschitz(
  chain: Chain,
  xl: Array,
  xu: Array,
  method: str = 'crown',
  *,
  norm: str = 'inf',
  alpha_steps: int = 20,
  bab_timeout: float = 60.0,
  bab_batch: int = 128,
) -> Array:
  """Per-output upper bounds for a traced chain on the input box `[xl, xu]` (flattened)."""
  _check(method, norm, 0.0)
  if method == 'naive':
    return baselines.naive_bound(chain, norm)
  if method == 'bab':
    if norm != 'inf':
      raise ValueError(f"norm: expected 'inf' for method='bab', got {norm!r}")
    refined = bab_bounds(chain, xl, xu, timeout=bab_timeout, batch=bab_batch)
    # BaB's root is plain CROWN-Jac; α-CROWN-Jac (also sound) can be lower where BaB timed out.
    crown_jac = chain_lipschitz(chain, xl, xu, 'crown', norm=norm, alpha_steps=alpha_steps)
    return jnp.minimum(jnp.asarray(refined), crown_jac)
  bound = jacobian_method_bounds(chain, xl, xu, method, norm=norm, alpha_steps=alpha_steps)[0]
  # The naive bound is sound too; the minimum keeps the ordering ... ≤ IBP-Jac ≤ naive.
  return jnp.asarray(np.minimum(bound, np.asarray(baselines.naive_bound(chain, norm))))


def local_lipschitz(
  model,
  params,
  x0: Array,
  eps: float,
  *,
  method: str = 'crown',
  norm: str = 'inf',
  box: tuple[float, float] | None = None,
  **kwargs,
) -> Array:
  """Sound per-output upper bounds `L_j` of the local Lipschitz constant around `x0`.

  Args:
    model: a Flax module applied as `model.apply(params, x)`; a chain of Dense/Conv layers
      (with reshapes, bias adds, sum pooling) and certifiable activations
      (`jaxlab.nn.certifiable`, `jax.nn.relu`, `jnp.tanh`, `jax.nn.sigmoid`).
    params: its variables.
    x0: ONE input, shaped exactly as `model.apply` takes it: either without a batch axis or
      with a leading batch axis of size 1 (the bound is over all entries of `x0`).
    eps: ℓ∞ radius of the input region.
    method: `'naive'`, `'ibp'`, `'recurjac'`, `'crown'` or `'bab'`.
    norm: `'inf'` (`L_j` bounds `‖∇f_j‖_1`, the ℓ∞ Lipschitz constant) or `'2'` (`‖∇f_j‖_2`).
    box: optional data box `(lo, hi)` intersected with the ℓ∞ ball.
    **kwargs: `alpha_steps` (default 20), `bab_timeout` (s, default 60), `bab_batch` (128).

  Returns:
    Array of shape `(n_out,)` (outputs flattened): `L_j ≥ ‖J_j‖_*` for every `x` in the region
    and every Clarke Jacobian `J` of `f` at `x`.
  """
  _check(method, norm, eps)
  x0 = jnp.asarray(x0)
  chain = trace_chain(lambda x: model.apply(params, x), x0)
  xl, xu = input_box(x0, eps, box)
  return chain_lipschitz(chain, xl, xu, method, norm=norm, **kwargs)


def compare_methods(
  chain: Chain,
  xl: Array,
  xu: Array,
  key: Array,
  *,
  methods: Sequence[str] = METHODS,
  num_samples: int = 10_000,
  pgd_steps: int = 50,
  bab_timeout: float = 60.0,
) -> dict[str, tuple[np.ndarray, float, bool | None]]:
  """All methods and the sampled/PGD lower bound on one chain.

  Returns:
    `name -> (per-output bounds, seconds, exact)`; `exact` says for `'bab'` whether every
    domain was closed (then BaB is the exact maximum over activation patterns), else None.
  """

  def timed(run):
    start = time.perf_counter()
    value = np.asarray(jax.block_until_ready(run()))
    return value, time.perf_counter() - start

  out = {}
  lower, seconds = timed(
    lambda: baselines.sampled_lower_bound(
      chain, xl, xu, key, num_samples=num_samples, pgd_steps=pgd_steps
    )
  )
  out['sampled'] = (lower, seconds, None)
  for m in methods:
    if m == 'bab':
      stats = []
      bounds, seconds = timed(
        lambda stats=stats: bab_bounds(chain, xl, xu, timeout=bab_timeout, lower=lower, stats=stats)
      )
      if 'crown' in out:  # as in `chain_lipschitz`: never above (α-)CROWN-Jac
        bounds = np.minimum(bounds, out['crown'][0])
      out[m] = (bounds, seconds, all(s['exact'] for s in stats))
    else:
      bounds, seconds = timed(lambda m=m: chain_lipschitz(chain, xl, xu, m))
      out[m] = (bounds, seconds, None)
  return out
