"""Quantizing the kernels of a Flax model by path rules, and running it with quantized weights.

`quantize_params(params, rules, quantizer)` replaces every kernel whose path string
(`block_0/attention/query/kernel`) fully matches one of the regex `rules` by `quantizer(matrix)`
(any quantized leaf: `quantize`, `binarize`, GPTQ, ...). Kernels of rank > 2 are viewed as
`[in, out]` matrices first (`jaxlab.nn.kernels.as_matrix`: the transformer's `Projection`
kernels `[embed, heads, kv]` contract one axis, `[heads, kv, embed]` (the attention output) two,
a conv kernel all but its last).

Two ways to run the quantized model:
- `dequantize(qparams)` → float params for the ordinary `model.apply` (a rank > 2 kernel's
  leaf is a `KernelView`, dequantized back to the kernel's shape);
- `apply_quantized(model, variables, *args, matmul=...)` (or any apply inside
  `with quantized_matmuls(qparams, matmul)`) keeps the quantized leaves and swaps the matmul
  of every `nn.Dense` and `Projection` whose kernel is quantized, through
  `flax.linen.intercept_methods` (no model edit): `matmul(x2d, leaf) -> y2d`, by default
  dequantize-on-the-fly `x @ ŵ`; `jaxlab.quant.bipolar.bipolar_dense` is the integer one.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxlab.core.plugins import path_name
from jaxlab.nn.kernels import as_matrix
from jaxlab.nn.transformer import Projection
from jaxlab.quant.tensor import dequantize, is_quantized

__all__ = [
  'KernelView',
  'apply_quantized',
  'as_matrix',
  'dequant_matmul',
  'dequantize',
  'kernel_paths',
  'matrix_leaf',
  'quantize_params',
  'quantized_matmuls',
]

DEFAULT_RULES = (r'.*block_\d+/.*/kernel',)  # every kernel of the blocks, not embed/unembed

Quantizer = Callable[[jax.Array], Any]
MatMul = Callable[[jax.Array, Any], jax.Array]


def _compile(rules: Sequence[str]) -> list[re.Pattern]:
  if isinstance(rules, str) or not rules:
    raise ValueError(f'rules: expected a non-empty sequence of regular expressions, got {rules!r}')
  try:
    return [re.compile(r) for r in rules]
  except re.error as e:
    raise ValueError(f'rules: expected regular expressions, got {rules!r} ({e})') from None


def kernel_paths(params: Any, rules: Sequence[str]) -> list[str]:
  """Paths (`block_0/ffn/wi/kernel`) of the `*/kernel` leaves that fully match a rule."""
  regexes = _compile(rules)
  flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_quantized)
  names = [path_name(p) for p, _ in flat]
  return [n for n in names if n.split('/')[-1] == 'kernel' and any(r.fullmatch(n) for r in regexes)]


def quantize_params(params: Any, rules: Sequence[str], quantizer: Quantizer) -> Any:
  """Replaces each kernel matched by `rules` (`kernel_paths`) by `quantizer(as_matrix(kernel))`."""
  selected = set(kernel_paths(params, rules))
  if not selected:
    raise ValueError(f'rules: expected to match at least one kernel, got none for {list(rules)}')

  def quantize_leaf(path, x):
    name = path_name(path)
    if name not in selected:
      return x
    leaf = quantizer(as_matrix(name, x)[0])
    return leaf if x.ndim == 2 else KernelView(leaf, tuple(x.shape))

  return jax.tree_util.tree_map_with_path(quantize_leaf, params)


@struct.dataclass
class KernelView:
  """A quantized `[in, out]` matrix standing for a kernel of rank > 2 (`shape`).

  Follows the quantized-leaf protocol (`dequantize` gives the kernel in its own shape), so
  `dequantize(qparams)` gives params for `model.apply` and `bits_per_weight` counts it once.
  """

  matrix: Any
  shape: tuple[int, ...] = struct.field(pytree_node=False)

  @property
  def num_weights(self) -> int:
    return self.matrix.num_weights

  def storage_bits(self) -> int:
    return self.matrix.storage_bits()

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    return jnp.reshape(self.matrix.dequantize(dtype), self.shape)


def matrix_leaf(leaf: Any) -> Any:
  """The `[in, out]` quantized matrix of a kernel's leaf (unwraps a `KernelView`)."""
  return leaf.matrix if isinstance(leaf, KernelView) else leaf


def dequant_matmul(x: jax.Array, leaf: Any) -> jax.Array:
  """Dequantize-on-the-fly `x @ ŵ` for `x` `[tokens, in]`."""
  return x @ leaf.dequantize(x.dtype)


def _lookup(qparams: Any, path: tuple[str, ...]) -> Any:
  node = qparams
  for key in path:
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return node.get('kernel') if isinstance(node, dict) else None


@contextlib.contextmanager
def quantized_matmuls(qparams: Any, matmul: MatMul = dequant_matmul) -> Iterator[None]:
  """Within the block, every `nn.Dense`/`Projection` whose kernel is quantized in `qparams`
  computes `matmul(x2d, leaf)` on its quantized `[in, out]` leaf instead of its float matmul
  (`flax.linen.intercept_methods`; the model is not edited). Any `model.apply` traced inside
  the block is swapped, e.g. a KV-cache decode step given `qparams` as its params.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, nn.Dense | Projection):
      return next_fun(*args, **kwargs)
    leaf = _lookup(qparams, module.path)
    if not is_quantized(leaf):
      return next_fun(*args, **kwargs)
    leaf = matrix_leaf(leaf)
    (x,) = args
    if isinstance(module, Projection):
      ins, outs = module.spec.split('->')[0].split(',')
      r = sum(ch in ins for ch in outs)
      out_shape = module.shape[r:]
      dtype = module.cfg.compute_dtype
    else:
      r, out_shape, dtype = 1, (module.features,), module.dtype or jnp.float32
    lead = x.shape[: x.ndim - r]
    x2 = x.reshape(math.prod(lead), -1).astype(dtype)
    if x2.shape[1] != leaf.shape[0]:
      raise ValueError(
        f'{"/".join(module.path)}: expected inputs of {leaf.shape[0]} features, got {x.shape}'
      )
    y = matmul(x2, leaf).astype(dtype).reshape(*lead, *out_shape)
    if isinstance(module, nn.Dense) and module.use_bias:
      y = y + module.get_variable('params', 'bias').astype(dtype)
    return y

  with nn.intercept_methods(interceptor):
    yield


def apply_quantized(
  model: nn.Module, variables: dict, *args, matmul: MatMul = dequant_matmul, **kwargs
) -> Any:
  """`model.apply(variables, ...)` with the quantized kernels' matmuls done by
  `matmul(x2d, leaf)` (`quantized_matmuls`); `variables['params']` holds the quantized leaves
  where `quantize_params` put them, so the float path never sees those weights.
  """
  with quantized_matmuls(variables['params'], matmul):
    return model.apply(variables, *args, **kwargs)
