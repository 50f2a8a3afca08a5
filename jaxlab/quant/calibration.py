"""Calibration: what post-training quantization needs to see of a Flax model's activations.

Two things are collected by running the model on a few calibration batches with
`flax.linen.intercept_methods` (the model is not edited; every `nn.Dense` and transformer
`Projection` call is observed on the way in):

- per linear layer, keyed by its kernel's path (`block_0/attention/query/kernel`), the input
  rows `X ∈ R^{n×in}` summarised as `XᵀX` (GPTQ's Hessian `H = 2XᵀX/n`), the per-input-channel
  maximum `max_t |x_t|` (the activation statistic behind PTQ1.61's structured mask, as the
  authors' `generate_act_scale_shift.py` computes it) and the row count `n`;
- per transformer block (`block_0`, ...), the hidden states entering it (block-wise
  reconstruction replays each block on them).

A layer's input rows are its input flattened to `[tokens, contracted dims]`, the same `[in, out]`
matrix view of the kernel that `jaxlab.quant.model.as_matrix` quantizes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.nn.transformer import Projection
from jaxlab.quant.model import KernelView
from jaxlab.quant.tensor import is_quantized

_BLOCK = re.compile(r'block_\d+')


class LayerStats(NamedTuple):
  """Calibration statistics of one linear layer's inputs `X ∈ R^{n×in}`."""

  xtx: jax.Array  # [in, in]  Σ_t x_tᵀ x_t
  absmax: jax.Array  # [in]  max_t |x_t|, per input channel
  count: jax.Array  # []  n, the number of input rows (tokens)

  def hessian(self) -> jax.Array:
    """GPTQ's `H = 2XᵀX / n`."""
    return 2.0 * self.xtx / jnp.maximum(self.count, 1.0)

  def merge(self, other: LayerStats) -> LayerStats:
    return LayerStats(
      self.xtx + other.xtx, jnp.maximum(self.absmax, other.absmax), self.count + other.count
    )


def input_rows(module: nn.Module, x: jax.Array) -> jax.Array | None:
  """A linear module's input as `[tokens, in]` rows (None for other modules).

  `nn.Dense` contracts the last axis; a `Projection` (`einsum(spec, x, kernel)`) contracts the
  letters its kernel shares with `x` but not with the output, in the kernel's order.
  """
  if isinstance(module, nn.Dense):
    return x.reshape(-1, x.shape[-1])
  if isinstance(module, Projection):
    inputs, out = module.spec.split('->')
    x_spec, k_spec = inputs.split(',')
    contracted = ''.join(c for c in k_spec if c in x_spec and c not in out)
    kept = ''.join(c for c in x_spec if c not in contracted)
    x = jnp.einsum(f'{x_spec}->{kept}{contracted}', x)
    return x.reshape(-1, math.prod(x.shape[len(kept) :]))
  return None


def _kernel_name(module: nn.Module) -> str:
  return '/'.join(module.path) + '/kernel'


def collect_layer_stats(
  model: nn.Module, params: Any, batches: Iterable[jax.Array]
) -> dict[str, LayerStats]:
  """Runs `model` on each `[batch, length]` token array and summarises every linear input.

  Args:
    model: a Flax module called as `model.apply({'params': params}, tokens)` (hashable, as
      linen modules with frozen configs are: the jitted pass is compiled once per model).
    params: its parameters (float; dequantize a quantized tree first).
    batches: token arrays, e.g. the `inputs` of a task's batches.

  Returns:
    `{kernel path: LayerStats}` summed over all batches.
  """
  total: dict[str, LayerStats] = {}
  for tokens in batches:
    for name, s in _layer_stats(model, params, jnp.asarray(tokens)).items():
      total[name] = total[name].merge(s) if name in total else s
  return total


@functools.partial(jax.jit, static_argnums=0)
def _layer_stats(model: nn.Module, params: Any, tokens: jax.Array) -> dict[str, LayerStats]:
  found: dict[str, LayerStats] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      rows = input_rows(context.module, args[0])
      if rows is not None:
        rows = rows.astype(jnp.float32)
        new = LayerStats(
          rows.T @ rows, jnp.max(jnp.abs(rows), axis=0), jnp.asarray(rows.shape[0], jnp.float32)
        )
        name = _kernel_name(context.module)
        found[name] = found[name].merge(new) if name in found else new
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({'params': params}, tokens)
  return found


def check_collected(stats: dict[str, LayerStats], paths: Iterable[str]) -> None:
  """Raises a clear error for selected kernels whose layer inputs were not observed."""
  missing = [p for p in paths if p not in stats]
  if missing:
    raise ValueError(
      f'rules: expected kernels of nn.Dense or Projection layers (whose inputs calibration '
      f'observes), got {missing}'
    )


@functools.partial(jax.jit, static_argnums=0)
def collect_block_inputs(model: nn.Module, params: Any, tokens: jax.Array) -> dict[str, jax.Array]:
  """The hidden states `[batch, length, width]` entering each `block_i` of a transformer LM."""
  found: dict[str, jax.Array] = {}

  def interceptor(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name == '__call__' and len(path) == 1 and _BLOCK.fullmatch(path[0]):
      found[path[0]] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    model.apply({'params': params}, tokens)
  return found


def calibration_tokens(batches: Iterable[dict], num_sequences: int) -> np.ndarray:
  """The first `num_sequences` rows of the batches' `inputs`, as one `[n, length]` array."""
  rows, have = [], 0
  for batch in batches:
    take = np.asarray(batch['inputs'])[: num_sequences - have]
    rows.append(take)
    have += take.shape[0]
    if have >= num_sequences:
      break
  if have < num_sequences:
    raise ValueError(
      f'num_sequences: expected at most {have} calibration rows, got {num_sequences}'
    )
  return np.concatenate(rows)


def module_order(name: str) -> tuple[int, str]:
  """Sort key of top-level module names in model order: `block_2` before `block_10`, then the
  rest (`embed`, `unembed`) by name."""
  m = re.fullmatch(r'block_(\d+)', name)
  return (int(m.group(1)), '') if m else (1 << 30, name)


def kernel_at(params: Any, path: str) -> jax.Array:
  """The leaf at a `/`-separated path (`block_0/ffn/wi/kernel`)."""
  node = params
  for key in path.split('/'):
    node = node[key]
  return node


def with_kernels(params: Any, kernels: dict[str, Any]) -> Any:
  """A copy of the nested-dict `params` with the leaves at the given paths replaced.

  A quantized `[in, out]` leaf put at a kernel of rank > 2 is wrapped in
  `jaxlab.quant.model.KernelView` (as `quantize_params` does), so it dequantizes to the
  kernel's own shape; float values must already have the kernel's shape.
  """
  out = dict(params)
  for path, value in kernels.items():
    keys = path.split('/')
    node = out
    for key in keys[:-1]:
      node[key] = dict(node[key])
      node = node[key]
    old = node[keys[-1]]
    if is_quantized(value) and getattr(old, 'ndim', 2) > 2:
      value = KernelView(value, tuple(old.shape))
    node[keys[-1]] = value
  return out
