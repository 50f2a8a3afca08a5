"""The `prune` plugin: any pruning method of `jaxlab.sparsity` from the config.

  config.plugins.prune = ml_collections.ConfigDict({
    'scorer': 'snip',              # SCORERS: magnitude random snip grasp synflow taylor
                                   #   movement lrp (bayesian with structured_prior)
    'granularity': 'unstructured', # 'unstructured' | 'nm' | 'channel' (zero-invariant groups)
    'allocator': 'global',         # ALLOCATORS: global uniform ratio (nm), or 'precrop'
    'schedule': 'one_shot',        # one_shot | iterative | gradual
    'sparsity': 0.9, 'start': 0, 'end': 0, 'every': 1, 'rounds': 1,
    'start_fraction': -1.0, 'end_fraction': -1.0,  # >= 0: the window in fractions of training
  })

The plugin wraps the optimizer in `masked(...)`, logs `sparsity/params`, `sparsity/fraction`
and `sparsity/avg_params` every step, and after training reports the nonzero parameters, the
contraction FLOPs of the sparse model, and for channel pruning the physically cropped model
(`crop`): its parameters, its FLOPs, its eval accuracy and the largest difference between its
logits and the masked model's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.core.plugins import PLUGINS, Plugin
from jaxlab.nn import build_model
from jaxlab.sparsity import lrp, schedules
from jaxlab.sparsity.crop import crop, cropped_model_config
from jaxlab.sparsity.flops import contraction_flops
from jaxlab.sparsity.groups import (
  Family,
  flat_arrays,
  unstructured_families,
  zero_invariant_families,
)
from jaxlab.sparsity.masking import (
  Pruner,
  apply_masks,
  find_masked_state,
  masked,
  sparsity_metrics,
)
from jaxlab.sparsity.precrop import channel_ratios, kernel_densities
from jaxlab.sparsity.scorers import GRASP_TEMPERATURE, SCORERS, ScoreContext, Scorer

GRANULARITIES = ('unstructured', 'nm', 'channel')


def model_families(task: Any, granularity: str, include: str, exclude: str) -> tuple[Family, ...]:
  """The groups of `task`'s model: one per weight, or its zero-invariant channel groups."""
  if granularity not in GRANULARITIES:
    raise ValueError(f'granularity: expected one of {GRANULARITIES}, got {granularity!r}')
  key = jax.random.key(0)
  variables = jax.eval_shape(
    lambda: nn.unbox({'params': task.init_params(key), **task.init_model_state(key)})
  )
  if granularity != 'channel':
    return unstructured_families(variables['params'], include, exclude)
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  families = zero_invariant_families(
    lambda v, x: task.forward(v, x, train=False), variables, task.example_inputs(2)
  )
  if not families:
    raise ValueError(f'granularity channel: model {task.model_config.name} has no prunable channel')
  return families


WHEN = ('', 'init', 'during', 'after')


