"""Pruning scores: how important each weight (or each group) is; higher means keep.

A scorer is `score(ctx: ScoreContext) -> tree` returning, for the current (masked) parameters,
an elementwise score for every parameter array (same tree as `ctx.params`). Groups are then
scored by reducing over their entries (`Scorer.reduce`): `'sum'` (magnitude, SNIP, SynFlow,
GraSP) or `'square_of_sum'` (Taylor: `(Σ_group g·w)^2`, Molchanov et al., 2019, Eq. 8). A
scorer that only exists per unit (LRP relevance, a Bayesian keep probability) sets
`group_score` instead, `ctx -> {producing layer: [channels]}`.

The built-in criteria (`SCORERS`):

- `magnitude`: `|w|` (Han et al., 2015); groups: the L1 norm (Li et al., 2017).
- `random`: i.i.d. uniform scores (the baseline every survey includes).
- `snip`: connection sensitivity `|g ⊙ w|`, `g = ∂L/∂w` on a batch (Lee et al., 2019, Eq. 6).
- `grasp`: gradient signal preservation `w ⊙ Hg` (Wang et al., 2020, Eq. 8: GraSP removes the
  largest `−w ⊙ Hg`, i.e. keeps the largest `w ⊙ Hg`), `g` from logits divided by the paper's
  temperature 200, `Hg` a Hessian-vector product.
- `synflow`: synaptic flow `|∂R/∂w ⊙ w|`, `R = 1ᵀ f(1; |w|)` on the all-ones input with every
  parameter replaced by its absolute value (Tanaka et al., 2020, Eq. 2); BatchNorm uses the
  running statistics it was initialised with (mean 0, variance 1), so the score is data-free.
  The paper prunes iteratively at initialisation (100 rounds, Alg. 1): `Pruner(rounds=100)`.
- `taylor`: first-order Taylor expansion of the loss change `(g ⊙ w)^2` (Molchanov et al.).
- `wanda`: `|w_ij|·‖X_i‖₂`, the weight's magnitude times the norm of its input feature over
  calibration tokens (Sun et al., 2024, Eq. 1), from `ctx.extras['input_norms']`
  (`{kernel path: [in]}`, the kernel seen as an `[in, out]` matrix); pair it with the
  `per_output` allocator (Wanda compares the weights of each output) or `nm`.
- `movement`: movement pruning's score `S = −Σ_t g_t ⊙ w_t` summed over the training steps so
  far (Sanh et al., 2020, Sec. 3, first-order movement): weights moving away from zero are
  kept. The sum lives in the mask wrapper's state (`MaskedState.accumulated`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.core.plugins import path_name
from jaxlab.core.registry import Registry
from jaxlab.nn.kernels import as_matrix


@dataclasses.dataclass(frozen=True)
class ScoreContext:
  """What a scorer may look at. `loss_fn(params)` is the training loss on the scoring batch;
  `apply_fn(params, x)` the model's eval-mode forward pass with data-free model state."""

  params: Any
  loss_fn: Callable[[Any], jax.Array]
  apply_fn: Callable[[Any, jax.Array], jax.Array]
  input_shape: tuple[int, ...]  # one example, without the batch axis
  rng: jax.Array
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # e.g. 'batch'


@dataclasses.dataclass(frozen=True)
class Scorer:
  """An elementwise score (`score`) with its group reduction, or a per-unit `group_score`."""

  name: str
  score: Callable[[ScoreContext], Any] | None = None
  reduce: str = 'sum'  # 'sum' | 'square_of_sum'
  group_score: Callable[[ScoreContext], dict[str, jax.Array]] | None = None
  signed: bool = False  # elementwise values are signed terms of a group sum (Taylor)
  # (grads, params) -> tree added up over every update into `extras['accumulated']` (movement)
  accumulate: Callable[[Any, Any], Any] | None = None


SCORERS: Registry[Scorer] = Registry('scorer')


def _register(scorer: Scorer) -> Scorer:
  SCORERS.register(scorer.name)(scorer)
  return scorer


def magnitude_score(ctx: ScoreContext) -> Any:
  return jax.tree.map(jnp.abs, ctx.params)


def random_score(ctx: ScoreContext) -> Any:
  leaves, treedef = jax.tree.flatten(ctx.params)
  keys = jax.random.split(ctx.rng, len(leaves))
  return treedef.unflatten(
    [jax.random.uniform(k, x.shape, jnp.float32) for k, x in zip(keys, leaves, strict=True)]
  )


def snip_score(ctx: ScoreContext) -> Any:
  grads = jax.grad(ctx.loss_fn)(ctx.params)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, ctx.params)


def taylor_terms(ctx: ScoreContext) -> Any:
  grads = jax.grad(ctx.loss_fn)(ctx.params)
  return jax.tree.map(jnp.multiply, grads, ctx.params)


GRASP_TEMPERATURE = 200.0


def grasp_score(ctx: ScoreContext) -> Any:
  """`w ⊙ Hg`, `Hg = ∂/∂w (stop_gradient(g) · ∂L/∂w)`; the loss is
  `extras['grasp_loss_fn']` when given (logits divided by `GRASP_TEMPERATURE`), else the
  training loss."""
  loss_fn = ctx.extras.get('grasp_loss_fn', ctx.loss_fn)
  grad_fn = jax.grad(loss_fn)
  g = jax.lax.stop_gradient(grad_fn(ctx.params))
  _, hg = jax.jvp(grad_fn, (ctx.params,), (g,))
  return jax.tree.map(jnp.multiply, ctx.params, hg)


def synflow_score(ctx: ScoreContext) -> Any:
  """`|∂R/∂w ⊙ w|` with `R = Σ f(1; |w|)` (Tanaka et al., 2020, Eq. 2 and Alg. 1)."""
  abs_params = jax.tree.map(jnp.abs, ctx.params)
  ones = jnp.ones((1, *ctx.input_shape), jnp.float32)

  def flow(p):
    return jnp.sum(ctx.apply_fn(p, ones))

  grads = jax.grad(flow)(abs_params)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, abs_params)


def wanda_score(ctx: ScoreContext) -> Any:
  """`|W| ⊙ ‖X‖` on kernels with input norms; `|w|` elsewhere (no calibration data)."""
  norms = ctx.extras['input_norms']

  def score(path, w):
    name = path_name(path)
    if name not in norms:
      return jnp.abs(w)
    matrix, restore = as_matrix(name, w)
    return restore(jnp.abs(matrix) * norms[name][:, None])

  return jax.tree_util.tree_map_with_path(score, ctx.params)


def movement_step(grads: Any, params: Any) -> Any:
  return jax.tree.map(lambda g, w: -(g * w).astype(jnp.float32), grads, params)


def movement_score(ctx: ScoreContext) -> Any:
  return ctx.extras['accumulated']


MAGNITUDE = _register(Scorer('magnitude', magnitude_score))
RANDOM = _register(Scorer('random', random_score))
SNIP = _register(Scorer('snip', snip_score))
GRASP = _register(Scorer('grasp', grasp_score))
SYNFLOW = _register(Scorer('synflow', synflow_score))
TAYLOR = _register(Scorer('taylor', taylor_terms, reduce='square_of_sum', signed=True))
WANDA = _register(Scorer('wanda', wanda_score))
MOVEMENT = _register(Scorer('movement', movement_score, accumulate=movement_step))
