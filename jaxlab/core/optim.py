"""Optimizer and learning-rate schedule from `config.optim` (all optax)."""

from __future__ import annotations

import types
from collections.abc import Callable

import jax
import ml_collections
import optax

from jaxlab.core.errors import ConfigError
from jaxlab.core.registry import Registry

OptimizerFactory = Callable[
  [ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation
]

OPTIMIZERS: Registry[OptimizerFactory] = Registry('optimizer')


def _decay_mask(params):
  """Weight decay on weight matrices only: not on gains, biases or scalars (GPT-2 / LLaMA
  practice). A leaf is decayed when it has >= 2 dimensions and its name has no 'bias'/'scale'
  (so a `[gates, D]` bias block is not decayed)."""

  def decayed(path, p):
    name = str(getattr(path[-1], 'key', path[-1])) if path else ''
    return p.ndim >= 2 and 'bias' not in name and 'scale' not in name

  return jax.tree_util.tree_map_with_path(decayed, params)


@OPTIMIZERS.register('adamw')
def _adamw(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=_decay_mask)


@OPTIMIZERS.register('adam')
def _adam(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)


@OPTIMIZERS.register('sgd')
def _sgd(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.sgd(lr, momentum=o.b1 or None)


@OPTIMIZERS.register('lion')
def _lion(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=_decay_mask)


def make_schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine/linear decay to
  `lr * end_lr_fraction` at `total_steps`, or constant."""
  end = o.lr * o.end_lr_fraction
  decay_steps = max(total_steps - o.warmup_steps, 1)
  if o.schedule == 'cosine':
    after = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_fraction)
  elif o.schedule == 'linear':
    after = optax.linear_schedule(o.lr, end, decay_steps)
  elif o.schedule == 'constant':
    after = optax.constant_schedule(o.lr)
  else:
    raise ConfigError(
      f"optim.schedule: expected one of 'cosine', 'linear', 'constant', got {o.schedule!r}"
    )
  warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
  return optax.join_schedules([warmup, after], [o.warmup_steps])


def make_optimizer(
  o: ml_collections.ConfigDict, total_steps: int, **values: float | jax.Array
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`clip_by_global_norm(clip_norm)` then the named optimizer with the schedule.

  `values` replace fields of `o` (`lr=`, `weight_decay=`) and may be traced arrays: inside
  `jax.vmap` they build one optimizer per replica of a vectorised sweep (`jaxlab.core.vectorized`).
  """
  if values:
    unknown = sorted(set(values) - set(o))
    if unknown:
      raise ConfigError(f'optim.{unknown[0]}: no such field; expected one of {sorted(o)}')
    o = types.SimpleNamespace(**{**o.to_dict(), **values})
  schedule = make_schedule(o, total_steps)
  tx = OPTIMIZERS.get(o.name, 'optim.name')(o, schedule)
  if o.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  return tx, schedule
