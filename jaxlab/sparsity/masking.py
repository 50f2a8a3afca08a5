"""Masks in the optimizer state: `masked(inner_tx, pruner)` keeps pruned weights exactly zero.

The pieces compose as in jaxpruner (Lee et al., 2023): a `Pruner` holds the groups (families),
the scorer, the allocator and the schedule; `masked` wraps any optax optimizer and, at the
schedule's pruning steps, recomputes the masks from the current parameters, then

  g ← g ⊙ M,   u ← inner(g),   u ← where(M, u, −w)

so `w + u` is exactly 0 wherever `M` is 0 — whatever the inner optimizer does (momentum,
Adam moments, decoupled weight decay). The masks are a tree of booleans shaped like the
parameters (so they shard like them); arrays no family touches stay all-true.

The state also sums the number of unpruned parameters over the steps taken, so the average
parameter count over training (`param_steps / count`; the `journey` paper's N̄) is exact and
survives checkpoint/resume with the rest of the optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.sparsity import allocators as alloc_lib
from jaxlab.sparsity.groups import (
  Family,
  broadcast_keep,
  flat_arrays,
  member_slices,
  unflatten_like,
)
from jaxlab.sparsity.schedules import Schedule
from jaxlab.sparsity.scorers import ScoreContext, Scorer

ContextFn = Callable[[Any, Mapping[str, Any]], ScoreContext]  # (params, extra args) -> ctx


def _flat_params(params: Any) -> dict[str, jax.Array]:
  return flat_arrays({'params': params})


def _unflatten_params(params: Any, flat: Mapping[str, Any]) -> Any:
  return unflatten_like({'params': params}, flat)['params']


def apply_masks(params: Any, masks: Any) -> Any:
  """`params ⊙ masks` (masks are booleans shaped like the parameters)."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def alive_groups(families: tuple[Family, ...], masks: Any) -> list[jax.Array]:
  """`[size]` per family: whether any entry of the group is still unmasked."""
  flat = _flat_params(masks)
  out = []
  for f in families:
    rows = [member_slices(flat[m.path], m, f.size).any(axis=1) for m in f.param_members]
    out.append(jnp.any(jnp.stack(rows), axis=0))
  return out


def count_unmasked(masks: Any) -> jax.Array:
  return sum(jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(masks))


@dataclasses.dataclass(frozen=True)
class Pruner:
  """Groups + scorer + allocator + schedule.

  Attributes:
    families: what is removed together (`jaxlab.sparsity.groups`).
    scorer: the criterion (`jaxlab.sparsity.scorers`).
    allocator: a name in `ALLOCATORS` ('global', 'uniform', 'ratio', 'nm').
    schedule: when and how much (`jaxlab.sparsity.schedules`).
    rounds: score-and-prune rounds per pruning event, the density shrinking geometrically
      from the previous event's to the target (SynFlow uses 100 at initialisation).
    score_members: structured groups are scored over their 'producer' slices (the filter,
      classic filter pruning) or over 'all' their parameters (OTOv3's zero-invariant group).
    normalize: divide each family's scores by their sum of absolute values before a global
      allocation, so layers compete on relative importance (what the LRP-pruning code does
      for every criterion it compares).
    allocator_kwargs: e.g. `{'densities': {...}}` for 'ratio', `{'n': 2, 'm': 4}` for 'nm'.
  """

  families: tuple[Family, ...]
  scorer: Scorer
  allocator: str
  schedule: Schedule
  rounds: int = 1
  score_members: str = 'producer'
  normalize: bool = False
  allocator_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    alloc_lib.ALLOCATORS.get(self.allocator, 'allocator')
    if self.score_members not in ('producer', 'all'):
      raise ValueError(f"score_members: expected 'producer' or 'all', got {self.score_members!r}")
    if self.rounds < 1:
      raise ValueError(f'rounds: expected at least 1, got {self.rounds}')
    if not self.families:
      raise ValueError('pruner: expected at least one family of groups, got none')

  # ---------------------------------------------------------------------------- masks
  def initial_masks(self, params: Any) -> Any:
    return jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), params)

  def expand(self, params: Any, keeps: list[jax.Array]) -> Any:
    """Per-family keep vectors -> parameter masks (an entry survives if all its groups do)."""
    flat = {k: jnp.ones(v.shape, jnp.bool_) for k, v in _flat_params(params).items()}
    for family, keep in zip(self.families, keeps, strict=True):
      for m in family.param_members:
        flat[m.path] = flat[m.path] & broadcast_keep(keep, flat[m.path].shape, m)
    return _unflatten_params(params, flat)

  def alive(self, masks: Any) -> list[jax.Array]:
    """`[size]` per family: whether any entry of the group is still unmasked."""
    return alive_groups(self.families, masks)

  def group_scores(self, ctx: ScoreContext) -> list[jax.Array]:
    if self.scorer.group_score is not None:
      per_layer = self.scorer.group_score(ctx)
      out = []
      for f in self.families:
        layers = [m.path.removeprefix('params/').removesuffix('/kernel') for m in f.members]
        found = [
          per_layer[name]
          for name, m in zip(layers, f.members, strict=True)
          if m.producer and name in per_layer
        ]
        if not found:
          raise ValueError(f'scorer {self.scorer.name}: no score for family {f.name}')
        out.append(sum(found))
      return out
    flat = _flat_params(self.scorer.score(ctx))
    out = []
    for f in self.families:
      members = f.param_members
      if self.score_members == 'producer' and any(m.producer for m in members):
        members = tuple(m for m in members if m.producer)
      total = sum(member_slices(flat[m.path], m, f.size).sum(axis=1) for m in members)
      out.append(jnp.square(total) if self.scorer.reduce == 'square_of_sum' else total)
    return out

  def prune(
    self, params: Any, masks: Any, sparsity: jax.Array, ctx_fn: Callable[[Any], ScoreContext]
  ) -> Any:
    """New masks at `sparsity`: scores of the masked parameters, removed groups stay removed."""
    scores = self.group_scores(ctx_fn(apply_masks(params, masks)))
    if self.normalize:
      scores = [s / (jnp.sum(jnp.abs(s)) + 1e-30) for s in scores]
    scores = [
      jnp.where(a, s.astype(jnp.float32), -jnp.inf)
      for s, a in zip(scores, self.alive(masks), strict=True)
    ]
    shapes = {k: v.shape for k, v in _flat_params(params).items()}
    keeps = alloc_lib.ALLOCATORS.get(self.allocator, 'allocator')(
      scores, sparsity, families=self.families, shapes=shapes, **self.allocator_kwargs
    )
    return jax.tree.map(jnp.logical_and, masks, self.expand(params, keeps))

  def maybe_prune(
    self, step: jax.Array, params: Any, masks: Any, ctx_fn: Callable[[Any], ScoreContext]
  ) -> Any:
    """At a pruning step, `rounds` prune rounds towards the event's sparsity; else `masks`."""
    event = self.schedule.event_index(step)

    def prune_event(masks):
      target = self.schedule.sparsity(event)
      before = jnp.where(event > 0, self.schedule.sparsity(event - 1), 0.0)
      if self.schedule.kind == 'one_shot':
        before = jnp.zeros(())

      def one_round(r, masks):
        density = (1.0 - before) * ((1.0 - target) / (1.0 - before)) ** ((r + 1) / self.rounds)
        return self.prune(params, masks, 1.0 - density, ctx_fn)

      return jax.lax.fori_loop(0, self.rounds, one_round, masks)

    return jax.lax.cond(event >= 0, prune_event, lambda m: m, masks)