def make_schedule(
  kind: str,
  sparsity: float,
  start: int,
  end: int,
  every: int,
  events: int,
  *,
  total_steps: int = 0,
  start_fraction: float = -1.0,
  end_fraction: float = -1.0,
):
  """The `Schedule` named `kind` (one_shot | iterative | gradual).

  With `start_fraction >= 0` the window is given as fractions of the run's `total_steps`
  (`schedules.window_steps`; the `journey` paper's 25% → 75%), overriding `start`/`end`; a
  gradual schedule then prunes about `events` times over it (every
  `(end − start) // (events − 1)` steps) when `events > 1`, else every `every` steps.
  """
  if start_fraction >= 0.0:
    end_fraction = start_fraction if end_fraction < 0.0 else end_fraction
    start, end = schedules.window_steps(start_fraction, end_fraction, total_steps)
    if kind == 'gradual' and events > 1:
      every = max((end - start) // (events - 1), 1)
  if kind == 'one_shot':
    return schedules.one_shot(start, sparsity)
  if kind == 'iterative':
    return schedules.iterative(start, end, events, sparsity)
  if kind == 'gradual':
    return schedules.gradual(start, end, every, sparsity)
  raise ValueError(f"schedule: expected 'one_shot', 'iterative' or 'gradual', got {kind!r}")


def lrp_scorer(task: Any, rule: str) -> Scorer:
  """Per-unit LRP relevance on the scoring batch (Yeom et al., 2021, Sec. 3), true labels as
  the explained outputs."""

  def group_score(ctx: ScoreContext) -> dict[str, jax.Array]:
    batch = ctx.extras['batch']
    variables = {'params': ctx.params, **ctx.extras['model_state']}
    return lrp.lrp_relevance(
      task.model, variables, batch['inputs'], rule=rule, target=batch['labels']
    )

  return Scorer('lrp', group_score=group_score)


def context_fn_for(task: Any, score_examples: int):
  """`(params, extra args) -> ScoreContext` on the first `score_examples` rows of the batch."""
  datafree_state = task.init_model_state(jax.random.key(0))
  input_shape = tuple(task.example_inputs(1).shape[1:])

  def context_fn(params, extra):
    batch = extra['batch']
    if score_examples:
      batch = jax.tree.map(lambda x: x[:score_examples], batch)
    model_state = extra.get('model_state') or {}
    rng = jax.random.key(0)

    def loss_fn(p):
      return task.loss(p, batch, rng, train=True, model_state=model_state)[0]

    def apply_fn(p, x):
      return task.forward({'params': p, **datafree_state}, x, train=False)

    extras = {
      'batch': batch,
      'model_state': model_state,
      'inner_state': extra.get('inner_state'),
      'accumulated': extra.get('accumulated'),
    }
    if 'labels' in batch:

      def grasp_loss_fn(p):
        logits = task.loss(p, batch, rng, train=True, model_state=model_state)[1][1]
        ce = optax.softmax_cross_entropy_with_integer_labels(
          logits / GRASP_TEMPERATURE, batch['labels']
        )
        return ce.mean()

      extras['grasp_loss_fn'] = grasp_loss_fn
    return ScoreContext(params, loss_fn, apply_fn, input_shape, rng, extras)

  return context_fn


def pai_kernel_densities(
  task: Any, seed: int, scorer: str, sparsity: float, include: str, exclude: str, context_fn
) -> tuple[dict[str, float], dict[str, tuple[int, ...]]]:
  """Kept fraction of each kernel when `scorer` prunes the initial weights (those the train loop
  will start from) globally to `sparsity` on the first training batch."""
  from jaxlab.core.train import init_and_step_rngs  # noqa: PLC0415 (the loop imports plugins)

  init_rng, _ = init_and_step_rngs(seed)
  params = nn.unbox(task.init_params(init_rng))
  extra = {
    'batch': next(task.train_iterator(seed, 0, 1)),
    'model_state': task.init_model_state(init_rng),
  }
  families = unstructured_families(params, include, exclude)
  pai = Pruner(families, SCORERS.get(scorer, 'scorer'), 'global', schedules.one_shot(0, sparsity))
  masks = jax.jit(
    lambda p: pai.prune(p, pai.initial_masks(p), sparsity, lambda q: context_fn(q, extra))
  )(params)
  flat = flat_arrays({'params': masks})
  kernels = [m.path for f in families for m in f.members]
  shapes = {k: tuple(v.shape) for k, v in flat_arrays({'params': params}).items()}
  return kernel_densities(flat, kernels), shapes


@PLUGINS.register('prune')
def prune(
  task: Any,
  config: Any,
  scorer: str = 'magnitude',
  granularity: str = 'unstructured',
  allocator: str = 'global',
  schedule: str = 'one_shot',
  sparsity: float = 0.5,
  start: int = 0,
  end: int = 0,
  every: int = 1,
  events: int = 1,
  rounds: int = 1,
  include: str = r'.*kernel',
  exclude: str = '',
  score_members: str = 'producer',
  score_examples: int = 0,
  lrp_rule: str = 'composite',
  n: int = 2,
  m: int = 4,
  densities: dict | None = None,
  min_keep: int = 1,
  pai_scorer: str = 'snip',
  when: str = '',
  normalize: bool = False,
  start_fraction: float = -1.0,
  end_fraction: float = -1.0,
) -> Plugin:
  """Builds the pruner the arguments name (see the module docstring).

  `allocator='precrop'` is PreCropping's allocation (`jaxlab.sparsity.precrop`): the layerwise
  densities `pai_scorer` reaches when it prunes the initial weights globally to `sparsity`;
  with unstructured groups that is the PaI method itself, with channel groups the channel
  ratios that match those densities (which channels go is then `scorer`'s choice).

  `when` sets the schedule from the run's length `T = config.train.steps` (the survey's three
  timings): 'init' = one shot before the first update; 'during' = gradual (cubic) from 0.1 T
  to 0.6 T every T/20 steps; 'after' = one shot at 0.7 T, the rest of training fine-tunes.
  """
  if when not in WHEN:
    raise ValueError(f'when: expected one of {WHEN[1:]} or empty, got {when!r}')
  steps = config.train.steps
  if when == 'init':
    schedule, start = 'one_shot', 0
  elif when == 'during':
    schedule, start, end, every = 'gradual', steps // 10, (6 * steps) // 10, max(steps // 20, 1)
  elif when == 'after':
    schedule, start = 'one_shot', (7 * steps) // 10
  if scorer != 'lrp':
    SCORERS.get(scorer, 'scorer')  # a bad name fails before anything is traced
  if scorer == 'lrp' and granularity != 'channel':
    raise ValueError(f'scorer {scorer}: scores units, so it needs granularity channel')
  families = model_families(task, granularity, include, exclude)
  context_fn = context_fn_for(task, score_examples)
  if allocator == 'precrop':
    if granularity == 'unstructured':
      scorer, allocator = pai_scorer, 'global'
    else:
      dens, shapes = pai_kernel_densities(
        task, config.seed, pai_scorer, sparsity, include, exclude, context_fn
      )
      ratios = channel_ratios(families, dens, shapes)
      allocator, densities = 'ratio', ratios
  chosen = lrp_scorer(task, lrp_rule) if scorer == 'lrp' else SCORERS.get(scorer, 'scorer')
  if granularity == 'nm':
    allocator, sparsity = 'nm', 1.0 - n / m
  kwargs: dict[str, Any] = {'min_keep': min_keep}
  if allocator == 'nm':
    kwargs.update(n=n, m=m)
  if allocator == 'ratio':
    kwargs['densities'] = dict(densities or {})
  pruner = Pruner(
    families,
    chosen,
    allocator,
    make_schedule(
      schedule,
      sparsity,
      start,
      end,
      every,
      events,
      total_steps=steps,
      start_fraction=start_fraction,
      end_fraction=end_fraction,
    ),
    rounds=rounds,
    score_members=score_members,
    normalize=normalize,
    allocator_kwargs=kwargs,
  )

  def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return masked(tx, pruner, context_fn=context_fn)

  def metrics(state) -> dict[str, jax.Array]:
    ms = find_masked_state(state.opt_state)
    return sparsity_metrics(state.params, ms.masks, ms)

  def finalize(task, state, eval_batches) -> dict[str, float]:
    return prune_summary(task, state, pruner, eval_batches)

  return Plugin(wrap_optimizer=wrap, metrics=metrics, finalize=finalize)


def prune_summary(task: Any, state: Any, pruner: Pruner, eval_batches: list) -> dict[str, float]:
  """Final sparsity, FLOPs and (channel groups) the cropped model's size, FLOPs and accuracy."""
  ms = find_masked_state(state.opt_state)
  variables = {
    'params': jax.device_get(apply_masks(state.params, ms.masks)),
    **jax.device_get(state.model_state),
  }
  out = {
    **sparse_summary(task, variables, eval_batches),
    'sparsity/avg_params': float(ms.param_steps / max(int(ms.count), 1)),
  }
  if pruner.families[0].members[0].axis is None:
    return out
  keeps = {
    f.name: np.asarray(a) for f, a in zip(pruner.families, pruner.alive(ms.masks), strict=True)
  }
  return {**out, **crop_summary(task, variables, pruner.families, keeps, eval_batches)}


def sparse_summary(task: Any, variables: dict, eval_batches: list) -> dict[str, float]:
  """Nonzero and total parameters, and dense vs sparse contraction FLOPs of one example."""
  params = variables['params']
  x = jnp.asarray(eval_batches[0]['inputs'][:1])
  forward = jax.jit(lambda v, x: task.forward(v, x, train=False))
  nonzero = sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(params))
  total = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  return {
    'sparsity/nonzero_params': float(nonzero),
    'sparsity/total_params': float(total),
    'sparsity/final_fraction': 1.0 - nonzero / total,
    'flops/dense': contraction_flops(forward, variables, x, sparse=False),
    'flops/sparse': contraction_flops(forward, variables, x, sparse=True),
  }


