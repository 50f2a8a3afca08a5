"""Layer-wise relevance propagation (LRP) as a criterion for pruning units and filters.

Yeom et al., "Pruning by Explaining: A Novel Criterion for Deep Neural Network Pruning", Pattern
Recognition 2021 (arXiv:1912.08881). The relevance of the target logit is propagated back
through the network, layer by layer, with a rule that redistributes the relevance `R_k` of each
output `z_k = sum_j a_j w_jk + b_k` of a Dense/Conv layer onto its inputs `a_j` (Sec. 3.1):

  'z':         R_j = sum_k a_j w_jk / z_k * R_k
  'epsilon':   R_j = sum_k a_j w_jk / (z_k + eps * sign(z_k)) * R_k
  'alphabeta': R_j = sum_k (alpha * (a_j w_jk)^+ / z_k^+ - beta * (a_j w_jk)^- / z_k^-) * R_k,
               with alpha - beta = 1; alpha=1, beta=0 is the z^+ rule.

For pruning the paper uses a composite (Sec. 3): epsilon for dense layers, alpha-beta (alpha=2,
beta=1 or alpha=1, beta=0) for convolutions; `rule='composite'` does that with `alpha`/`beta`
(default alpha=1, beta=0). The relevance of a unit or filter is its relevance summed over
spatial positions and reference samples (Sec. 3.2). (The authors' code, seulkiyeom/LRP_pruning,
starts from a one-hot output relevance and applies the z^+ rule without biases everywhere.)

Implementation: LRP as a modified gradient. The backward pass carries `s = R / a`, so that the
relevance at any activation `a` is `a * s`. With this quantity the ordinary gradient of ReLU,
max-pooling (to the winner), average pooling and residual sums is exactly the z-rule for those
operations, so only Dense and Conv layers need a custom VJP, installed by intercepting flax
module calls. BatchNorm (running statistics) is folded into the Dense/Conv before it, as is
standard in LRP; the activations must be ReLU (positively homogeneous), so that relevance passes
through them unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

RULES = ('z', 'epsilon', 'alphabeta', 'composite')
_LINEAR = (nn.Dense, nn.Conv)

Path = tuple[str, ...]
Linear = Callable[[jax.Array, jax.Array], jax.Array]  # (inputs, kernel) -> outputs, no bias


@dataclasses.dataclass(frozen=True)
class _Layer:
  shape: jax.ShapeDtypeStruct  # of its output, where relevance is read
  bn: Path | None = None  # the BatchNorm folded into it
  bn_epsilon: float = 0.0


def fold_batch_norm(
  kernel: jax.Array,
  bias: jax.Array | None,
  bn_params: Mapping[str, jax.Array],
  bn_stats: Mapping[str, jax.Array],
  epsilon: float,
) -> tuple[jax.Array, jax.Array]:
  """Folds an eval-mode BatchNorm into the Dense/Conv before it.

  `BN(y) = gamma (y - mu) / sqrt(var + eps) + beta` with `y = x * W + b` is the layer
  `x * (W s) + (b - mu) s + beta`, `s = gamma / sqrt(var + eps)` per output channel.

  Args:
    kernel: the layer kernel, output channels last.
    bias: the layer bias, or None.
    bn_params: the BatchNorm params (`scale`, `bias`, either may be absent).
    bn_stats: the BatchNorm running statistics (`mean`, `var`).
    epsilon: the BatchNorm epsilon.

  Returns:
    The folded `(kernel, bias)`.
  """
  scale = bn_params.get('scale', 1.0) / jnp.sqrt(bn_stats['var'] + epsilon)
  bias = 0.0 if bias is None else bias
  return kernel * scale, (bias - bn_stats['mean']) * scale + bn_params.get('bias', 0.0)


def lrp_relevance_maps(
  model: nn.Module,
  variables: Mapping,
  inputs: jax.Array,
  *,
  rule: str = 'epsilon',
  epsilon: float = 1e-6,
  alpha: float = 1.0,
  beta: float = 0.0,
  bias: bool = True,
  target: int | jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Per-sample LRP relevance at the output of every Dense/Conv layer and at the input.

  Relevance starts as the logit of the target class, zero for the other classes, and is
  propagated back with `rule` (see the module docstring; Yeom et al. 2021, Sec. 3.1). Where
  an output has no positive (negative) contribution, the alpha-beta rule drops its alpha
  (beta) share, as is standard.

  Args:
    model: a flax model called as `model.apply(variables, inputs, train=False)`.
    variables: its variables (`params`, and `batch_stats` if it has BatchNorm).
    inputs: a batch of reference samples.
    rule: 'z' | 'epsilon' | 'alphabeta' | 'composite' (epsilon for Dense, alpha-beta for Conv).
    epsilon: the stabiliser of the epsilon rule.
    alpha: the weight of positive contributions in the alpha-beta rule.
    beta: the weight of negative contributions; `alpha - beta` must be 1.
    bias: include the biases in the denominators `z_k` (they then absorb relevance); with
      False every layer conserves relevance exactly (for the z-rule).
    target: the class to explain, an int or an int array `[batch]`; None = the predicted one.

  Returns:
    `{path: [batch, ..., channels]}` for each Dense/Conv layer, keyed by its module path
    ('conv0', 'stage1_block0/conv0', 'head'), the relevance of its (BatchNorm-folded) outputs;
    and `{'input': [batch, ...]}`, the relevance of each input feature.
  """
  if rule not in RULES:
    raise ValueError(f'rule: expected one of {RULES}, got {rule!r}')
  if rule in ('alphabeta', 'composite') and not math.isclose(alpha - beta, 1.0):
    raise ValueError(f'alpha - beta must be 1, got alpha={alpha}, beta={beta}')
  activation = getattr(getattr(model, 'cfg', None), 'activation', 'relu')
  if activation != 'relu':
    raise ValueError(f'LRP needs ReLU activations, got {activation!r}')
  return _relevance_maps(model, variables, inputs, rule, epsilon, alpha, beta, bias, target)


