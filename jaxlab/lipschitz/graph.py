"""Trace a Flax model into a chain `affine → activation → … → affine` for bound propagation.

`trace_chain(apply, x0)` interprets the jaxpr of `apply(x)` and follows the values that depend
on `x`. Between two activations every primitive on that path must be affine in `x` (dense and
conv layers, bias adds, reshapes, pooling by sums); each maximal affine segment is materialised
as a dense matrix `W` and offset `b` with `jax.jacfwd` on the flattened vectors (exact, since the
segment is affine). An activation is either a `custom_jvp_call` of a registered certifiable
activation (`jaxlab.nn.certifiable`, found by the primal's name, so a user-registered
activation is recognised the same way), `jax.nn.relu`, `jnp.maximum(z, 0)`, or the `tanh` and
`logistic` primitives. Its other arguments (a leaky slope, a Householder vector) must not
depend on `x`; they are evaluated and become the rule's parameters.

This is the forward graph of Shi et al. (NeurIPS 2022, Sec. 3.1); the backward (Jacobian)
graph is implied by the chain: `g ← Wᵀg` per affine map, `g ← J_σ(z)ᵀ g` per activation.
Residual connections (a value depending on two different activation outputs) are rejected
with a clear error rather than bounded unsoundly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxlab.nn import certifiable

Array = jax.Array

# Primitives affine in every operand that depends on x (all such operands must share a segment).
_AFFINE = {
  'add',
  'add_any',
  'sub',
  'neg',
  'reshape',
  'broadcast_in_dim',
  'transpose',
  'squeeze',
  'expand_dims',
  'reduce_sum',
  'convert_element_type',
  'copy',
  'copy_p',
  'slice',
  'concatenate',
  'pad',
  'reduce_window_sum',
  'rev',
  'cumsum',
  'reduce_precision',
}
# Bilinear primitives: affine when exactly one operand depends on x (the other is a weight).
_BILINEAR = {'mul', 'dot_general', 'conv_general_dilated'}
# Affine only in the leading operand (divisor, indices, predicates are constants).
_LEADING = {'div': 0, 'dynamic_slice': 0, 'gather': 0}
_CALLS = {'pjit', 'jit', 'closed_call', 'core_call', 'remat', 'checkpoint'}
_PRIMITIVE_ACTS = {'tanh': 'tanh', 'logistic': 'sigmoid'}


@dataclasses.dataclass(frozen=True)
class Activation:
  """One activation node: the certifiable activation and its constant parameters."""

  act: certifiable.Certifiable
  params: tuple[Array, ...]

  def __call__(self, z: Array) -> Array:
    return self.act.fn(z, *self.params)

  def slope(self, lb: Array, ub: Array) -> tuple[Array, Array]:
    return self.act.slope(lb, ub, *self.params)

  @property
  def group_size(self) -> int | None:
    return self.act.group_size_of(*self.params) if self.act.grouped else None


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Chain:
  """`f(x) = W_n σ_{n−1}(… σ_0(W_0 x + b_0) …) + b_n` on flattened vectors.

  Attributes:
    weights: `W_k`, shape `(out_k, in_k)`.
    biases: `b_k`, shape `(out_k,)`.
    acts: the `n` activations between the affine maps.
    in_shape: shape of the model input (unflattened).
  """

  weights: tuple[Array, ...]
  biases: tuple[Array, ...]
  acts: tuple[Activation, ...]
  in_shape: tuple[int, ...]

  def tree_flatten(self):
    params = tuple(a.params for a in self.acts)
    return (self.weights, self.biases, params), (tuple(a.act for a in self.acts), self.in_shape)

  @classmethod
  def tree_unflatten(cls, aux, children):
    weights, biases, params = children
    acts = tuple(Activation(a, tuple(p)) for a, p in zip(aux[0], params, strict=False))
    return cls(tuple(weights), tuple(biases), acts, aux[1])

  def __call__(self, x: Array) -> Array:
    """Evaluates the chain on one flattened input (also what the lower bounds differentiate)."""
    h = x.reshape(-1)
    for k, act in enumerate(self.acts):
      h = act(self.weights[k] @ h + self.biases[k])
    return self.weights[-1] @ h + self.biases[-1]


class _Stop(Exception):
  """Raised inside a traced segment once its end value is known."""

  def __init__(self, value):
    self.value = value


def _recognise(eqn, invals) -> tuple[certifiable.Certifiable, int] | None:
  """(activation, index of its x operand) if `eqn` is a certifiable activation call."""
  name = eqn.primitive.name
  if name in _PRIMITIVE_ACTS:
    return certifiable.CERTIFIABLE[_PRIMITIVE_ACTS[name]], 0
  if name == 'custom_jvp_call':
    info = eqn.params['call_jaxpr'].jaxpr.debug_info
    src = getattr(info, 'func_src_info', '') or ''
    fname = src.split(' at ')[0]
    act = certifiable.lookup(fname)
    if act is not None:
      return act, 0
    if fname == 'relu' and 'jax' in src and 'nn' in src:  # jax.nn.relu
      return certifiable.CERTIFIABLE['relu'], 0
  if name == 'max' and len(invals) == 2:  # jnp.maximum(z, 0)
    for i, (_, dep) in enumerate(invals):
      other_val, other_dep = invals[1 - i]
      if dep is not None and other_dep is None and not np.any(np.asarray(other_val)):
        return certifiable.CERTIFIABLE['relu'], i
  return None


class _Interpreter:
  """Evaluates a jaxpr on `(value, dep)` pairs; `dep` is the index of the activation output
  (0 = the input x, k = output of activation k−1) a value depends on, or None."""

  def __init__(self, overrides: dict[int, Array], stop: int | None, abstract: bool = False):
    # `abstract`: only find the structure; values on the input path are shapes, not computed.
    self.overrides, self.stop, self.abstract = overrides, stop, abstract
    self.acts: list[Activation] = []
    self.widths: list[int] = []

  def run(self, jaxpr, consts, args):
    env = {}

    def read(v):
      return (v.val, None) if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=False):
      env[v] = (c, None)
    for v, a in zip(jaxpr.invars, args, strict=False):
      env[v] = a
    for eqn in jaxpr.eqns:
      outs = self.apply(eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs, strict=False):
        env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def apply(self, eqn, invals):
    deps = {d for _, d in invals if d is not None}
    name = eqn.primitive.name
    if not deps:
      params = eqn.primitive.get_bind_params(eqn.params)
      out = eqn.primitive.bind(*[v for v, _ in invals], **params)
      outs = out if eqn.primitive.multiple_results else [out]
      return [(o, None) for o in outs]
    found = _recognise(eqn, invals)
    if found is not None:
      return [self.activation(eqn, invals, *found)]
    if name in _CALLS:
      sub = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
      closed = sub if hasattr(sub, 'consts') else None
      inner = closed.jaxpr if closed is not None else sub
      return self.run(inner, closed.consts if closed is not None else [], invals)
    if len(deps) > 1:
      raise ValueError(
        f'{name}: expected a chain of layers, got a value depending on the outputs of two '
        'different activations (residual connections are not supported)'
      )
    (dep,) = deps
    dependent = [i for i, (_, d) in enumerate(invals) if d is not None]
    affine = (
      name in _AFFINE
      or (name in _BILINEAR and len(dependent) == 1)
      or (name in _LEADING and dependent == [_LEADING[name]])
      or (name == 'select_n' and 0 not in dependent)
    )
    if not affine:
      raise ValueError(
        f'{name}: expected an affine primitive or a certifiable activation '
        f'({sorted(certifiable.CERTIFIABLE)}, jaxlab.nn.certifiable) on the path from the input, '
        f'got {name!r}'
      )
    if self.abstract:
      return [(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype), dep) for v in eqn.outvars]
    out = eqn.primitive.bind(*[v for v, _ in invals], **eqn.primitive.get_bind_params(eqn.params))
    outs = out if eqn.primitive.multiple_results else [out]
    return [(o, dep) for o in outs]

  def activation(self, eqn, invals, act, pos):
    (z, dep) = invals[pos]
    rest = [iv for i, iv in enumerate(invals) if i != pos]
    if any(d is not None for _, d in rest):
      raise ValueError(f'{act.name}: expected parameters that do not depend on the input')
    k = len(self.acts)
    if dep != k:
      raise ValueError(
        f'{act.name}: expected a chain of layers, got an activation input depending on '
        f'activation output {dep} instead of {k} (residual connections are not supported)'
      )
    if k == self.stop:
      raise _Stop(z)
    params = tuple(jnp.asarray(v) for v, _ in rest) if eqn.primitive.name != 'max' else ()
    self.acts.append(Activation(act, params))
    self.widths.append(int(np.prod(z.shape)))
    if self.abstract:
      if act.name == 'leaky_relu' and not 0 <= float(params[0]) <= 1:
        raise ValueError(f'leaky_relu: expected a slope in [0, 1], got {float(params[0])}')
      return (jax.ShapeDtypeStruct(z.shape, z.dtype), k + 1)
    if k in self.overrides:
      return (self.overrides[k].reshape(jnp.shape(z)).astype(z.dtype), k + 1)
    return (act.fn(z, *params), k + 1)


def trace_chain(apply: Callable[[Array], Array], x0: Array) -> Chain:
  """Traces `apply` at `x0` into a `Chain`.

  Args:
    apply: the model as a function of its input, e.g. `lambda x: model.apply(params, x)`.
    x0: an input of the shape `apply` takes (a leading batch axis of size one is fine: the
      chain works on flattened vectors).

  Returns:
    The chain; `chain(x0) == apply(x0).reshape(-1)` up to round-off.

  Raises:
    ValueError: a primitive on the input path that is neither affine nor a certifiable
      activation, or a graph that is not a chain.
  """
  x0 = jnp.asarray(x0)
  closed = jax.make_jaxpr(apply)(x0)
  if len(closed.out_avals) != 1:
    raise ValueError(f'apply: expected one output array, got {len(closed.out_avals)}')
  # Structure first, without computing anything on the input path.
  interp = _Interpreter({}, None, abstract=True)
  x_shape = jax.ShapeDtypeStruct(x0.shape, x0.dtype)
  ((_, dep),) = interp.run(closed.jaxpr, closed.consts, [(x_shape, 0)])
  acts, widths = tuple(interp.acts), [x0.size, *interp.widths]
  if dep != len(acts):
    raise ValueError('apply: expected the output to depend on the last activation, it does not')

  def segment(k, h):
    """Input of activation k (or the output) as a function of activation k−1's output h."""
    stop = k if k < len(acts) else None
    x, overrides = (h.reshape(x0.shape), {}) if k == 0 else (x0, {k - 1: h})
    try:
      ((out, _),) = _Interpreter(overrides, stop).run(closed.jaxpr, closed.consts, [(x, 0)])
    except _Stop as s:
      return s.value.reshape(-1)
    return out.reshape(-1)

  @jax.jit
  def affine_maps():
    # Each segment is affine in h, so its Jacobian at 0 and its value at 0 describe it exactly.
    maps = []
    for k in range(len(acts) + 1):
      h0 = jnp.zeros((widths[k],), x0.dtype)
      maps.append((jax.jacfwd(functools.partial(segment, k))(h0), segment(k, h0)))
    return maps

  maps = affine_maps()
  return Chain(tuple(w for w, _ in maps), tuple(b for _, b in maps), acts, tuple(x0.shape))
