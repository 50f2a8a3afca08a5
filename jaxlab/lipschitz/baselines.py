"""Reference bounds around the bound-propagation methods: the naive product of layer norms (an
upper bound) and the sampled / attacked gradient norm (a lower bound).

Naive (Shi et al., NeurIPS 2022, `global_lip.py`): `L_j ≤ ‖W_n[j]‖_* Π_{k<n} c_k ‖W_k‖`, with
`‖·‖` the `∞→∞` (max absolute row sum) or the spectral norm, `‖·‖_*` the dual of the row, and
`c_k` the activation's largest Jacobian norm over all inputs.

Lower bound: `max ‖∇f_j(x)‖_*` over uniform samples of the box and the iterates of projected
gradient ascent on a smoothed gradient norm (ReLU-type slopes replaced by a sigmoid of `z/τ`,
since the exact gradient norm of a ReLU network is piecewise constant and has no ascent
direction). Every value is the exact gradient norm at a point of the box, so their maximum is a
valid lower bound whatever the surrogate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.lipschitz.graph import Activation, Chain
from jaxlab.lipschitz.relax import jacobian_range

Array = jax.Array


def _act_norm(act: Activation, norm: str) -> float:
  """Largest `‖J‖` of the activation over all inputs (the operator norm matching `norm`)."""
  name = act.act.name
  if name == 'maxmin' or name.startswith('groupsort'):
    return 1.0  # a permutation in every piece
  if name == 'householder':
    v = np.asarray(act.params[0], np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    reflect = np.eye(v.shape[-1]) - 2 * v[..., :, None] * v[..., None, :]
    if norm == '2':
      return 1.0
    return float(max(1.0, np.abs(reflect).sum(-1).max()))
  if act.group_size is not None:
    g = act.group_size
    inf = jnp.full((g,), jnp.inf)
    jlo, jhi = jacobian_range(act, -inf, inf)
    mag = np.maximum(np.abs(jlo), np.abs(jhi))
    return float(
      mag.sum(-1).max() if norm == 'inf' else np.linalg.norm(mag, 2, axis=(-2, -1)).max()
    )
  inf = jnp.full((1,), jnp.inf)
  lo, hi = act.slope(-inf, inf)
  return float(jnp.maximum(jnp.abs(lo), jnp.abs(hi)).max())


def naive_bound(chain: Chain, norm: str = 'inf') -> Array:
  """Per-output naive bound `‖W_n[j]‖_* Π c_k ‖W_k‖` (`norm`: `'inf'` or `'2'`)."""

  def op(w):
    w = np.asarray(w, np.float64)
    return np.abs(w).sum(1).max() if norm == 'inf' else np.linalg.norm(w, 2)

  prod = 1.0
  for w, act in zip(chain.weights[:-1], chain.acts, strict=False):
    prod *= op(w) * _act_norm(act, norm)
  last = jnp.asarray(chain.weights[-1])
  rows = jnp.abs(last).sum(1) if norm == 'inf' else jnp.linalg.norm(last, axis=1)
  return rows * prod


@functools.partial(jax.jit, static_argnames=('norm',))
def grad_norms(chain: Chain, xs: Array, norm: str = 'inf') -> Array:
  """`‖∇f_j(x)‖_*` for each row of `xs` (flattened inputs): shape `(m, n_out)`."""
  jac = jax.vmap(jax.jacrev(chain))(xs)
  return jnp.abs(jac).sum(-1) if norm == 'inf' else jnp.linalg.norm(jac, axis=-1)


def _soft_chain(chain: Chain, x: Array, tau: Array) -> Array:
  """The chain with ReLU-type activations smoothed by a softplus (for ascent directions)."""
  h = x
  for k, act in enumerate(chain.acts):
    z = chain.weights[k] @ h + chain.biases[k]
    if act.act.name == 'relu':
      h = tau * jax.nn.softplus(z / tau)
    elif act.act.name == 'leaky_relu':
      s = act.params[0]
      h = s * z + (1 - s) * tau * jax.nn.softplus(z / tau)
    else:
      h = act(z)
  return chain.weights[-1] @ h + chain.biases[-1]


@functools.partial(jax.jit, static_argnames=('steps', 'norm'))
def _attack(chain: Chain, x0: Array, xl: Array, xu: Array, steps: int, norm: str) -> Array:
  """Sign ascent on the smoothed `‖∇f_j‖_*` from starts `x0` (m, d); the best exact value per j."""
  tau = 0.05 * jnp.max(xu - xl) + 1e-3
  step_size = (xu - xl) / 10

  def surrogate(x, j):
    g = jax.grad(lambda a: _soft_chain(chain, a, tau)[j])(x)
    return jnp.abs(g).sum() if norm == 'inf' else jnp.sqrt((g**2).sum() + 1e-12)

  def run(x, j):
    def body(x, _):
      x = jnp.clip(x + step_size * jnp.sign(jax.grad(surrogate)(x, j)), xl, xu)
      return x, grad_norms(chain, x[None], norm)[0, j]

    return jax.lax.scan(body, x, None, length=steps)[1].max()

  n_out = chain.weights[-1].shape[0]
  per_j = jax.vmap(lambda j: jax.vmap(run, in_axes=(0, None))(x0, j).max())
  return per_j(jnp.arange(n_out))


def sampled_lower_bound(
  chain: Chain,
  xl: Array,
  xu: Array,
  key: Array,
  *,
  num_samples: int = 10_000,
  pgd_steps: int = 50,
  pgd_restarts: int = 16,
  norm: str = 'inf',
  batch: int = 2_000,
) -> Array:
  """Per-output lower bound `max ‖∇f_j(x)‖_*` over samples and PGD iterates in `[xl, xu]`."""
  xl, xu = jnp.asarray(xl), jnp.asarray(xu)
  k1, k2 = jax.random.split(key)
  best = jnp.zeros(chain.weights[-1].shape[0], xl.dtype)
  for start in range(0, num_samples, batch):
    m = min(batch, num_samples - start)
    u = jax.random.uniform(jax.random.fold_in(k1, start), (m, xl.size), xl.dtype)
    best = jnp.maximum(best, grad_norms(chain, xl + u * (xu - xl), norm).max(0))
  if pgd_steps == 0:
    return best
  u = jax.random.uniform(k2, (pgd_restarts, xl.size), xl.dtype)
  return jnp.maximum(best, _attack(chain, xl + u * (xu - xl), xl, xu, pgd_steps, norm))
