"""Small image classifiers: MLP, VGG-style CNN with BatchNorm, ResNet with basic blocks.

These are the models the pruning, compression and certification papers use, scaled down. Every
model is called as `model.apply(variables, images, train=bool)` on float `[B, H, W, C]` images
and returns logits `[B, num_classes]`; with `train=True` BatchNorm uses batch statistics and
updates `batch_stats` (pass `mutable=['batch_stats']`). Layers have fixed, readable names
(`dense0`, `conv0`, `bn0`, `stage1_block0`, `head`) so pruning groups and path rules can refer
to them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core.errors import ConfigError
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, WIDTH_FIELDS, from_model_config, model_config


def _check_widths(field: str, widths: tuple[int, ...]) -> None:
  if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
    raise ConfigError(f'model.{field}: expected a non-empty tuple of positive ints, got {widths}')


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  num_classes: int
  hidden: tuple[int, ...] = (256, 128)
  activation: str = 'relu'

  def __post_init__(self):
    _check_widths('hidden', tuple(self.hidden))
    ACTIVATIONS.get(self.activation, 'model.activation')


class MLP(nn.Module):
  """`x -> flatten -> [Dense -> act] * len(hidden) -> Dense(num_classes)`."""

  cfg: MLPConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    act = ACTIVATIONS.get(self.cfg.activation, 'model.activation')
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.cfg.hidden):
      x = act(nn.Dense(width, name=f'dense{i}')(x))
    return nn.Dense(self.cfg.num_classes, name='head')(x)


@dataclasses.dataclass(frozen=True)
class VGGConfig:
  num_classes: int
  # Width of every 3x3 conv layer, in order (per layer, so pruning can crop each one).
  channels: tuple[int, ...] = (16, 16, 32, 32, 64, 64)
  pool_after: tuple[int, ...] = (1, 3)  # 2x2 max-pool after these conv layers
  batch_norm: bool = True
  activation: str = 'relu'

  def __post_init__(self):
    _check_widths('channels', tuple(self.channels))
    bad = [i for i in self.pool_after if not 0 <= i < len(self.channels)]
    if bad:
      raise ConfigError(
        f'model.pool_after: expected conv layer indices in [0, {len(self.channels)}), got {bad}'
      )
    ACTIVATIONS.get(self.activation, 'model.activation')


class VGG(nn.Module):
  """VGG (Simonyan & Zisserman, 2015), small: `[3x3 conv -> BN -> act]` layers with a 2x2
  max-pool after the layers in `pool_after` (while the image is at least 2 pixels), global
  average pooling and one dense head."""

  cfg: VGGConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = ACTIVATIONS.get(self.cfg.activation, 'model.activation')
    for layer, width in enumerate(self.cfg.channels):
      x = nn.Conv(width, (3, 3), use_bias=not self.cfg.batch_norm, name=f'conv{layer}')(x)
      if self.cfg.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f'bn{layer}')(x)
      x = act(x)
      if layer in self.cfg.pool_after and min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.cfg.num_classes, name='head')(x)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  num_classes: int
  widths: tuple[int, ...] = (16, 32, 64)  # stage widths; stages after the first stride 2
  blocks_per_stage: int = 1
  # Width of each block's inner conv (between its two convs), blocks in order; () = the width
  # of its stage. Per block, so structured pruning can crop each one.
  inner_widths: tuple[int, ...] = ()
  activation: str = 'relu'

  def __post_init__(self):
    _check_widths('widths', tuple(self.widths))
    if self.blocks_per_stage < 1:
      raise ConfigError(f'model.blocks_per_stage: expected >= 1, got {self.blocks_per_stage}')
    blocks = len(self.widths) * self.blocks_per_stage
    if self.inner_widths:
      _check_widths('inner_widths', tuple(self.inner_widths))
      if len(self.inner_widths) != blocks:
        raise ConfigError(
          f'model.inner_widths: expected {blocks} entries (one per block) or none, '
          f'got {len(self.inner_widths)}'
        )
    ACTIVATIONS.get(self.activation, 'model.activation')

  def inner_width(self, stage: int, block: int) -> int:
    if not self.inner_widths:
      return self.widths[stage]
    return self.inner_widths[stage * self.blocks_per_stage + block]


class BasicBlock(nn.Module):
  """`act(x' + BN(conv(act(BN(conv(x))))))`, `x'` = x or a strided 1x1 conv + BN (He et al.).

  The first conv has `inner` output channels, the second `width` (the residual stream).
  """

  width: int
  inner: int
  stride: int
  activation: str

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = ACTIVATIONS.get(self.activation, 'model.activation')
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)  # noqa: E731
    s = (self.stride, self.stride)
    y = nn.Conv(self.inner, (3, 3), strides=s, use_bias=False, name='conv0')(x)
    y = act(bn('bn0')(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False, name='conv1')(y)
    y = bn('bn1')(y)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = nn.Conv(self.width, (1, 1), strides=s, use_bias=False, name='shortcut_conv')(x)
      x = bn('shortcut_bn')(x)
    return act(x + y)


class ResNet(nn.Module):
  """ResNet with basic blocks (He et al., 2016), small: 3x3 stem conv + BN, stages of blocks,
  global average pooling, dense head."""

  cfg: ResNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = ACTIVATIONS.get(self.cfg.activation, 'model.activation')
    x = nn.Conv(self.cfg.widths[0], (3, 3), use_bias=False, name='stem_conv')(x)
    x = act(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='stem_bn')(x))
    for stage, width in enumerate(self.cfg.widths):
      for block in range(self.cfg.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 and min(x.shape[1:3]) >= 2 else 1
        inner = self.cfg.inner_width(stage, block)
        x = BasicBlock(
          width, inner, stride, self.cfg.activation, name=f'stage{stage}_block{block}'
        )(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.cfg.num_classes, name='head')(x)


_CONFIGS = {'mlp': MLPConfig, 'vgg': VGGConfig, 'resnet': ResNetConfig}
_MODULES = {'mlp': MLP, 'vgg': VGG, 'resnet': ResNet}


def vision_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model` for the vision model `name` ('mlp' | 'vgg' | 'resnet'), every field present."""
  if name not in _CONFIGS:
    raise ConfigError(f'model.name: expected one of {sorted(_CONFIGS)}, got {name!r}')
  return model_config(_CONFIGS[name], name, exclude=('num_classes',), **overrides)


def _builder(name: str):
  def build(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    return _MODULES[name](from_model_config(_CONFIGS[name], cfg, num_classes=num_classes))

  return build


for _name in _CONFIGS:
  MODELS.register(_name)(_builder(_name))


@WIDTH_FIELDS.register('mlp')
def _mlp_widths(cfg: ml_collections.ConfigDict) -> list[tuple[str, int | None, str]]:
  return [('hidden', i, f'dense{i}/kernel') for i in range(len(cfg.hidden))]


@WIDTH_FIELDS.register('vgg')
def _vgg_widths(cfg: ml_collections.ConfigDict) -> list[tuple[str, int | None, str]]:
  return [('channels', i, f'conv{i}/kernel') for i in range(len(cfg.channels))]


@WIDTH_FIELDS.register('resnet')
def _resnet_widths(cfg: ml_collections.ConfigDict) -> list[tuple[str, int | None, str]]:
  stages, blocks = len(cfg.widths), cfg.blocks_per_stage
  fields = [('widths', s, f'stage{s}_block0/conv1/kernel') for s in range(stages)]
  for s in range(stages):
    for b in range(blocks):
      fields.append(('inner_widths', s * blocks + b, f'stage{s}_block{b}/conv0/kernel'))
  return fields
