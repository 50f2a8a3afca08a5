"""Layers and models. Importing this package registers every built-in component."""

from jaxlab.nn import (
  activations,
  certifiable,
  diagnostics,
  kernels,
  lipschitz_layers,
  min_attention,
  normalization,
  pangu,
  polycom,
  transformer,
)
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, build_model
from jaxlab.nn.normalization import NORMS
from jaxlab.nn.rnn import NewtonConfig, ParaGRU, ParaLSTM, newton_scan
from jaxlab.nn.transformer import (
  BLOCKS,
  FFNS,
  MIXERS,
  AttentionInputs,
  TransformerConfig,
  TransformerLM,
  transformer_config,
)

__all__ = [
  'ACTIVATIONS',
  'AttentionInputs',
  'BLOCKS',
  'FFNS',
  'MIXERS',
  'MODELS',
  'NORMS',
  'NewtonConfig',
  'ParaGRU',
  'ParaLSTM',
  'TransformerConfig',
  'TransformerLM',
  'activations',
  'build_model',
  'certifiable',
  'diagnostics',
  'kernels',
  'lipschitz_layers',
  'min_attention',
  'newton_scan',
  'normalization',
  'pangu',
  'polycom',
  'transformer',
  'transformer_config',
]