def crop_summary(
  task: Any, variables: dict, families: tuple[Family, ...], keeps: dict, eval_batches: list
) -> dict[str, float]:
  """Crops `variables` to the kept groups and compares the cropped model with the full one on
  the eval batches: its parameters, FLOPs, accuracy and largest logit difference."""
  forward = jax.jit(lambda v, x: task.forward(v, x, train=False))
  small = crop(variables, families, keeps)
  small_model = build_model(cropped_model_config(task.model_config, small), task.model_size)
  small_fwd = jax.jit(lambda v, x: small_model.apply(v, x, train=False))
  correct = count = max_diff = 0.0
  for b in eval_batches:
    xb, mask = jnp.asarray(b['inputs']), np.asarray(b.get('mask', np.ones(len(b['labels']))))
    y_full, y_small = np.asarray(forward(variables, xb)), np.asarray(small_fwd(small, xb))
    max_diff = max(max_diff, float(np.max(np.abs(y_full - y_small))))
    correct += float(np.sum((y_small.argmax(-1) == np.asarray(b['labels'])) * mask))
    count += float(mask.sum())
  x = jnp.asarray(eval_batches[0]['inputs'][:1])
  return {
    'crop/params': float(sum(int(np.size(p)) for p in jax.tree.leaves(small['params']))),
    'crop/flops': contraction_flops(small_fwd, small, x, sparse=False),
    'crop/eval_accuracy': correct / max(count, 1.0),
    'crop/max_logit_diff': max_diff,
    'crop/groups_kept': float(sum(int(np.sum(k)) for k in keeps.values())),
    'crop/groups_total': float(sum(f.size for f in families)),
  }
