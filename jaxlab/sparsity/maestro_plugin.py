"""The `maestro` plugin: trainable low-rank decomposition (Horváth et al., ICML 2024).

The model is a `factorized_mlp` (`jaxlab.sparsity.factorized`): every dense layer is `U Vᵀ`,
initialised from the SVD of a dense init at full rank, trained with ordered dropout over the
rank (the model samples one layer and a rank `k` per training step). The plugin adds the rest:

  config.model = factorized_mlp_config(hidden=(128, 64))
  config.plugins.maestro = ml_collections.ConfigDict({
    'strength': 0.3,     # λ of the group lasso on rank components, proximal step λ·η_t
    'prune_every': 50,   # progressive shrinking every this many steps
    'threshold': 1e-3,   # importance ‖u_j‖‖v_j‖ at or below which a component is pruned
  })

- `wrap_optimizer`: the train loop's optimizer, then `rank_group_lasso` (the prox with the
  optimizer's learning-rate schedule as step size), then `rank_pruning` (masks in the
  optimizer state, pruned components exactly zero).
- `loss_term` (`full_pass=True`): the cross-entropy of the full-rank model, added to the task's
  loss of the ordered-dropout sub-model. The official training step likewise sums a full pass
  and a sampled pass; OURS: the sampled pass uses the labels, not the full pass's soft
  predictions (the official self-distillation target).
- `metrics`: `maestro/rank_fraction`, the fraction of rank components not pruned.
- `finalize`: removes the pruned components physically (a smaller-rank model, checked to give
  the same logits), evaluates it and its nested sub-models (the leading `⌈p·r⌉` components of
  every layer, what ordered dropout trains), and, with `dense_baseline=True`, trains the dense
  MLP of the same widths identically (same data order, seed, optimizer and steps, through the
  train loop's own `build_training`) and truncates it after training by SVD to exactly the same
  ranks: equal parameter counts at every point.
- `report`: the ranks found per layer, the accuracy-vs-parameters table and plot.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from matplotlib.figure import Figure

from jaxlab.core import sharding
from jaxlab.core.optim import make_schedule
from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.nn import build_model
from jaxlab.sparsity import factorized as fz
from jaxlab.vision import vision_config

MODEL = 'factorized_mlp'


def _accuracy(apply: Callable, variables: Any, eval_batches: list) -> tuple[float, list]:
  """Masked accuracy over the eval batches, and the logits of each batch."""
  fn = jax.jit(apply)
  correct = count = 0.0
  logits = []
  for b in eval_batches:
    y = np.asarray(fn(variables, jnp.asarray(b['inputs'])))
    mask = np.asarray(b.get('mask', np.ones(len(b['labels']))), np.float64)
    correct += float(np.sum((y.argmax(-1) == np.asarray(b['labels'])) * mask))
    count += float(mask.sum())
    logits.append(y)
  return correct / max(count, 1.0), logits


def _num_params(params: Any) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _truncate(params: Any, ranks: Mapping[str, int]) -> Any:
  """The leading `ranks[layer]` components of every factorised layer."""
  pairs = fz.factor_pairs(params)
  return fz.replace_pairs(
    params, {k: (u[:, : ranks[k]], v[:, : ranks[k]]) for k, (u, v) in pairs.items()}
  )


def svd_factorize(dense_params: Any, ranks: Mapping[str, int]) -> Any:
  """Dense `{layer: {kernel, bias}}` parameters as factorised ones, each kernel SVD-truncated
  to `ranks[layer]` (the post-training baseline at the given ranks)."""
  out = {}
  for name, layer in dense_params.items():
    u, v = fz.svd_factors(jnp.asarray(layer['kernel']), ranks[name])
    out[name] = {'u': u, 'v': v, 'bias': layer['bias']}
  return out


def _rank_config(model_cfg: ml_collections.ConfigDict, ranks: Mapping[str, int]):
  cfg = copy.deepcopy(model_cfg)
  names = fz.FactorizedMLPConfig(num_classes=1, hidden=tuple(cfg.hidden)).layer_names()
  cfg.ranks = tuple(ranks[n] for n in names)
  return cfg


def train_dense_baseline(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The dense `mlp` of the same widths trained as `config` trains (no plugins): its task and
  final parameters. Uses the train loop's `build_training` and jitted step."""
  from jaxlab.core.train import build_training  # the loop imports plugins, not the reverse

  dense = copy.deepcopy(config)
  dense.model = vision_config(
    'mlp', hidden=tuple(config.model.hidden), activation=config.model.activation
  )
  dense.plugins = ml_collections.ConfigDict(sort_keys=False)
  t = build_training(dense)
  it = t.task.train_iterator(dense.seed, jax.process_index(), jax.process_count())
  state = t.state
  with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
    for _ in range(dense.train.steps):
      state, _ = t.train_step(state, sharding.shard_batch(next(it), t.mesh, t.rules))
  return t.task, jax.device_get(state.params)


