"""LoRA adapters as a pure transform of the parameter tree (Hu et al., 2022, Sec. 4.1).

A rank-r adapter on a kernel viewed as an `[in, out]` matrix `W` (`jaxlab.nn.kernels.as_matrix`:
the transformer's `[embed, heads, kv]` query/key/value kernels contract their first axis, the
attention output `[heads, kv, embed]` its first two) is a pair `a ∈ R^{in×r}`, `b ∈ R^{r×out}`,
and the merged kernel is one of (`kind`):

- `'lora'`:  `W + s·ab`, `s = α/r`; `a` Kaiming-uniform, `b = 0`, so training starts at `W`;
- `'mask'`:  `W + s·(ab ⊙ M)`, `M = [W ≠ 0]` (PERP's MaskLoRA, Zimmer et al., 2023, Sec. 3.2):
  the merged update keeps the pruned entries exactly zero;
- `'scale'`: `W ⊙ ab` (PERP's ScaleLoRA): a low-rank multiplicative rescaling of the surviving
  weights; `a = b = 1/√r` so `ab = 1` at the start, and zeros stay zero.

Adapters are a flat dict `{kernel path: {'a': ..., 'b': ...}}` (a pytree beside the frozen
parameters), so training only them is `optax.multi_transform` over `{'params', 'lora'}`
(`trainable_labels`) and sharding them is sharding a small pytree. `merge` and `unmerge` are
pure functions; for `'lora'`/`'mask'` `unmerge(merge(W)) = W` up to one float rounding of the
update (bitwise whenever `W + Δ` is exact), and `'mask'` leaves every zero of `W` bitwise zero.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.core.plugins import flat_paths, path_name
from jaxlab.nn.kernels import as_matrix

KINDS = ('lora', 'mask', 'scale')
# Every kernel of the transformer's blocks (attention q/k/v/out, FFN in/out), not the embedding.
DEFAULT_PATTERN = r'.*block_\d+/.*/kernel'

Adapters = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which kernels get adapters and how they merge.

  Attributes:
    rank: r, the adapters' inner dimension.
    alpha: the scale numerator, `s = α/r` (unused by `'scale'`).
    pattern: a regex fully matching the kernel paths that get adapters.
    kind: `'lora'`, `'mask'` (MaskLoRA) or `'scale'` (ScaleLoRA).
  """

  rank: int = 8
  alpha: float = 16.0
  pattern: str = DEFAULT_PATTERN
  kind: str = 'lora'

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f'lora.rank: expected a positive integer, got {self.rank}')
    if self.kind not in KINDS:
      raise ValueError(f'lora.kind: expected one of {KINDS}, got {self.kind!r}')
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(
        f'lora.pattern: expected a regular expression, got {self.pattern!r} ({e})'
      ) from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def adapted_paths(params: Any, pattern: str) -> list[str]:
  """Paths of the kernels (rank ≥ 2 leaves) whose path fully matches `pattern`."""
  regex = re.compile(pattern)
  return [p for p, x in flat_paths(params).items() if x.ndim >= 2 and regex.fullmatch(p)]


def init_adapters(rng: jax.Array, params: Any, cfg: LoraConfig) -> Adapters:
  """Adapters for every kernel matching `cfg.pattern` (an error if none does)."""
  paths = adapted_paths(params, cfg.pattern)
  if not paths:
    raise ValueError(f'lora.pattern: expected to match at least one kernel, got {cfg.pattern!r}')
  flat = flat_paths(params)
  adapters = {}
  for path, key in zip(paths, jax.random.split(rng, len(paths)), strict=True):
    w, _ = as_matrix(path, flat[path])
    n_in, n_out = w.shape
    if cfg.kind == 'scale':
      a = jnp.full((n_in, cfg.rank), cfg.rank**-0.5, w.dtype)
      b = jnp.full((cfg.rank, n_out), cfg.rank**-0.5, w.dtype)
    else:  # peft's init: Kaiming-uniform a (bound 1/√in), zero b
      bound = 1.0 / math.sqrt(n_in)
      a = jax.random.uniform(key, (n_in, cfg.rank), w.dtype, -bound, bound)
      b = jnp.zeros((cfg.rank, n_out), w.dtype)
    adapters[path] = {'a': a, 'b': b}
  return adapters


def _map_adapted(params: Any, adapters: Mapping[str, Any], fn) -> Any:
  """`fn(path, kernel as [in, out], adapter) -> [in, out]` on each adapted kernel."""
  missing = set(adapters) - set(flat_paths(params))
  if missing:
    raise ValueError(f'adapters: no parameter at {sorted(missing)}')

  def leaf(path, x):
    name = path_name(path)
    if name not in adapters:
      return x
    w, restore = as_matrix(name, x)
    return restore(fn(name, w, adapters[name]).astype(x.dtype))

  return jax.tree_util.tree_map_with_path(leaf, params)


def delta(adapter: Mapping[str, jax.Array], cfg: LoraConfig) -> jax.Array:
  """`s·ab` (`'lora'`, `'mask'` before masking) or `ab` (`'scale'`), as an `[in, out]` matrix."""
  ab = adapter['a'] @ adapter['b']
  return ab if cfg.kind == 'scale' else cfg.scale * ab


def merge(params: Any, adapters: Adapters, cfg: LoraConfig) -> Any:
  """The parameters with every adapter merged into its kernel (see the module docstring)."""

  def merged(path, w, adapter):
    d = delta(adapter, cfg)
    if cfg.kind == 'lora':
      return w + d
    if cfg.kind == 'mask':
      return jnp.where(w != 0, w + d, jnp.zeros_like(w))
    return w * d

  return _map_adapted(params, adapters, merged)


def unmerge(merged_params: Any, adapters: Adapters, cfg: LoraConfig, masks: Any = None) -> Any:
  """The frozen parameters back from merged ones.

  `'lora'`: `W' − s·ab`. `'mask'`: `W' − s·(ab ⊙ M)` with `M` given as `masks` (booleans shaped
  like the parameters, the pruning masks): a merged entry may round to zero, so `M` cannot be
  read back from `W'`. `'scale'`: `W' / ab` where `ab ≠ 0` (exact only up to rounding).
  """
  if cfg.kind == 'mask' and masks is None:
    raise ValueError("unmerge: kind 'mask' needs the pruning masks (masks=...)")
  flat_masks = flat_paths(masks) if masks is not None else {}

  def unmerged(path, w, adapter):
    d = delta(adapter, cfg)
    if cfg.kind == 'lora':
      return w - d
    if cfg.kind == 'mask':
      m, _ = as_matrix(path, flat_masks[path])
      return jnp.where(m, w - d, jnp.zeros_like(w))
    return jnp.where(d != 0, w / jnp.where(d != 0, d, 1), w)

  return _map_adapted(merged_params, adapters, unmerged)


def num_adapter_params(adapters: Adapters) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(adapters))