class MaskedState(NamedTuple):
  inner_state: optax.OptState
  masks: Any  # booleans shaped like the parameters
  count: jax.Array  # int32: updates done
  param_steps: jax.Array  # float32: Σ over updates of the number of unmasked parameters
  # Σ over updates of the scorer's per-step statistic (movement: −g ⊙ w), shaped like the
  # parameters; `()` when the scorer keeps none.
  accumulated: Any = ()


def masked(
  inner: optax.GradientTransformation,
  pruner: Pruner | None = None,
  *,
  masks: Any = None,
  context_fn: ContextFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so masked parameters stay exactly zero.

  Args:
    inner: any optax optimizer.
    pruner: recomputes the masks at its schedule's steps; `None` keeps `masks` fixed.
    masks: fixed masks (booleans like the parameters) when there is no pruner; `None` = all
      true at init.
    context_fn: `(params, extra_args) -> ScoreContext` for scorers that evaluate the model;
      `extra_args` are the keyword arguments `update` receives (the train loop passes `batch`
      and `model_state`).
  """

  accumulate = pruner.scorer.accumulate if pruner is not None else None

  def init_fn(params):
    m = masks if masks is not None else jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    acc = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if accumulate else ()
    zero_i, zero_f = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    return MaskedState(inner.init(params), m, zero_i, zero_f, acc)

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise ValueError('masked: update needs the parameters (optax params argument)')
    m, acc = state.masks, state.accumulated
    if accumulate is not None:  # this step's gradient counts towards its own pruning event
      acc = jax.tree.map(jnp.add, acc, accumulate(apply_masks(updates, m), params))
    if pruner is not None:
      # The inner optimizer's state and the accumulated statistic too: a scorer may read a
      # posterior kept by an inner transform, or the movement summed over the steps.
      known = {**extra, 'inner_state': state.inner_state, 'accumulated': acc}
      if context_fn is None:

        def ctx_fn(p):
          return ScoreContext(p, _no_model, _no_model, (), jax.random.key(0), known)

      else:

        def ctx_fn(p):
          return context_fn(p, known)

      m = pruner.maybe_prune(state.count, params, m, ctx_fn)
    updates = apply_masks(updates, m)
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
    updates = jax.tree.map(lambda u, p, k: jnp.where(k, u, -p).astype(u.dtype), updates, params, m)
    present = count_unmasked(m).astype(jnp.float32)
    new_state = MaskedState(inner_state, m, state.count + 1, state.param_steps + present, acc)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _no_model(*_):
  raise ValueError('this scorer evaluates the model; give masked(...) a context_fn')


def find_masked_state(opt_state: Any) -> MaskedState | None:
  """The `MaskedState` inside a (possibly wrapped) optimizer state, if any."""
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, MaskedState))
    if isinstance(s, MaskedState)
  ]
  return found[0] if found else None


def sparsity_metrics(params: Any, masks: Any, state: MaskedState | None = None) -> dict:
  """Parameters kept, removed fraction (of all parameters), and the average over training."""
  total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  kept = count_unmasked(masks)
  out = {
    'sparsity/params': kept.astype(jnp.float32),
    'sparsity/fraction': (total - kept).astype(jnp.float32) / total,  # exactly 0 when dense
  }
  if state is not None:
    out['sparsity/avg_params'] = state.param_steps / jnp.maximum(state.count, 1)
  return out
