"""Layers and models. Importing this package registers every built-in component."""

from jaxlab.nn import activations, normalization, transformer
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, build_model
from jaxlab.nn.normalization import NORMS
from jaxlab.nn.transformer import (
  ATTENTIONS,
  BLOCKS,
  FFNS,
  TransformerConfig,
  TransformerLM,
)

__all__ = [
  'ACTIVATIONS',
  'ATTENTIONS',
  'BLOCKS',
  'FFNS',
  'MODELS',
  'NORMS',
  'TransformerConfig',
  'TransformerLM',
  'activations',
  'build_model',
  'normalization',
  'transformer',
]
