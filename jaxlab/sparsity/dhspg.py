"""DHSPG: Dual Half-Space Projected Gradient, the optimizer of OTOv2 and OTOv3.

Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023, Sec. 3.2 and Alg. 3
(DHSPG with its adaptive λ); reused by OTOv3 (Chen et al., 2023, "Automatic
Architecture-Agnostic Neural Network Training and Compression"). It trains a model and
drives a chosen fraction of its zero-invariant groups (`jaxlab.sparsity.groups`) to exactly
zero in the same run, so the zero groups can be cropped afterwards (`jaxlab.sparsity.crop`)
without fine-tuning.

With `x_g` the entries of group `g` (all its parameter slices, as in `group_matrix`),
`d` the inner optimizer's descent direction (the update is `u = −α d`) and `α` the step size,
one step `t` does:

1. Warm-up (`t < warmup_steps`): `x ← x + u`, the inner optimizer unchanged.
2. Partition (once, at `t = warmup_steps`): each group gets the saliency
   `s_g = ½ cos(x_g, d_g) / ‖cos‖₂ + ½ r_g / ‖r‖₂`, `r_g = 1 / (‖x_g‖ / |g| + 10⁻⁶)`
   (a step along `−d` that shrinks the group, and a small average magnitude, both mark it
   redundant). The `K = ⌊N · min(target + tolerance, 0.999)⌋` groups with the largest `s`
   over all `N` groups form the redundant set `G_p`; the rest, `G_np`, are important. Every
   family keeps at least one important group.
3. Penalised step (every `t ≥ warmup_steps` while the zero fraction is below the target):
   `x̃_g = x_g − α (d_g + λ_g x_g / ‖x_g‖)` for `g ∈ G_p` (a subgradient step on
   `Σ_{g∈G_p} λ_g ‖x_g‖`), `x̃ = x + u` elsewhere. Adaptive `λ_g`: where `x_gᵀ d_g < 0` (the
   plain step would grow the group) take `λ_g = clip(a · λ_min, λ, ĉ λ)` with
   `λ_min = −x_gᵀ d_g / ‖x_g‖` (the smallest λ for which the step no longer grows `x_g`) and
   replace it by `(λ_min + λ_max) / 2` where it reaches
   `λ_max = −‖d_g‖² ‖x_g‖ / (x_gᵀ d_g)` (beyond it the step is no longer a descent direction
   of the loss); elsewhere `λ_g = λ`.
4. Half-space projection (same steps, `g ∈ G_p`): `x̃_g ← 0` where `x̃_gᵀ x_g < ε ‖x_g‖²`
   (the step left the half-space around `x_g`, so the group is set exactly to zero).
5. Groups that are exactly zero at step `t` stay zero (for `t ≥ warmup_steps`). Once the
   fraction of zero groups reaches the target, penalty and projection stop: the remaining
   groups train as in warm-up and the sparsity stays where it is (between the target and
   target + tolerance).

Design: DHSPG is a *wrapper* around an inner optax optimizer, not the paper's SGD. The
official code already computes its step from a "gradient variant" (SGD with momentum, Adam,
AdamW) and only adds the group penalty and the projection on top of it, and here the inner
optimizer's update `u` is exactly that direction times `−α`. Passing a learning rate instead
of an optimizer gives the paper's SGD version, `dhspg(0.1, ...)` = `dhspg(optax.sgd(0.1),
..., learning_rate=0.1)`. Weight decay belongs in the inner chain
(`optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))`).

Where this differs from the official code (github.com/tianyic/only_train_once, the OTOv2
release: `only_train_once/optimizer/dhspg.py` and `hyperparameter.py`; the later
`microsoft/only_train_once` DHSPG is a different, progressive algorithm):

- Overlapping groups. Our families include the consuming layer's input slice, so a kernel
  entry belongs to two groups (its output channel and the next layer's input channel). The
  penalty is the subgradient of the overlapping sum `Σ λ_g ‖x_g‖` (an entry in two
  redundant groups gets both terms), and an entry is zeroed when any of its groups is
  projected. The official groups (ZIGs) do not overlap.
- Any inner optax optimizer; the official code has its own SGD/Adam/AdamW. Its SGD with
  momentum gives the same direction as `optax.sgd(lr, momentum)`; its Adam starts both
  moments at the first gradient (not at zero), so it differs from `optax.adam`.
- One phase boundary, `warmup_steps` (the release's `start_pruning_steps`, which sets its
  `partition_step` and `half_space_project_steps`); its separate constant-λ phase
  (`warm_up_steps`, default 0) is not offered.
- No `upper_group_sparsity` cap (a random subset of the projected groups; default 1.0 = no
  cap) and no `group_divisible` (channel counts rounded to a multiple); with the default
  `group_divisible=1` the release also keeps one important group per family.
- Zero groups are held at zero from the end of warm-up on (the release: from the start), so
  warm-up is exactly the inner optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.sparsity.groups import Family, broadcast_keep, flat_arrays, group_matrix, unflatten_like


class DHSPGState(NamedTuple):
  count: jax.Array  # int32 []: updates done
  redundant: tuple[jax.Array, ...]  # bool [family.size] per family: the penalised set G_p
  inner_state: optax.OptState


def _rows(tree, family: Family) -> jax.Array:
  """`[size, k]`: the parameter slices of each group of `family` in a params-shaped tree."""
  return group_matrix({'params': tree}, family)


def zero_groups(params, families: Sequence[Family]) -> list[np.ndarray]:
  """Per family, a `[size]` bool array: whether every parameter entry of the group is 0."""
  return [np.asarray(~jnp.any(_rows(params, f) != 0, axis=1)) for f in families]


def zero_group_fraction(params, families: Sequence[Family]) -> jax.Array:
  """Jittable `|{g : x_g = 0}| / N`: the fraction of all `N` groups whose parameters are all 0."""
  zeros = [jnp.sum(~jnp.any(_rows(params, f) != 0, axis=1)) for f in families]
  return sum(zeros) / sum(f.size for f in families)


def group_sparsity(params, families: Sequence[Family]) -> float:
  """The fraction of all groups of `families` that are exactly zero (on the host)."""
  return float(zero_group_fraction(params, families))


def _unit(v: jax.Array) -> jax.Array:
  return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def _partition(
  families: Sequence[Family], xs: list[jax.Array], ds: list[jax.Array], num_redundant: int
) -> tuple[jax.Array, ...]:
  """The redundant set G_p: the `num_redundant` most salient groups over all families."""
  norms = [jnp.linalg.norm(x, axis=1) for x in xs]
  cos = [
    jnp.sum(x * d, axis=1) / jnp.maximum(n * jnp.linalg.norm(d, axis=1), 1e-8)
    for x, d, n in zip(xs, ds, norms, strict=True)
  ]
  inv_mag = [1.0 / (n / x.shape[1] + 1e-6) for x, n in zip(xs, norms, strict=True)]
  score = 0.5 * _unit(jnp.concatenate(cos)) + 0.5 * _unit(jnp.concatenate(inv_mag))
  _, top = jax.lax.top_k(score, num_redundant)
  chosen = jnp.zeros(score.shape, jnp.bool_).at[top].set(True)
  out, start = [], 0
  for f in families:
    red, s = chosen[start : start + f.size], score[start : start + f.size]
    start += f.size
    # A family with every group redundant would cut the network: keep its least salient one.
    out.append(jnp.where(jnp.all(red), red.at[jnp.argmin(s)].set(False), red))
  return tuple(out)


def _adaptive_lambda(
  x: jax.Array, d: jax.Array, lmbda: float, amplify: float, hat_coeff: float
) -> jax.Array:
  """`[size]` λ_g: raised where the plain step `−d` would grow the group (`xᵀd < 0`)."""
  x_norm = jnp.linalg.norm(x, axis=1)
  d_norm = jnp.linalg.norm(d, axis=1)
  xd = jnp.sum(x * d, axis=1)
  grows = xd < 0  # implies ‖x‖ > 0
  safe_xd = jnp.where(grows, xd, -1.0)
  lower = -safe_xd / jnp.where(grows, x_norm, 1.0)
  upper = -(d_norm**2) * x_norm / safe_xd
  lam = jnp.clip(amplify * lower, lmbda, lmbda * hat_coeff)
  lam = jnp.where(lam >= upper, 0.5 * (lower + upper), lam)
  return jnp.where(grows, lam, lmbda)


def dhspg(
  inner: optax.GradientTransformation | optax.ScalarOrSchedule,
  families: Sequence[Family],
  target_group_sparsity: float,
  *,
  warmup_steps: int,
  learning_rate: optax.ScalarOrSchedule | None = None,
  lmbda: float = 1e-3,
  lmbda_amplify: float = 2.0,
  hat_lmbda_coeff: float = 10.0,
  epsilon: float = 0.0,
  tolerance: float = 0.05,
) -> optax.GradientTransformationExtraArgs:
  """DHSPG around `inner` (see the module docstring for the algorithm).

  Defaults are the official code's for its SGD variant (`optimizer/hyperparameter.py` and
  `dhspg.py` of the OTOv2 release). Its Adam variant uses `lmbda=1e-2, lmbda_amplify=20,
  hat_lmbda_coeff=1e3`; its tutorials set `epsilon=0.95`, which projects groups much earlier.

  Args:
    inner: the optimizer whose update is the descent step `u = −α d`, or a learning rate (or
      schedule) for plain SGD. With heavy momentum the capped λ tends to only balance the
      growth of a group, so plain SGD (the release's default) reaches the target sooner.
    families: the groups (`zero_invariant_families`); paths are `'params/...'`.
    target_group_sparsity: the fraction of all groups to drive to exactly zero, in (0, 1).
    warmup_steps: steps of plain `inner` training before the partition.
    learning_rate: the step size `α` of `inner` (scalar or schedule), which scales the penalty
      step; required when `inner` is an optimizer, absent when it is a learning rate.
    lmbda: the base group-lasso weight `λ`.
    lmbda_amplify: `a`, the factor on `λ_min` in the adaptive λ.
    hat_lmbda_coeff: `ĉ`, the adaptive λ is at most `ĉ λ`.
    epsilon: `ε ∈ [0, 1)` of the half-space test `x̃ᵀx < ε ‖x‖²`.
    tolerance: extra fraction of groups put in the redundant set beyond the target.

  Returns:
    A transformation whose `update(grads, state, params, **extra_args)` needs `params` and
    passes `extra_args` (e.g. `batch=`, `model_state=`) on to `inner`.
  """
  families = tuple(families)
  if not families:
    raise ValueError('dhspg: expected at least one family of groups, got none')
  if not 0.0 < target_group_sparsity < 1.0:
    raise ValueError(f'target_group_sparsity: expected in (0, 1), got {target_group_sparsity}')
  if not 0.0 <= epsilon < 1.0:
    raise ValueError(f'epsilon: expected in [0, 1), got {epsilon}')
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps: expected >= 0, got {warmup_steps}')
  if isinstance(inner, optax.GradientTransformation):
    if learning_rate is None:
      raise ValueError('dhspg: with an inner optimizer, pass its step size as learning_rate=')
  else:
    if learning_rate is not None:
      raise ValueError('dhspg: inner is a learning rate already; do not pass learning_rate=')
    learning_rate, inner = inner, optax.sgd(inner)
  inner = optax.with_extra_args_support(inner)
  step_size = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  num_groups = sum(f.size for f in families)
  num_redundant = max(1, int(num_groups * min(target_group_sparsity + tolerance, 0.999)))

  def init_fn(params):
    redundant = tuple(jnp.zeros(f.size, jnp.bool_) for f in families)
    return DHSPGState(jnp.zeros((), jnp.int32), redundant, inner.init(params))

  def sparse_step(u, params, count, old_redundant):
    """Steps 2-5 of the module docstring: the update and the (possibly new) partition."""
    alpha = jnp.asarray(step_size(count), jnp.float32)
    inv_alpha = jnp.where(alpha > 0, 1.0 / alpha, 0.0)  # a zero step size has no direction
    d = jax.tree.map(lambda v: -v * inv_alpha, u)
    xs = [_rows(params, f) for f in families]
    ds = [_rows(d, f) for f in families]
    redundant = jax.lax.cond(
      count == warmup_steps,
      lambda: _partition(families, xs, ds, num_redundant),
      lambda: old_redundant,
    )
    norms = [jnp.linalg.norm(x, axis=1) for x in xs]
    zero = [~jnp.any(x != 0, axis=1) for x in xs]
    active = sum(z.sum() for z in zero) < target_group_sparsity * num_groups

    # Penalty: x̃ = x + u − α λ_g x / ‖x_g‖ on every slice of a redundant group.
    flat_x = flat_arrays({'params': params})
    flat_u = flat_arrays({'params': u})
    scale = {k: jnp.zeros(v.shape, v.dtype) for k, v in flat_x.items()}
    for f, x, dd, n, red in zip(families, xs, ds, norms, redundant, strict=True):
      lam = _adaptive_lambda(x, dd, lmbda, lmbda_amplify, hat_lmbda_coeff)
      coef = jnp.where(red & active & (n > 0), alpha * lam / jnp.where(n > 0, n, 1.0), 0.0)
      for m in f.param_members:
        scale[m.path] = scale[m.path] + broadcast_keep(coef, scale[m.path].shape, m)
    step = {k: flat_u[k] - scale[k] * flat_x[k] for k in flat_x}

    # Half-space projection of the redundant groups; zero groups stay zero.
    tilde = unflatten_like({'params': params}, {k: flat_x[k] + step[k] for k in flat_x})
    keep = {k: jnp.ones(v.shape, jnp.bool_) for k, v in flat_x.items()}
    for f, x, n, z, red in zip(families, xs, norms, zero, redundant, strict=True):
      inner_prod = jnp.sum(_rows(tilde['params'], f) * x, axis=1)
      kill = z | (red & active & (inner_prod < epsilon * n**2))
      for m in f.param_members:
        keep[m.path] = keep[m.path] & broadcast_keep(~kill, keep[m.path].shape, m)
    new = {k: jnp.where(keep[k], step[k], -flat_x[k]).astype(flat_u[k].dtype) for k in flat_x}
    return unflatten_like({'params': params}, new)['params'], redundant

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError('dhspg: update needs the parameters (optax params argument)')
    u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    u, redundant = jax.lax.cond(
      state.count < warmup_steps,
      lambda: (u, state.redundant),
      lambda: sparse_step(u, params, state.count, state.redundant),
    )
    count = optax.safe_int32_increment(state.count)
    return u, DHSPGState(count, redundant, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
