"""The model registry: `config.model.name` -> a builder `(model_config, size) -> Module`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
from ml_collections import ConfigDict

from jaxlab.core.errors import ConfigError
from jaxlab.core.registry import Registry

# `(model_config, size)`: the size the task fixes — the vocabulary of an LM, the number of
# classes of a classifier.
ModelBuilder = Callable[[ConfigDict, int], nn.Module]

MODELS: Registry[ModelBuilder] = Registry('model')


def build_model(cfg: ConfigDict, size: int) -> nn.Module:
  """Builds the model named `cfg.name`; raises ConfigError naming the bad field."""
  return MODELS.get(cfg.name, 'model.name')(cfg, size)


def model_config(cls: type, name: str, exclude: tuple[str, ...] = (), **overrides) -> ConfigDict:
  """`config.model` for the dataclass `cls` registered as `name`: every field present (so each
  can be overridden from the command line), defaults from `cls`, then `overrides`.

  `exclude` names fields the task fills in (e.g. the vocabulary size or number of classes).
  """
  defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in exclude}
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ConfigError(
      f'model.{unknown[0]}: not a field of {name}; expected one of {sorted(defaults)}'
    )
  return ConfigDict({'name': name, **defaults, **overrides})


def from_model_config(cls: type, cfg: ConfigDict, **task_fields):
  """Builds the dataclass `cls` from `config.model` (minus `name`) plus the task's fields.

  Sequences become tuples, so frozen configs stay hashable (Flax module attributes).
  """
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != 'name'}
  known = {f.name for f in dataclasses.fields(cls)} - set(task_fields)
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(
      f'model.{unknown[0]}: not a field of {cfg.name}; expected one of {sorted(known)}'
    )
  return cls(**task_fields, **fields)


# `(model_config) -> [(field, index, kernel path)]`: the config entry that sets the number of
# output channels of the layer whose kernel is at `kernel path` (`index` into a tuple field, or
# None for a scalar field). `jaxlab.sparsity.crop` uses it to write the cropped model's config.
WidthFields = Callable[[ConfigDict], list[tuple[str, int | None, str]]]
WIDTH_FIELDS: Registry[WidthFields] = Registry('model with croppable widths')
