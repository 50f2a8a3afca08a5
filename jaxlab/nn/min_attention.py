"""Attention-only transformer classifiers reduced to a minimum (Bermeitinger et al., 2024,
"Reducing the Transformer Architecture to a Minimum", arXiv:2410.13732, Sec. 3).

A small bidirectional encoder (pre-norm, learned positions, mean pooling, linear head) over image
patches (`[B, H, W, C]` float inputs, `model.patch_size`) or byte tokens (`[B, T]` int inputs).
`model.reduction` picks how much of the classic layer is kept; each step keeps the previous ones:

  'none'       multi-head attention `softmax(X W_q (X W_k)ᵀ / sqrt(d_h)) X W_v`, heads joined by
               `W_o`, plus the MLP (the original architecture)
  'no_mlp'     (a) the same without the MLP
  'collapsed'  (b) one matrix `W_qk = W_q W_kᵀ` per head (`[d, d]`) and no `W_v`, `W_o`: the
               values are the inputs, `head_h = softmax(X W_qk^h Xᵀ / sqrt(d_h)) X`, and the
               layer returns the mean of the heads
  'symmetric'  (c) as (b) with `W_qk^h` symmetric, stored as its `d(d+1)/2` upper triangle, so
               the similarity `X W_qk Xᵀ` is symmetric (a token is as similar to `u` as `u` is
               to it)

Per layer of width d with h heads: 'none' has 4d² (attention) + 2·d·mlp_dim (MLP) weights;
'no_mlp' 4d²; 'collapsed' h·d²; 'symmetric' h·d(d+1)/2. Registered in `MODELS` as
'min_transformer'; the classification task trains it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core.errors import ConfigError
from jaxlab.nn.models import MODELS, from_model_config, model_config

REDUCTIONS = ('none', 'no_mlp', 'collapsed', 'symmetric')


@dataclasses.dataclass(frozen=True)
class MinTransformerConfig:
  """Hyperparameters of `MinTransformer` (the `config.model` fields, minus `name`)."""

  num_classes: int
  width: int = 64
  depth: int = 2
  heads: int = 2
  mlp_dim: int = 256
  reduction: str = 'none'
  patch_size: int = 2  # image inputs: square patches of this many pixels a side
  vocab_size: int = 256  # token inputs: ids in [0, vocab_size) (bytes)
  max_len: int = 256  # most tokens or patches per example (learned position embeddings)

  def __post_init__(self):
    for f in ('num_classes', 'width', 'depth', 'heads', 'mlp_dim', 'patch_size', 'vocab_size'):
      if getattr(self, f) <= 0:
        raise ConfigError(f'model.{f}: expected a positive integer, got {getattr(self, f)!r}')
    if self.max_len <= 0:
      raise ConfigError(f'model.max_len: expected a positive integer, got {self.max_len!r}')
    if self.width % self.heads:
      raise ConfigError(
        f'model.width: expected a multiple of model.heads={self.heads}, got {self.width}'
      )
    if self.reduction not in REDUCTIONS:
      raise ConfigError(f'model.reduction: expected one of {REDUCTIONS}, got {self.reduction!r}')

  @property
  def head_dim(self) -> int:
    return self.width // self.heads


def symmetric_from_triangle(tri: jax.Array, d: int) -> jax.Array:
  """`[..., d(d+1)/2]` upper-triangle entries (row-major) -> symmetric `[..., d, d]`."""
  rows, cols = np.triu_indices(d)
  upper = jnp.zeros((*tri.shape[:-1], d, d), tri.dtype).at[..., rows, cols].set(tri)
  return upper + jnp.swapaxes(upper, -1, -2) - upper * jnp.eye(d, dtype=tri.dtype)


def collapsed_scores(x: jax.Array, w_qk: jax.Array, head_dim: int) -> jax.Array:
  """`X W_qk^h Xᵀ / sqrt(head_dim)`: `[B, T, d]`, `[h, d, d]` -> `[B, h, T, T]`."""
  return jnp.einsum('btd,nde,bse->bnts', x, w_qk, x) / np.sqrt(head_dim)


class MinAttention(nn.Module):
  """Bidirectional self-attention in the form `reduction` asks for (see the module doc)."""

  cfg: MinTransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    d, h, dh = cfg.width, cfg.heads, cfg.head_dim
    init = nn.initializers.lecun_normal()
    if cfg.reduction in ('none', 'no_mlp'):
      q, k, v = (jnp.einsum('btd,dnh->btnh', x, self.param(n, init, (d, h, dh))) for n in 'qkv')
      out = jax.nn.dot_product_attention(q, k, v)  # scale 1/sqrt(dh)
      return jnp.einsum('btnh,nhd->btd', out, self.param('o', init, (h, dh, d)))
    if cfg.reduction == 'collapsed':
      w_qk = self.param('qk', nn.initializers.normal(d**-0.5), (h, d, d))
    else:
      tri = self.param('qk_upper', nn.initializers.normal(d**-0.5), (h, d * (d + 1) // 2))
      w_qk = symmetric_from_triangle(tri, d)
    weights = jax.nn.softmax(collapsed_scores(x, w_qk, dh), axis=-1)
    return jnp.einsum('bnts,bsd->btd', weights, x) / h


class MinBlock(nn.Module):
  """`x += attention(norm(x))`, then `x += mlp(norm(x))` unless the MLP is reduced away."""

  cfg: MinTransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = x + MinAttention(cfg, name='attention')(nn.LayerNorm(name='attention_norm')(x))
    if cfg.reduction == 'none':
      h = nn.Dense(cfg.mlp_dim, name='mlp_in')(nn.LayerNorm(name='mlp_norm')(x))
      x = x + nn.Dense(cfg.width, name='mlp_out')(jax.nn.gelu(h))
    return x


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """`[B, H, W, C]` -> `[B, (H/p)(W/p), p·p·C]` non-overlapping patches, row-major."""
  b, hgt, wid, c = images.shape
  if hgt % patch or wid % patch:
    raise ValueError(
      f'model.patch_size: expected a divisor of the image size {hgt}x{wid}, got {patch}'
    )
  x = images.reshape(b, hgt // patch, patch, wid // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch * patch * c)


class MinTransformer(nn.Module):
  """Images `[B, H, W, C]` (patches) or tokens `[B, T]` -> logits `[B, num_classes]`."""

  cfg: MinTransformerConfig

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no dropout, no batch statistics
    cfg = self.cfg
    if jnp.issubdtype(inputs.dtype, jnp.integer) and inputs.ndim == 2:
      x = nn.Embed(cfg.vocab_size, cfg.width, name='embed')(inputs)
    elif inputs.ndim == 4:
      x = nn.Dense(cfg.width, name='embed')(patchify(inputs, cfg.patch_size))
    else:
      raise ValueError(
        f'MinTransformer: expected int tokens [B, T] or images [B, H, W, C], got '
        f'{inputs.dtype} {inputs.shape}'
      )
    if x.shape[1] > cfg.max_len:
      raise ValueError(
        f'model.max_len: expected at least {x.shape[1]} positions, got {cfg.max_len}'
      )
    pos = self.param('position', nn.initializers.normal(0.02), (cfg.max_len, cfg.width))
    x = x + pos[: x.shape[1]]
    for i in range(cfg.depth):
      x = MinBlock(cfg, name=f'block_{i}')(x)
    x = nn.LayerNorm(name='final_norm')(x).mean(axis=1)
    return nn.Dense(cfg.num_classes, name='head')(x)


def min_transformer_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` for 'min_transformer' with every field present, then `overrides`."""
  return model_config(
    MinTransformerConfig, 'min_transformer', exclude=('num_classes',), **overrides
  )


@MODELS.register('min_transformer')
def build_min_transformer(cfg: ml_collections.ConfigDict, num_classes: int) -> MinTransformer:
  return MinTransformer(from_model_config(MinTransformerConfig, cfg, num_classes=num_classes))
