"""FLOPs of a model's forward pass: XLA's count, and the contraction count with sparse kernels.

Pruning papers count the multiply-adds of the contractions (dense and conv layers) and scale
each layer's by the density of its kernel (a zero weight does no work in a sparse kernel).
`contraction_flops` reads them off the jaxpr — `2 · (output entries) · (contracted length)` per
`dot_general`/`conv_general_dilated`, times the nonzero fraction of the kernel when the kernel
is a parameter — so elementwise work (activations, normalisation) is not counted. `xla_flops`
is XLA's own cost analysis of the compiled function (everything, dense).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxlab.sparsity.groups import flat_arrays, unflatten_like


def xla_flops(fn: Callable, *args) -> float:
  """FLOPs of `jax.jit(fn)(*args)` from XLA's cost analysis of the compiled program."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, list):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def contraction_flops(
  apply_fn: Callable[[Mapping[str, Any], jax.Array], jax.Array],
  variables: Mapping[str, Any],
  inputs: jax.Array,
  *,
  sparse: bool = True,
) -> float:
  """Multiply-add FLOPs of every contraction in `apply_fn(variables, inputs)`.

  With `sparse=True` a contraction with a parameter kernel counts only the kernel's nonzero
  fraction (the FLOPs of a sparse kernel; 1 for a dense one).
  """
  flat = flat_arrays(variables)
  density = {
    k: float(np.count_nonzero(np.asarray(v))) / max(np.size(v), 1) for k, v in flat.items()
  }
  closed = jax.make_jaxpr(lambda leaves, x: apply_fn(unflatten_like(variables, leaves), x))(
    flat, inputs
  )
  sources = dict(zip(closed.jaxpr.invars, [*sorted(flat), None], strict=True))
  return _count(closed.jaxpr, sources, density if sparse else {})


def _count(jaxpr, sources: dict, density: Mapping[str, float]) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    sub = next((eqn.params[k] for k in ('jaxpr', 'call_jaxpr') if k in eqn.params), None)
    if sub is not None:
      sub = sub.jaxpr if hasattr(sub, 'jaxpr') else sub
      inner = {
        v: sources.get(a) if not isinstance(a, jex_core.Literal) else None
        for v, a in zip(sub.invars, eqn.invars, strict=False)
      }
      total += _count(sub, inner, density)
      continue
    name = eqn.primitive.name
    if name not in ('dot_general', 'conv_general_dilated'):
      continue
    lhs, rhs = eqn.invars
    out = eqn.outvars[0].aval
    if name == 'dot_general':
      (lc, _), _ = eqn.params['dimension_numbers']
      contracted = int(np.prod([lhs.aval.shape[i] for i in lc]))
    else:
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      # in-features times the kernel window (out-features are the output's channels)
      contracted = int(np.prod([rhs.aval.shape[i] for i in rhs_spec[1:]]))
    flops = 2.0 * int(np.prod(out.shape)) * contracted
    path = sources.get(rhs) if not isinstance(rhs, jex_core.Literal) else None
    total += flops * density.get(path, 1.0)
  return total
