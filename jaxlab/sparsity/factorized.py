"""Trainable low-rank factorised layers with ordered dropout (Maestro; Horváth et al., 2024).

A factorised dense layer keeps `W = U Vᵀ` as two trainable factors, `u ∈ R^{in×r}` and
`v ∈ R^{out×r}`, and computes `y = (x u) vᵀ + b`. Rank component `j` is the pair
`(u[:, j], v[:, j])`; the layer with rank `k ≤ r` uses only the leading `k` components,
`y_k = x u[:, :k] v[:, :k]ᵀ + b`.

- **Ordered dropout** (Maestro Sec. 3, generalising FjORD's ordered dropout to the inner
  dimension of a decomposition): each training step samples ONE layer and a rank `k` for it,
  uniformly over all `(layer, k)` pairs, `k ∈ {1, …, r_layer}`; every other layer keeps its
  full rank (the official code's `SingleLayerSampler`, which cycles through a shuffled list of
  exactly these pairs; we draw with replacement). Only live (nonzero) components count, as the
  official sampler is rebuilt from the live ranks after each shrinking. Leading components are
  in every sampled sub-model, trailing ones in few, which imposes an importance ordering: the
  paper shows it recovers the SVD of a linear map (and PCA for a linear autoencoder).
- **Initialisation**: the SVD of the dense layer's default initialisation, split evenly,
  `u = U_r √S_r`, `v = V_r √S_r` (the official `decompose_linear`), full rank `r = min(in, out)`.
- **Group lasso on rank components**: `λ Σ_j ‖[u_j; v_j]‖₂`, applied as a proximal step after
  the optimizer's update (`rank_group_lasso`): the group soft-threshold
  `[u_j; v_j] ← max(0, 1 − τ/‖[u_j; v_j]‖₂) [u_j; v_j]`, `τ = λ η_t` with `η_t` the learning
  rate, sets whole components to exactly zero. OURS: the official code adds
  `λ Σ_j (‖u_j‖ + ‖v_j‖)` (hierarchical variant: tail sums over `j' ≥ j`) to the loss and
  takes its subgradient, which never reaches exactly zero.
- **Progressive shrinking** (`rank_pruning`): every `every` steps, components whose importance
  `‖u_j‖₂ ‖v_j‖₂` (the official `importance`) is at most `threshold` are masked out for good;
  the mask lives in the optimizer state and keeps them exactly zero. The official code shrinks
  once per epoch with `importance >= threshold` kept. `prune_ranks` then removes them
  physically: a smaller-rank layer computing the same outputs.
- **SVD truncation** (`svd_truncate`, `svd_factors`): the best rank-`r` approximation of a dense
  kernel (Eckart–Young), the post-training baseline.

Reference: S. Horváth, S. Laskaridis, S. Rajput, H. Wang, "Maestro: Uncovering Low-Rank
Structures via Trainable Decomposition", ICML 2024, arXiv:2308.14929; official code
github.com/SamsungLabs/maestro (read for the sampler, init, group lasso and shrinking rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import flat_paths, path_name
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, from_model_config, model_config

Pairs = dict[str, tuple[jax.Array, jax.Array]]  # layer path -> (u [in, r], v [out, r])

# ------------------------------------------------------------------------------ SVD


def svd_factors(w: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """`(u, v)` with `u vᵀ` the best rank-`rank` approximation of `w` `[in, out]`.

  `w = U S Vᵀ` (singular values descending); `u = U_r √S_r`, `v = V_r √S_r`, so both factors
  carry half of each singular value (the official `decompose_linear`).
  """
  if not 1 <= rank <= min(w.shape):
    raise ValueError(
      f'rank: expected an int in [1, {min(w.shape)}] for shape {w.shape}, got {rank}'
    )
  u, s, vt = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return (u[:, :rank] * root).astype(w.dtype), (vt[:rank].T * root).astype(w.dtype)


def svd_truncate(w: jax.Array, rank: int) -> jax.Array:
  """The best rank-`rank` approximation of `w` in Frobenius and spectral norm (Eckart–Young):
  `‖w − w_r‖_F² = Σ_{i>r} σ_i²`, `‖w − w_r‖₂ = σ_{r+1}`."""
  u, v = svd_factors(w, rank)
  return u @ v.T


# ------------------------------------------------------------------------------ layers


def leading_mask(alive: jax.Array, k: jax.Array | int) -> jax.Array:
  """`[r]` float mask selecting the first `k` live components (`alive`: `[r]` bool)."""
  return (alive & (jnp.cumsum(alive) <= k)).astype(jnp.float32)


class FactorizedDense(nn.Module):
  """`y = x u[:, :k] v[:, :k]ᵀ + b`: a dense layer of rank `rank` as trainable factors.

  Components that are exactly zero (pruned, or zeroed by the prox) are skipped when counting
  the leading `k`, so `k` counts live components, as the official sampler, re-prepared after
  each shrinking with the layers' live inner dimensions, does.

  Attributes:
    features: output size.
    rank: r, the number of components (at most `min(in, features)`).
    use_bias: add `b`.
    kernel_init: the dense kernel initialiser whose SVD gives the factors' initial values.
  """

  features: int
  rank: int
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, k: jax.Array | int | None = None) -> jax.Array:
    """The layer with its first `k` live components (`None`: all of them)."""
    n_in = x.shape[-1]
    if not 1 <= self.rank <= min(n_in, self.features):
      raise ConfigError(
        f'rank: expected an int in [1, {min(n_in, self.features)}] for a {n_in}->'
        f'{self.features} layer, got {self.rank}'
      )
    # One dense draw, shared by both factors. (Flax also traces the initialisers at apply time,
    # for their shapes only; there is no shared key then, and each uses its own.)
    shared = self.make_rng('params') if self.is_initializing() else None

    def factor(index: int) -> Callable[[jax.Array], jax.Array]:
      def init(rng: jax.Array) -> jax.Array:
        key = rng if shared is None else shared
        dense = self.kernel_init(key, (n_in, self.features), jnp.float32)
        return svd_factors(dense, self.rank)[index]

      return init

    u = self.param('u', factor(0))
    v = self.param('v', factor(1))
    h = x @ u
    if k is not None:
      h = h * leading_mask(group_norms(u, v) > 0, k).astype(h.dtype)
    y = h @ v.T
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


@dataclasses.dataclass(frozen=True)
class FactorizedMLPConfig:
  """An MLP whose every dense layer (hidden and head) is a `FactorizedDense`.

  Attributes:
    num_classes: the head's size (the task fixes it).
    hidden: hidden widths.
    activation: an `ACTIVATIONS` name.
    ranks: one rank per layer (hidden layers, then the head); `()` = full rank `min(in, out)`.
    ordered_dropout: sample one `(layer, k)` per training step (see the module docstring).
  """

  num_classes: int
  hidden: tuple[int, ...] = (128, 64)
  activation: str = 'relu'
  ranks: tuple[int, ...] = ()
  ordered_dropout: bool = True

  def __post_init__(self):
    if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
      raise ConfigError(
        f'model.hidden: expected a non-empty tuple of positive ints, got {self.hidden}'
      )
    if self.ranks and len(self.ranks) != len(self.hidden) + 1:
      raise ConfigError(
        f'model.ranks: expected {len(self.hidden) + 1} ranks (hidden layers and head) or (), '
        f'got {self.ranks}'
      )
    if any(not isinstance(r, int) or r < 1 for r in self.ranks):
      raise ConfigError(f'model.ranks: expected positive ints, got {self.ranks}')
    ACTIVATIONS.get(self.activation, 'model.activation')

  def layer_names(self) -> list[str]:
    return [f'dense{i}' for i in range(len(self.hidden))] + ['head']

  def layer_ranks(self, n_in: int) -> list[int]:
    sizes = [n_in, *self.hidden, self.num_classes]
    if self.ranks:
      return list(self.ranks)
    return [min(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def sample_ordered_ranks(rng: jax.Array, ranks: Sequence[jax.Array | int]) -> list[jax.Array]:
  """Ordered dropout's per-step ranks: one layer `i` and `k ∈ {1, …, ranks[i]}` drawn uniformly
  over all `Σ ranks` pairs; that layer gets `k`, the others their full rank. `ranks` may be
  traced (the live components of each layer)."""
  total = sum(ranks)
  s = jax.random.randint(rng, (), 0, jnp.maximum(total, 1))
  out, start = [], 0
  for r in ranks:
    inside = (s >= start) & (s < start + r)
    out.append(jnp.where(inside, s - start + 1, r))
    start = start + r
  return out


class FactorizedMLP(nn.Module):
  """`x -> flatten -> [FactorizedDense -> act] * len(hidden) -> FactorizedDense(num_classes)`;
  in training with `ordered_dropout`, one sampled layer runs at a sampled rank."""

  cfg: FactorizedMLPConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = ACTIVATIONS.get(self.cfg.activation, 'model.activation')
    x = x.reshape(x.shape[0], -1)
    ranks = self.cfg.layer_ranks(x.shape[-1])
    names = self.cfg.layer_names()
    ks = [None] * len(ranks)
    if train and self.cfg.ordered_dropout and not self.is_initializing():
      params = self.variables['params']
      live = [jnp.sum(group_norms(params[n]['u'], params[n]['v']) > 0) for n in names]
      ks = sample_ordered_ranks(self.make_rng('dropout'), live)
    widths = [*self.cfg.hidden, self.cfg.num_classes]
    for i, (width, rank, k, name) in enumerate(zip(widths, ranks, ks, names, strict=True)):
      x = FactorizedDense(width, rank, name=name)(x, k)
      if i < len(widths) - 1:
        x = act(x)
    return x


def factorized_mlp_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` for `factorized_mlp`, every field present."""
  return model_config(FactorizedMLPConfig, 'factorized_mlp', exclude=('num_classes',), **overrides)