@PLUGINS.register('maestro')
def maestro(
  task: Any,
  config: Any,
  strength: float = 1.0,
  prune_every: int = 50,
  threshold: float = 1e-3,
  full_pass: bool = True,
  dense_baseline: bool = True,
  fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
) -> Plugin:
  """Maestro's group lasso, progressive shrinking and evaluation (see the module docstring).

  Args:
    task: a classification task whose model is `factorized_mlp`.
    config: the run's config (`config.optim` gives the prox's step size schedule).
    strength: λ ≥ 0 of the group lasso `λ Σ_j ‖[u_j; v_j]‖₂` (0: no group lasso).
    prune_every: steps between progressive shrinking steps.
    threshold: the importance `‖u_j‖‖v_j‖` at or below which a component is pruned.
    full_pass: add the full-rank model's cross-entropy to the loss.
    dense_baseline: train the dense MLP and report its SVD truncation at equal parameters.
    fractions: the nested sub-models evaluated after training (leading `⌈p·r⌉` per layer).

  Returns:
    The plugin (optimizer wrapper, loss term, metrics, finalize, report).
  """
  if task.model_config.name != MODEL:
    raise ValueError(
      f'model.name: expected {MODEL!r} (factorised layers), got {task.model_config.name!r}'
    )
  fractions = tuple(float(f) for f in fractions)
  for f in fractions:
    fz.truncation_ranks({}, f)  # validates each fraction
  schedule = make_schedule(config.optim, config.train.steps)
  group_lasso = fz.rank_group_lasso(strength, schedule)  # validates strength
  pruning = fz.rank_pruning(prune_every, threshold)  # validates prune_every, threshold

  def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(tx, group_lasso, pruning)

  def full_rank_loss(params, batch, outputs):
    del outputs  # the ordered-dropout sub-model's logits; the task's loss has them
    logits = task.forward({'params': params}, batch['inputs'], train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
    mask = batch.get('mask')
    mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
    return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)

  def metrics(state) -> dict[str, jax.Array]:
    masks = fz.find_rank_pruning_state(state.opt_state).masks
    kept = sum(jnp.sum(m) for m in masks.values())
    total = sum(m.size for m in masks.values())
    return {'maestro/rank_fraction': kept / total}

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(state.params)
    masks = jax.device_get(fz.find_rank_pruning_state(state.opt_state).masks)
    initial = fz.layer_ranks(params)
    small = fz.prune_ranks(params, masks)
    ranks = fz.layer_ranks(small)
    full_acc, full_logits = _accuracy(task.forward, {'params': params}, eval_batches)

    def factorized_apply(ranks):
      model = build_model(_rank_config(task.model_config, ranks), task.model_size)
      return lambda v, x: model.apply(v, x, train=False)

    acc, logits = _accuracy(factorized_apply(ranks), {'params': small}, eval_batches)
    out = {
      'maestro/eval_accuracy': acc,
      'maestro/params': float(_num_params(small)),
      'maestro/max_logit_diff': max(
        float(np.max(np.abs(a - b))) for a, b in zip(full_logits, logits, strict=True)
      ),
      'maestro/full_eval_accuracy': full_acc,
      'maestro/rank_fraction': sum(ranks.values()) / sum(initial.values()),
    }
    for name in ranks:
      out[f'maestro/rank/{name}'] = float(ranks[name])
      out[f'maestro/initial_rank/{name}'] = float(initial[name])
    for f in fractions:
      r = fz.truncation_ranks(ranks, f)
      sub = _truncate(small, r)
      out[f'nested/{f:g}/eval_accuracy'] = _accuracy(
        factorized_apply(r), {'params': sub}, eval_batches
      )[0]
      out[f'nested/{f:g}/params'] = float(_num_params(sub))
    if dense_baseline:
      dense_task, dense = train_dense_baseline(config)
      out['dense/eval_accuracy'] = _accuracy(dense_task.forward, {'params': dense}, eval_batches)[0]
      out['dense/params'] = float(_num_params(dense))
      svd = svd_factorize(dense, ranks)
      out['svd/eval_accuracy'] = _accuracy(factorized_apply(ranks), {'params': svd}, eval_batches)[
        0
      ]
      out['svd/params'] = float(_num_params(svd))
      for f in fractions:
        r = fz.truncation_ranks(ranks, f)
        out[f'svd/{f:g}/eval_accuracy'] = _accuracy(
          factorized_apply(r), {'params': svd_factorize(dense, r)}, eval_batches
        )[0]
      out['maestro/svd_accuracy_ratio'] = acc / max(out['svd/eval_accuracy'], 1e-9)
      out['maestro/dense_accuracy_ratio'] = acc / max(out['dense/eval_accuracy'], 1e-9)
      out['maestro/dense_params_fraction'] = out['maestro/params'] / out['dense/params']
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    return maestro_report(workdir, final, fractions)

  return Plugin(
    wrap_optimizer=wrap,
    loss_term=full_rank_loss if full_pass else None,
    metrics=metrics,
    finalize=finalize,
    report=report,
  )


