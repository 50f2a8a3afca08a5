"""Layers and models. Importing this package registers every built-in component."""

from jaxlab.nn import activations, normalization, transformer
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, build_model
from jaxlab.nn.normalization import NORMS
from jaxlab.nn.rnn import NewtonConfig, ParaGRU, ParaLSTM, newton_scan
from jaxlab.nn.transformer import (
  BLOCKS,
  FFNS,
  MIXERS,
  TransformerConfig,
  TransformerLM,
  transformer_config,
)

__all__ = [
  'ACTIVATIONS',
  'BLOCKS',
  'FFNS',
  'MIXERS',
  'NewtonConfig',
  'ParaGRU',
  'ParaLSTM',
  'newton_scan',
  'MODELS',
  'NORMS',
  'TransformerConfig',
  'TransformerLM',
  'activations',
  'build_model',
  'normalization',
  'transformer',
  'transformer_config',
]
