"""Lipschitz-constrained dense layers and a MaxMin / GroupSort MLP classifier to certify.

A `LipschitzDense` keeps its raw `kernel` `[in, out]` as the parameter and multiplies by a
constrained version of it, so the optimizer needs no projection step:

- 'bjorck': the closest orthonormal matrix by Björck & Bowie's (1971) iteration, as in Anil et
  al. (2019, "Sorting out Lipschitz function approximation", Sec. 4):
  `W <- W (3/2 I - 1/2 W^T W)`, from `W / s` with `s = min(||W||_F, √(||W||_1 ||W||_inf))`
  >= `||W||_2` so that every singular value starts in (0, 1]; each step maps `σ -> 3σ/2 - σ³/2`,
  which converges to 1 (quadratically near 1). Gradients flow through the iteration.
- 'spectral': `W / ||W||_2` (Miyato et al., 2018), with the exact top singular value (an SVD;
  the layers here are small) rather than one power-iteration step, so `||W||_2 = 1` exactly.
- 'none': an ordinary dense layer (for the networks whose bounds LipSDP is to tighten).

With 1-Lipschitz activations (MaxMin, GroupSort; `jaxlab.nn.certifiable`) an orthonormal or
spectrally normalised network is 1-Lipschitz in l2 (each layer is), so `margin / √2` is a
certified l2 radius (`jaxlab.robust.certify`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core.errors import ConfigError
from jaxlab.nn import certifiable
from jaxlab.nn.models import MODELS, from_model_config, model_config

CONSTRAINTS = ('none', 'bjorck', 'spectral')
ACTIVATIONS = ('maxmin', 'groupsort')


def bjorck_orthonormalize(w: jax.Array, iters: int = 15) -> jax.Array:
  """The orthonormal matrix nearest `w` `[m, n]`: all singular values -> 1 (see module doc)."""
  if w.ndim != 2:
    raise ValueError(f'w: expected a matrix, got shape {w.shape}')
  frob = jnp.sqrt(jnp.sum(w * w))
  l1_linf = jnp.sqrt(jnp.abs(w).sum(0).max() * jnp.abs(w).sum(1).max())
  w = w / jnp.maximum(jnp.minimum(frob, l1_linf), 1e-12)
  tall = w.shape[0] >= w.shape[1]  # the smaller Gram matrix is the cheaper one

  def step(_, w):
    return 1.5 * w - 0.5 * (w @ (w.T @ w) if tall else (w @ w.T) @ w)

  # A static trip count lowers to a scan: small to compile, and reverse-differentiable.
  return jax.lax.fori_loop(0, iters, step, w)


def spectral_normalize(w: jax.Array) -> jax.Array:
  """`w / ||w||_2`, the exact largest singular value (differentiable through the SVD)."""
  if w.ndim != 2:
    raise ValueError(f'w: expected a matrix, got shape {w.shape}')
  return w / jnp.maximum(jnp.linalg.svd(w, compute_uv=False)[0], 1e-12)


def constrain_kernel(kernel: jax.Array, constraint: str, bjorck_iters: int = 15) -> jax.Array:
  """The kernel the layer multiplies by, for `constraint` in `CONSTRAINTS`."""
  if constraint == 'bjorck':
    return bjorck_orthonormalize(kernel, bjorck_iters)
  if constraint == 'spectral':
    return spectral_normalize(kernel)
  if constraint == 'none':
    return kernel
  raise ValueError(f'constraint: expected one of {CONSTRAINTS}, got {constraint!r}')


class LipschitzDense(nn.Module):
  """`y = x K + b` with `K = constrain_kernel(kernel)`; `kernel` is `[in, out]` as in `nn.Dense`."""

  features: int
  constraint: str = 'bjorck'
  bjorck_iters: int = 15
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Orthogonal initialisation starts the constrained layers at their fixed point.
    init = (
      nn.initializers.lecun_normal() if self.constraint == 'none' else nn.initializers.orthogonal()
    )
    kernel = self.param('kernel', init, (x.shape[-1], self.features))
    y = x @ constrain_kernel(kernel, self.constraint, self.bjorck_iters)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


@dataclasses.dataclass(frozen=True)
class LipschitzMLPConfig:
  num_classes: int
  # `depth` linear layers (the paper's "5FC" has depth 5): depth - 1 hidden layers of `width`,
  # unless `hidden` lists per-layer widths (scalars so that a sweep grid can vary them).
  width: int = 32
  depth: int = 3
  hidden: tuple[int, ...] = ()
  activation: str = 'maxmin'
  group_size: int = 2  # GroupSort's group size (MaxMin is 2)
  constraint: str = 'none'
  bjorck_iters: int = 15
  use_bias: bool = True

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f'model.activation: expected one of {ACTIVATIONS}, got {self.activation!r}')
    if self.constraint not in CONSTRAINTS:
      raise ConfigError(f'model.constraint: expected one of {CONSTRAINTS}, got {self.constraint!r}')
    if self.depth < 2 and not self.hidden:
      raise ConfigError(f'model.depth: expected >= 2 (one hidden layer), got {self.depth}')
    g = 2 if self.activation == 'maxmin' else self.group_size
    widths = self.widths
    if g < 2 or any(not isinstance(w, int) or w < g or w % g for w in widths):
      raise ConfigError(
        f'model.width/hidden: expected positive multiples of the group size {g}, got {widths}'
      )
    if self.bjorck_iters < 1:
      raise ConfigError(f'model.bjorck_iters: expected >= 1, got {self.bjorck_iters}')

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(self.hidden) if self.hidden else (self.width,) * (self.depth - 1)


class LipschitzMLP(nn.Module):
  """`x -> flatten -> [LipschitzDense -> MaxMin/GroupSort] * hidden -> LipschitzDense`."""

  cfg: LipschitzMLPConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    c = self.cfg
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(c.widths):
      x = activation(c)(self._dense(width, f'dense{i}')(x))
    return self._dense(c.num_classes, 'head')(x)

  def _dense(self, features: int, name: str) -> LipschitzDense:
    c = self.cfg
    return LipschitzDense(features, c.constraint, c.bjorck_iters, c.use_bias, name=name)


def activation(cfg: LipschitzMLPConfig):
  """The model's activation from `jaxlab.nn.certifiable`."""
  if cfg.activation == 'maxmin':
    return certifiable.maxmin
  return lambda z: certifiable.groupsort(z, cfg.group_size)


def effective_kernels(cfg: ml_collections.ConfigDict, params: dict) -> list[np.ndarray]:
  """The matrices the trained `lipschitz_mlp` multiplies by, as `[out, in]` (for LipSDP)."""
  num_classes = params['head']['kernel'].shape[1]
  c = from_model_config(LipschitzMLPConfig, cfg, num_classes=num_classes)
  names = [f'dense{i}' for i in range(len(c.widths))] + ['head']
  return [
    np.asarray(constrain_kernel(jnp.asarray(params[n]['kernel']), c.constraint, c.bjorck_iters)).T
    for n in names
  ]


def lipschitz_mlp_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` for `lipschitz_mlp`, every field present (see `LipschitzMLPConfig`)."""
  return model_config(LipschitzMLPConfig, 'lipschitz_mlp', exclude=('num_classes',), **overrides)


@MODELS.register('lipschitz_mlp')
def _build(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return LipschitzMLP(from_model_config(LipschitzMLPConfig, cfg, num_classes=num_classes))
