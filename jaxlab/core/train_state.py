"""The train state and its sharded creation.

Randomness is not stored: the key for step `t` is `fold_in(key(seed), t)`, so restoring the step
restores the RNG stream exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxlab.core import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: optax.OptState
  # Non-trainable model collections updated by the forward pass (e.g. BatchNorm's
  # `batch_stats`); `{}` for models without any.
  model_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(
  init_params: Callable[[], Any],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: sharding.Rules,
  init_model_state: Callable[[], Any] = dict,
) -> tuple[TrainState, TrainState]:
  """Initialises parameters and optimizer state directly into their shardings.

  Shapes and logical axis names come from `jax.eval_shape` (no FLOPs, no memory); optimizer
  state leaves shaped like parameters get the parameter's sharding (`opt_state_shardings`),
  the rest is replicated; the jitted init then writes each shard on its own device, so no full
  copy of the model ever lives on one device.

  Args:
    init_params: returns the model's parameters as `nn.LogicallyPartitioned` boxes.
    tx: the optimizer.
    mesh: the device mesh.
    rules: logical axis rules.
    init_model_state: returns the non-trainable collections (replicated; small).

  Returns:
    The state and a matching tree of `NamedSharding`s.
  """
  shardings = train_state_shardings(init_params, tx, mesh, rules, init_model_state)

  def init() -> TrainState:
    params = nn.unbox(init_params())
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=init_model_state(),
    )

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)()
  return state, shardings


def train_state_shardings(
  init_params: Callable[[], Any],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: sharding.Rules,
  init_model_state: Callable[[], Any] = dict,
) -> TrainState:
  """The `NamedSharding` of every leaf of the train state `create_train_state` builds, from
  abstract shapes only (`jax.eval_shape`)."""
  abstract_boxed = jax.eval_shape(init_params)
  param_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  abstract_params = nn.unbox(abstract_boxed)
  replicated = sharding.replicated(mesh)
  opt_shardings = opt_state_shardings(
    jax.eval_shape(tx.init, abstract_params), abstract_params, param_shardings, replicated
  )
  return TrainState(
    step=replicated,
    params=param_shardings,
    opt_state=opt_shardings,
    model_state=jax.tree.map(lambda _: replicated, jax.eval_shape(init_model_state)),
  )


def opt_state_shardings(
  abstract_opt: Any, abstract_params: Any, param_shardings: Any, replicated: Any
) -> Any:
  """Shardings for an optimizer state: parameter-shaped subtrees follow the parameters.

  Every subtree of the (abstract) optimizer state with the parameters' tree structure — Adam's
  moments, a pruning mask, one partition of `optax.multi_transform` (whose holes are
  `optax.MaskedNode`s) — gets the parameters' shardings leaf by leaf where the shapes agree;
  everything else (counts, scalars, differently shaped statistics) is replicated. It reads
  only the abstract state of `tx.init(params)`, so a transform whose `init` needs the real
  parameter shapes works (`optax.tree_map_params` calls `init` on a tree with no leaves).
  """
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731  (partitions' holes)
  params_def = jax.tree.structure(abstract_params)

  def visit(node):
    if jax.tree.structure(node, is_leaf=masked) == params_def:
      return jax.tree.map(
        lambda v, p, s: v if masked(v) else (s if v.shape == p.shape else replicated),
        node,
        abstract_params,
        param_shardings,
        is_leaf=masked,
      )
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef):
      return node if masked(node) else replicated
    return jax.tree_util.tree_unflatten(treedef, [visit(c) for c in children])

  return visit(abstract_opt)
