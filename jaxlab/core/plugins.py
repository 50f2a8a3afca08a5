"""Plugins: how a method changes training without editing the train loop.

A plugin may wrap the optimizer (a pruning mask, a low-rank projection, quantization-aware
updates are all `optax.GradientTransformation -> optax.GradientTransformation`) and/or add a
loss term computed from the parameters, the batch and the model's outputs. An experiment turns
plugins on by name with their keyword arguments:

  config.plugins.z_loss = ml_collections.ConfigDict({'coeff': 1e-4})
  config.plugins.freeze = ml_collections.ConfigDict({'pattern': r'embed/.*'})

Plugins apply in the order they were added to `config.plugins` (each wraps the previous
optimizer; `base_config()` builds it with `sort_keys=False`, so the order is kept). The
optimizer's `update` receives the batch and the model state as extra keyword arguments
(`batch=`, `model_state=`), for transforms that score parameters on data (pruning criteria).
A factory that takes a `task` (or `config`) argument is given the task (or the config). A plugin may
also log scalars computed from the train state every step, and add final metrics after
training (e.g. the size and accuracy of a cropped model), and contribute sections (tables) and
PNGs to the run's `report.md` from the final metrics.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.core.errors import ConfigError
from jaxlab.core.registry import Registry

LossTerm = Callable[[Any, dict, jax.Array], jax.Array]  # (params, batch, outputs) -> scalar
StateMetrics = Callable[[Any], dict[str, jax.Array]]  # (train state) -> scalars, jittable
# (task, final train state, eval batches) -> final metrics, on the host after training
Finalize = Callable[[Any, Any, list], dict[str, float]]


class ReportPart(NamedTuple):
  """What a plugin adds to `report.md`: markdown sections (each starting `## ...`) and PNGs."""

  sections: list[str]
  plots: list[pathlib.Path]


# (workdir, final metrics) -> report additions, on the host after `finalize`
ReportHook = Callable[[pathlib.Path, Mapping[str, float]], ReportPart]


@dataclasses.dataclass(frozen=True)
class Plugin:
  """What a method adds to training. Both parts are optional."""

  wrap_optimizer: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = (
    None
  )
  loss_term: LossTerm | None = None
  metrics: StateMetrics | None = None
  finalize: Finalize | None = None
  report: ReportHook | None = None


PLUGINS: Registry[Callable[..., Plugin]] = Registry('plugin')


def build_plugins(config: ml_collections.ConfigDict, task: Any = None) -> dict[str, Plugin]:
  """Instantiates `config.plugins`; a bad name or keyword raises ConfigError naming it.

  A factory with a `task` or `config` parameter gets the task or the whole config.
  """
  plugins = {}
  for name, kwargs in config.plugins.items():
    factory = PLUGINS.get(name, f'plugins.{name}')
    wanted = inspect.signature(factory).parameters
    extra = {k: v for k, v in (('task', task), ('config', config)) if k in wanted}
    try:
      plugins[name] = factory(**kwargs.to_dict(), **extra)
    except (TypeError, ValueError) as e:
      raise ConfigError(f'plugins.{name}: bad arguments {kwargs.to_dict()} ({e})') from None
  return plugins


def path_name(path: tuple) -> str:
  """`(DictKey('block_0'), DictKey('ffn'), ...)` -> `'block_0/ffn/...'`."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def flat_paths(tree: Any) -> dict[str, Any]:
  """`{'block_0/ffn/wi/kernel': leaf, ...}` for every leaf of `tree`."""
  return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@PLUGINS.register('z_loss')
def z_loss(coeff: float = 1e-4) -> Plugin:
  """Auxiliary `coeff * mean(log Z)^2` on the softmax normaliser `log Z = logsumexp(logits)`.

  Keeps logits from drifting (PaLM, Chowdhery et al., 2022, Sec. 5).
  """

  def term(params, batch, logits):
    del params, batch
    return coeff * jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))

  return Plugin(loss_term=term)


@PLUGINS.register('freeze')
def freeze(pattern: str) -> Plugin:
  """Parameters whose path (`block_0/ffn/wi/kernel`) matches `pattern` get no update at all."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ConfigError(
      f'plugins.freeze.pattern: expected a regular expression, got {pattern!r} ({e})'
    ) from None

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda p, _: 'frozen' if regex.fullmatch(path_name(p)) else 'trained', params
    )

  def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)

  return Plugin(wrap_optimizer=wrap)