def maestro_report(
  workdir: pathlib.Path, final: Mapping[str, float], fractions: Sequence[float]
) -> ReportPart:
  """The ranks found per layer; accuracy vs parameters of Maestro's nested sub-models and of
  the dense model's SVD truncation to the same ranks; a PNG of both curves."""
  layers = sorted(k.split('/', 2)[2] for k in final if k.startswith('maestro/rank/'))
  rows = ['| layer | initial rank | rank found |', '|---|---|---|']
  rows += [
    f'| {n} | {final[f"maestro/initial_rank/{n}"]:.0f} | {final[f"maestro/rank/{n}"]:.0f} |'
    for n in layers
  ]
  ranks = '## Maestro: ranks found\n\n' + '\n'.join(rows)
  has_svd = 'svd/eval_accuracy' in final
  head = '| model | params | eval accuracy |\n|---|---|---|'
  lines = [head]
  if has_svd:
    lines.append(
      f'| dense MLP | {final["dense/params"]:.0f} | {final["dense/eval_accuracy"]:.4f} |'
    )
  lines.append(
    f'| Maestro, ranks found | {final["maestro/params"]:.0f} | '
    f'{final["maestro/eval_accuracy"]:.4f} |'
  )
  if has_svd:
    lines.append(
      f'| dense, SVD-truncated to the same ranks | {final["svd/params"]:.0f} | '
      f'{final["svd/eval_accuracy"]:.4f} |'
    )
  for f in fractions:
    svd = f' (SVD: {final[f"svd/{f:g}/eval_accuracy"]:.4f})' if has_svd else ''
    lines.append(
      f'| Maestro, leading {f:g} of each rank | {final[f"nested/{f:g}/params"]:.0f} | '
      f'{final[f"nested/{f:g}/eval_accuracy"]:.4f}{svd} |'
    )
  table = '## Maestro vs SVD truncation (accuracy vs parameters)\n\n' + '\n'.join(lines)
  plot = _plot(workdir / 'maestro_tradeoff.png', final, fractions, has_svd)
  return ReportPart(sections=[ranks, table], plots=[plot])


def _plot(path: pathlib.Path, final, fractions, has_svd: bool) -> pathlib.Path:
  fig = Figure(figsize=(6, 4), layout='constrained')
  ax = fig.add_subplot()
  xs = [final[f'nested/{f:g}/params'] for f in fractions]
  ax.plot(
    xs,
    [final[f'nested/{f:g}/eval_accuracy'] for f in fractions],
    'o-',
    label='Maestro (nested ranks)',
  )
  if has_svd:
    ax.plot(
      xs,
      [final[f'svd/{f:g}/eval_accuracy'] for f in fractions],
      's--',
      label='dense + SVD truncation, same ranks',
    )
    ax.axhline(final['dense/eval_accuracy'], color='gray', lw=0.8, label='dense')
  ax.set_xlabel('parameters')
  ax.set_ylabel('eval accuracy')
  ax.grid(True, alpha=0.3)
  ax.legend()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path