@MODELS.register('factorized_mlp')
def _build_factorized_mlp(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return FactorizedMLP(from_model_config(FactorizedMLPConfig, cfg, num_classes=num_classes))


# ------------------------------------------------------------------------------ components


def _split(name: str) -> tuple[str, str]:
  prefix, _, last = name.rpartition('/')
  return prefix, last


def factor_pairs(tree: Any) -> Pairs:
  """Layer path -> `(u, v)` for every factorised layer in `tree` (leaves named `u` and `v`)."""
  flat = flat_paths(tree)
  pairs = {}
  for name, x in flat.items():
    prefix, last = _split(name)
    v_name = f'{prefix}/v' if prefix else 'v'
    if last == 'u' and v_name in flat:
      pairs[prefix] = (x, flat[v_name])
  return pairs


def replace_pairs(tree: Any, new: Mapping[str, tuple[Any, Any]]) -> Any:
  """`tree` with the `(u, v)` of each layer in `new` replaced (shapes may change)."""

  def leaf(path, x):
    prefix, last = _split(path_name(path))
    if prefix in new and last in ('u', 'v'):
      return new[prefix][0 if last == 'u' else 1]
    return x

  return jax.tree_util.tree_map_with_path(leaf, tree)


def group_norms(u: jax.Array, v: jax.Array) -> jax.Array:
  """`[r]`: `‖[u_j; v_j]‖₂`, the norm of each rank component's group."""
  return jnp.sqrt(jnp.sum(jnp.square(u), 0) + jnp.sum(jnp.square(v), 0))


def importance(u: jax.Array, v: jax.Array) -> jax.Array:
  """`[r]`: `‖u_j‖₂ ‖v_j‖₂` (the official code's importance; the j-th singular value when the
  components are orthogonal)."""
  return jnp.linalg.norm(u, axis=0) * jnp.linalg.norm(v, axis=0)


def group_soft_threshold(
  u: jax.Array, v: jax.Array, tau: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
  """The proximal operator of `τ Σ_j ‖[u_j; v_j]‖₂`: each component scaled by
  `max(0, 1 − τ / ‖[u_j; v_j]‖₂)`, so a group with norm `≤ τ` becomes exactly zero."""
  n = group_norms(u, v)
  scale = jnp.where(n > tau, 1.0 - tau / jnp.where(n > 0, n, 1.0), 0.0)
  return u * scale.astype(u.dtype), v * scale.astype(v.dtype)


def _step_size(step_size: float | optax.Schedule, count: jax.Array) -> jax.Array:
  return step_size(count) if callable(step_size) else jnp.asarray(step_size)


class RankGroupLassoState(NamedTuple):
  count: jax.Array  # int32: updates done (indexes the step-size schedule)


def rank_group_lasso(
  strength: float, step_size: float | optax.Schedule
) -> optax.GradientTransformation:
  """The group-lasso proximal step on every factorised layer's rank components.

  With `p' = params + updates` (the inner optimizer's step), returns the updates that land on
  `prox(p')`: `group_soft_threshold(u', v', λ η_t)` for each layer, the rest unchanged. Chain
  it after the optimizer: `optax.chain(adam(lr), rank_group_lasso(λ, lr))`.

  Args:
    strength: λ ≥ 0, in the units of the training loss.
    step_size: η_t, a float or a schedule of the update count (the inner learning rate).

  Returns:
    A transform whose `update(updates, state, params)` needs `params`.
  """
  if strength < 0:
    raise ValueError(f'strength: expected a non-negative number, got {strength}')

  def init_fn(params):
    del params
    return RankGroupLassoState(jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('rank_group_lasso: update needs the parameters (optax params argument)')
    tau = strength * _step_size(step_size, state.count)
    new = optax.apply_updates(params, updates)
    proxed = {k: group_soft_threshold(u, v, tau) for k, (u, v) in factor_pairs(new).items()}
    target = replace_pairs(new, proxed)
    return jax.tree.map(jnp.subtract, target, params), RankGroupLassoState(state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


class RankPruningState(NamedTuple):
  count: jax.Array  # int32: updates done
  masks: dict[str, jax.Array]  # layer path -> [r] bool, False = pruned for good


def rank_pruning(every: int, threshold: float = 0.0) -> optax.GradientTransformation:
  """Progressive shrinking: every `every` updates, components with `importance ≤ threshold`
  are pruned for good; pruned components are kept exactly zero at every update.

  A layer always keeps at least its most important live component (a layer of rank 0 would
  have no factors). Chain it last: `optax.chain(adam(lr), rank_group_lasso(...),
  rank_pruning(...))`.

  Args:
    every: updates between shrinking steps (the first at update `every`).
    threshold: the importance at or below which a component is pruned (0: exactly-zero ones).

  Returns:
    A transform whose state is a `RankPruningState` (`find_rank_pruning_state`).
  """
  if every < 1:
    raise ValueError(f'every: expected a positive int, got {every}')
  if threshold < 0:
    raise ValueError(f'threshold: expected a non-negative number, got {threshold}')

  def init_fn(params):
    masks = {k: jnp.ones((u.shape[1],), bool) for k, (u, _) in factor_pairs(params).items()}
    return RankPruningState(jnp.zeros((), jnp.int32), masks)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('rank_pruning: update needs the parameters (optax params argument)')
    new = optax.apply_updates(params, updates)
    pairs = factor_pairs(new)
    due = (state.count + 1) % every == 0
    masks, kept = {}, {}
    for name, (u, v) in pairs.items():
      score = jnp.where(state.masks[name], importance(u, v), -1.0)
      best = jnp.arange(score.shape[0]) == jnp.argmax(score)
      shrunk = state.masks[name] & ((score > threshold) | best)
      masks[name] = jnp.where(due, shrunk, state.masks[name])
      m = masks[name].astype(u.dtype)
      kept[name] = (u * m, v * m)
    target = replace_pairs(new, kept)
    return jax.tree.map(jnp.subtract, target, params), RankPruningState(state.count + 1, masks)

  return optax.GradientTransformation(init_fn, update_fn)


def find_rank_pruning_state(opt_state: Any) -> RankPruningState | None:
  """The `RankPruningState` inside a (possibly chained) optimizer state, if any."""
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, RankPruningState))
    if isinstance(s, RankPruningState)
  ]
  return found[0] if found else None


def prune_ranks(params: Any, masks: Mapping[str, Any]) -> Any:
  """The parameters with each layer's masked-out components removed: `u[:, m]`, `v[:, m]`.

  With the removed components zero (as `rank_pruning` keeps them), the smaller layer computes
  exactly the same outputs. Host-side (the shapes depend on the masks).
  """
  missing = set(masks) - set(factor_pairs(params))
  if missing:
    raise ValueError(f'masks: no factorised layer at {sorted(missing)}')
  small = {}
  for name, (u, v) in factor_pairs(params).items():
    if name in masks:
      keep = np.asarray(masks[name], bool)
      if not keep.any():
        raise ValueError(f'masks[{name!r}]: expected at least one kept component, got none')
      small[name] = (np.asarray(u)[:, keep], np.asarray(v)[:, keep])
  return replace_pairs(params, small)


def layer_ranks(params: Any) -> dict[str, int]:
  """Layer path -> its number of rank components."""
  return {k: int(u.shape[1]) for k, (u, _) in factor_pairs(params).items()}


def truncation_ranks(ranks: Mapping[str, int], fraction: float) -> dict[str, int]:
  """`⌈fraction · r⌉` per layer (at least 1): the nested sub-model ordered dropout trains."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'fraction: expected in (0, 1], got {fraction}')
  return {k: max(1, math.ceil(fraction * r - 1e-9)) for k, r in ranks.items()}