def lrp_relevance(
  model: nn.Module,
  variables: Mapping,
  inputs: jax.Array,
  *,
  rule: str = 'epsilon',
  epsilon: float = 1e-6,
  alpha: float = 1.0,
  beta: float = 0.0,
  bias: bool = True,
  target: int | jax.Array | None = None,
) -> dict[str, jax.Array]:
  """LRP pruning criterion: the relevance of every unit/filter of every Dense/Conv layer.

  `R_c = sum_{samples} sum_{positions} R_c(sample, position)` for output channel `c`, the
  relevance aggregated over the reference samples `inputs` (Yeom et al. 2021, Sec. 3.2).
  Arguments are those of `lrp_relevance_maps`; the paper's setting is `rule='composite'`.

  Returns:
    `{path: [out_channels]}` for each Dense/Conv layer ('dense0', 'conv3', 'head', ...).
  """
  maps = lrp_relevance_maps(
    model, variables, inputs, rule=rule, epsilon=epsilon, alpha=alpha, beta=beta, bias=bias,
    target=target,
  )  # fmt: skip
  return {k: v.sum(axis=tuple(range(v.ndim - 1))) for k, v in maps.items() if k != 'input'}


def _at(tree: Mapping, path: Path) -> Mapping:
  return functools.reduce(operator.getitem, path, tree)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7))  # all but arrays, positional
def _relevance_maps(model, variables, inputs, rule, epsilon, alpha, beta, bias, target):
  """`lrp_relevance_maps`: a gradient of the target logit with LRP VJPs, read at probes."""
  layers = _trace_layers(model, variables, inputs)
  folded = {layer.bn for layer in layers.values() if layer.bn}

  def layer_rule(module: nn.Module) -> str:
    if rule == 'composite':
      return 'epsilon' if isinstance(module, nn.Dense) else 'alphabeta'
    return rule

  def target_logit(x, probes):
    outputs = {}

    def intercept(next_fun, args, kwargs, context):
      path = context.module.path
      if context.method_name != '__call__' or not (path in layers or path in folded):
        return next_fun(*args, **kwargs)
      if path in folded:  # already applied by the layer before it
        return args[0]
      layer, params = layers[path], _at(variables['params'], path)
      kernel, b = params['kernel'], params.get('bias')
      if layer.bn:
        bn = _at(variables['params'], layer.bn), _at(variables['batch_stats'], layer.bn)
        kernel, b = fold_batch_norm(kernel, b, *bn, layer.bn_epsilon)
      b = jnp.zeros(kernel.shape[-1], kernel.dtype) if b is None else b
      r = layer_rule(context.module)
      propagate = functools.partial(
        _propagate, rule=r, epsilon=epsilon if r == 'epsilon' else 0.0, alpha=alpha, beta=beta,
        bias=bias,
      )  # fmt: skip
      outputs[path] = _lrp_layer(_linear(context.module), propagate)(args[0], kernel, b)
      return outputs[path] + probes[path]

    with nn.intercept_methods(intercept):
      logits = model.apply(variables, x, train=False)
    t = jnp.argmax(logits, axis=-1) if target is None else jnp.asarray(target)
    t = jnp.broadcast_to(t, logits.shape[:1])
    return jnp.take_along_axis(logits, t[:, None], axis=-1).sum(), outputs

  probes = {path: jnp.zeros(layer.shape.shape, layer.shape.dtype) for path, layer in layers.items()}
  grads, outputs = jax.grad(target_logit, argnums=(0, 1), has_aux=True)(inputs, probes)
  maps = {'/'.join(path): outputs[path] * grads[1][path] for path in layers}
  return maps | {'input': inputs * grads[0]}


