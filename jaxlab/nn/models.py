"""The model registry: `config.model.name` -> a builder `(model_config, vocab_size) -> Module`."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import ml_collections

from jaxlab.core.registry import Registry

ModelBuilder = Callable[[ml_collections.ConfigDict, int], nn.Module]

MODELS: Registry[ModelBuilder] = Registry('model')


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int) -> nn.Module:
  """Builds the model named `cfg.name`; raises ConfigError naming the bad field."""
  return MODELS.get(cfg.name, 'model.name')(cfg, vocab_size)