def _trace_layers(model: nn.Module, variables: Mapping, inputs: jax.Array) -> dict[Path, _Layer]:
  """The Dense/Conv layers by path, each with the BatchNorm that directly follows it."""
  calls, layers = [], {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, (*_LINEAR, nn.BatchNorm)):
      calls.append((context.module, args[0], out))
    return out

  def run(x):
    with nn.intercept_methods(record):
      model.apply(variables, x, train=False)
    for i, (module, x, y) in enumerate(calls):
      if isinstance(module, _LINEAR):
        layers[module.path] = _Layer(jax.ShapeDtypeStruct(y.shape, y.dtype))
      elif i and isinstance(calls[i - 1][0], _LINEAR) and calls[i - 1][2] is x:
        before = calls[i - 1][0].path
        layers[before] = dataclasses.replace(
          layers[before], bn=module.path, bn_epsilon=module.epsilon
        )
      else:
        raise ValueError(f'cannot fold BatchNorm {"/".join(module.path)}: no Dense/Conv before it')

  jax.eval_shape(run, inputs)
  return layers


def _linear(module: nn.Module) -> Linear:
  """The module's linear map `x -> x * kernel` for any kernel (its strides, padding, ...)."""
  # An unbound copy at the root: its path () is no layer's, so the interceptor passes it by.
  bare = module.clone(parent=None, use_bias=False)
  return lambda x, kernel: bare.apply({'params': {'kernel': kernel}}, x)


def _lrp_layer(linear: Linear, propagate: Callable) -> Callable:
  """`x -> x * kernel + bias` whose VJP maps `s = R / z` at the output to `R / x` at the input."""

  @jax.custom_vjp
  def layer(x, kernel, bias):
    return linear(x, kernel) + bias

  def forward(x, kernel, bias):
    z = layer(x, kernel, bias)
    return z, (x, kernel, bias, z)

  def backward(residuals, s):
    x, kernel, bias, z = residuals
    return propagate(linear, x, kernel, bias, z * s), None, None

  layer.defvjp(forward, backward)
  return layer


def _divide(r: jax.Array, z: jax.Array, epsilon: float) -> jax.Array:
  """`r / (z + epsilon * sign(z))`, with sign(0) = 1 and 0 where the denominator is 0."""
  z = z + epsilon * jnp.where(z >= 0, 1.0, -1.0)
  return jnp.where(z == 0, 0.0, r / jnp.where(z == 0, 1.0, z))


def _propagate(
  linear: Linear,
  x: jax.Array,
  kernel: jax.Array,
  b: jax.Array,
  relevance: jax.Array,
  *,
  rule: str,
  epsilon: float,
  alpha: float,
  beta: float,
  bias: bool,
) -> jax.Array:
  """`c` such that `x * c` is the relevance of the inputs `x` under `rule` (Sec. 3.1)."""
  b = b if bias else jnp.zeros_like(b)

  def transpose(kernel, q):  # q -> sum_k w_jk q_k
    return jax.vjp(lambda v: linear(v, kernel), x)[1](q)[0]

  if rule in ('z', 'epsilon'):
    return transpose(kernel, _divide(relevance, linear(x, kernel) + b, epsilon))
  # (a_j w_jk)^+ = a_j^+ w_jk^+ + a_j^- w_jk^-; (a_j w_jk)^- = a_j^+ w_jk^- + a_j^- w_jk^+.
  wp, wn = jnp.maximum(kernel, 0), jnp.minimum(kernel, 0)
  xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
  qp = _divide(alpha * relevance, linear(xp, wp) + linear(xn, wn) + jnp.maximum(b, 0), 0.0)
  qn = _divide(beta * relevance, linear(xp, wn) + linear(xn, wp) + jnp.minimum(b, 0), 0.0)
  return jnp.where(
    x > 0, transpose(wp, qp) - transpose(wn, qn), transpose(wn, qp) - transpose(wp, qn)
  )
