"""Pruning groups: what is removed together.

A `Family` is a set of equally sized, parallel groups: group `i` of a family is the slice at
index `i` along one axis of each of its `Member` arrays. The output channels of a conv layer
form a family whose members are the filter (`conv3/kernel`, last axis), the BatchNorm entries
that follow (`bn3/scale`, `bn3/bias`, `bn3/mean`, `bn3/var`) and the next layer's input slice
(`conv4/kernel`, axis 2). Unstructured pruning is the special case of one family per array with
one group per entry (`Member.axis is None`).

`zero_invariant_families` finds the families of any model automatically (OTOv3's "zero-invariant
groups", Chen et al., 2023, Sec. 3.1): it traces the model to a jaxpr and follows every array
axis through the computation, uniting axes that must index the same channel: the two sides of a
contraction, the operands of elementwise ops (biases, BatchNorm scales and statistics, residual
additions), reshapes (a flatten tiles a channel axis over the spatial positions, recorded as
`Member.tile`). An axis that is mixed within itself (a reduction over it, a normalisation over
channels, the model's inputs and outputs, an op the tracer does not know) cannot be pruned.
Zeroing every member slice of a group then leaves the function unchanged, and so does removing
the group physically (`jaxlab.sparsity.crop`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxlab.core.plugins import flat_paths, path_name

Variables = Mapping[str, Any]  # {'params': ..., 'batch_stats': ...}


@dataclasses.dataclass(frozen=True)
class Member:
  """Group `i` of the family is `array[..., i, ...]` along `axis` of the array at `path`.

  `path` is `'<collection>/<module path>/<name>'` (e.g. `'params/conv3/kernel'`). With
  `tile > 1` the axis has `tile * size` entries viewed row-major as `[tile, size]` (a flatten
  of `[H, W, C]`): group `i` is every entry `j` with `j % size == i`. `axis=None` means each
  entry is its own group (unstructured). `producer` marks the axis a layer writes its output
  channels to (a kernel's last axis); classic filter pruning scores a group by those only.
  """

  path: str
  axis: int | None
  tile: int = 1
  producer: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
  """`size` parallel groups; `name` is the first producing layer (e.g. `'conv3'`)."""

  name: str
  size: int
  members: tuple[Member, ...]

  @property
  def param_members(self) -> tuple[Member, ...]:
    return tuple(m for m in self.members if m.path.startswith('params/'))


# ------------------------------------------------------------------------------ tree access


def flat_arrays(variables: Variables) -> dict[str, jax.Array]:
  """`{'params/conv3/kernel': array, ...}` for every leaf of a variables dict."""
  return flat_paths(dict(variables))


def unflatten_like(variables: Variables, flat: Mapping[str, Any]) -> dict:
  """The tree of `variables` with each leaf replaced by `flat[path]`."""
  return jax.tree_util.tree_map_with_path(lambda p, _: flat[path_name(p)], dict(variables))


def _view(x: jax.Array, m: Member, size: int) -> tuple[jax.Array, int]:
  """`x` with the member axis split to `[tile, size]`; returns the view and the group axis."""
  axis = m.axis % x.ndim
  shape = (*x.shape[:axis], m.tile, size, *x.shape[axis + 1 :])
  return x.reshape(shape), axis + 1


def member_slices(x: jax.Array, m: Member, size: int) -> jax.Array:
  """`[size, k]`: row `i` holds every entry of `x` in group `i`."""
  if m.axis is None:
    return x.reshape(size, -1)
  v, axis = _view(x, m, size)
  return jnp.moveaxis(v, axis, 0).reshape(size, -1)


def group_rows(flat: Mapping[str, jax.Array], family: Family, members: tuple[Member, ...]):
  """`[size, k]`: the slices of `members` (arrays in `flat`) of each group, side by side."""
  return jnp.concatenate([member_slices(flat[m.path], m, family.size) for m in members], axis=1)


def group_matrix(
  variables: Variables, family: Family, *, params_only: bool = True, producers_only: bool = False
) -> jax.Array:
  """`[size, k]`: all entries of each group of `family` side by side (for norms, projections);
  with `producers_only`, only the slices its layers write (a neuron's incoming weights)."""
  members = family.param_members if params_only else family.members
  if producers_only:
    members = tuple(m for m in members if m.producer)
  return group_rows(flat_arrays(variables), family, members)


def broadcast_keep(keep: jax.Array, shape: tuple[int, ...], m: Member) -> jax.Array:
  """A `[size]` vector of group values broadcast to an array of `shape` along member `m`."""
  size = keep.shape[0]
  if m.axis is None:
    return keep.reshape(shape)
  axis = m.axis % len(shape)
  view = [1] * (len(shape) + 1)
  view[axis + 1] = size
  full = (*shape[:axis], m.tile, size, *shape[axis + 1 :])
  return jnp.broadcast_to(keep.reshape(view), full).reshape(shape)


def group_sizes(variables: Variables, family: Family) -> np.ndarray:
  """Number of parameters in each group of `family` (an entry in two groups counts in both)."""
  flat = flat_arrays(variables)
  per_group = sum(flat[m.path].size // family.size for m in family.param_members)
  return np.full(family.size, per_group, np.int64)


# ------------------------------------------------------------------------------ unstructured


def unstructured_families(
  params: Any, include: str = r'.*kernel', exclude: str = ''
) -> tuple[Family, ...]:
  """One family per parameter array whose path matches `include` (and not `exclude`), one
  group per entry: plain weight pruning."""
  inc, exc = re.compile(include), re.compile(exclude) if exclude else None
  families = []
  for path, x in flat_arrays({'params': params}).items():
    local = path.removeprefix('params/')
    if inc.fullmatch(local) and not (exc and exc.fullmatch(local)):
      families.append(Family(local, int(np.prod(x.shape)), (Member(path, None, 1, True),)))
  if not families:
    raise ValueError(f'no parameter path matches include={include!r} (exclude={exclude!r})')
  return tuple(families)


# ------------------------------------------------------------------------------ discovery


class _AxisSets:
  """Weighted union-find over axis labels. `find(a) -> (root, tile)`: the axis of label `a`
  is the root's axis tiled `tile` times (`size(a) = tile * size(root)`)."""

  def __init__(self):
    self.parent: list[int] = []
    self.tile: list[int] = []
    self.size: list[int] = []
    self.blocked: list[bool] = []

  def new(self, size: int, blocked: bool = False) -> int:
    self.parent.append(len(self.parent))
    self.tile.append(1)
    self.size.append(size)
    self.blocked.append(blocked or size <= 1)
    return len(self.parent) - 1

  def find(self, a: int) -> tuple[int, int]:
    tile = 1
    while self.parent[a] != a:
      tile *= self.tile[a]
      a = self.parent[a]
    return a, tile

  def block(self, a: int) -> None:
    self.blocked[self.find(a)[0]] = True

  def unite(self, a: tuple[int, int], b: tuple[int, int]) -> None:
    """Declares axis `a` (label, extra tile) and axis `b` to index the same entries."""
    (ra, ta), (rb, tb) = self.find(a[0]), self.find(b[0])
    ta, tb = ta * a[1], tb * b[1]
    if ra == rb:
      if ta != tb:
        self.blocked[ra] = True
      return
    if ta == tb:
      self.parent[rb], self.tile[rb] = ra, 1
    elif ta > tb and ta % tb == 0:  # rb's axis is ra's tiled ta/tb times
      self.parent[rb], self.tile[rb] = ra, ta // tb
    elif tb > ta and tb % ta == 0:
      self.parent[ra], self.tile[ra] = rb, tb // ta
    else:
      self.blocked[ra] = self.blocked[rb] = True
      return
    root = self.find(ra)[0]
    self.blocked[root] = self.blocked[root] or self.blocked[ra] or self.blocked[rb]


Axis = tuple[int, int]  # (label, tile)
_ELEMENTWISE = {
  'add', 'sub', 'mul', 'div', 'max', 'min', 'neg', 'exp', 'exp2', 'log', 'log1p', 'tanh',
  'logistic', 'rsqrt', 'sqrt', 'abs', 'sign', 'pow', 'integer_pow', 'square', 'erf', 'erfc',
  'select_n', 'convert_element_type', 'stop_gradient', 'clamp', 'ge', 'gt', 'le', 'lt', 'eq',
  'ne', 'and', 'or', 'not', 'sin', 'cos', 'expm1', 'copy', 'copy_p', 'reduce_precision',
  'add_any', 'nextafter', 'cbrt', 'is_finite', 'floor', 'ceil', 'round', 'atan2', 'rem',
  'erf_inv', 'tan', 'logaddexp',
}  # fmt: skip
_CALLS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')


class _Tracer:
  """Follows axis labels through a jaxpr (see the module docstring)."""

  def __init__(self):
    self.sets = _AxisSets()
    self.env: dict[Any, tuple[Axis, ...]] = {}
    self.producers: list[int] = []  # labels of axes a contraction writes

  def fresh(self, shape, blocked: bool = False) -> tuple[Axis, ...]:
    return tuple((self.sets.new(int(d), blocked), 1) for d in shape)

  def read(self, v) -> tuple[Axis, ...] | None:
    if isinstance(v, jex_core.Literal):
      return None
    return self.env[v]

  def run(self, jaxpr, args: list[tuple[Axis, ...] | None]) -> list[tuple[Axis, ...] | None]:
    for v, a in zip(jaxpr.invars, args, strict=True):
      self.env[v] = a if a is not None else self.fresh(v.aval.shape)
    for eqn in jaxpr.eqns:
      ins = [self.read(v) for v in eqn.invars]
      outs = self.equation(eqn, ins)
      for v, a in zip(eqn.outvars, outs, strict=True):
        self.env[v] = a
    return [self.read(v) if not isinstance(v, jex_core.Literal) else None for v in jaxpr.outvars]

  def block_all(self, axes) -> None:
    for a in axes or ():
      self.sets.block(a[0])

  def equation(self, eqn, ins):
    name, p = eqn.primitive.name, eqn.params
    out_shapes = [v.aval.shape for v in eqn.outvars]
    for key in _CALLS:
      if key in p:
        sub = p[key]
        sub = sub.jaxpr if hasattr(sub, 'jaxpr') else sub
        if len(sub.invars) != len(ins):  # e.g. custom_vjp with extra residual inputs
          break
        return self.run(sub, ins)
    if name in _ELEMENTWISE:
      out = self.fresh(out_shapes[0])
      for a, v in zip(ins, eqn.invars, strict=True):
        if a is None or len(v.aval.shape) != len(out_shapes[0]):
          continue  # a scalar
        for ai, oi, n, n_out in zip(a, out, v.aval.shape, out_shapes[0], strict=True):
          if n == n_out:  # size-1 axes broadcast
            self.sets.unite(ai, oi)
      return [out] * len(out_shapes)
    if name == 'broadcast_in_dim':
      out = list(self.fresh(out_shapes[0]))
      src_shape = eqn.invars[0].aval.shape
      for j, d in enumerate(p['broadcast_dimensions']):
        if ins[0] is not None and src_shape[j] == out_shapes[0][d]:
          self.sets.unite(ins[0][j], out[d])
      return [tuple(out)]
    if name == 'reshape':
      return [self.reshape(ins[0], eqn.invars[0].aval.shape, out_shapes[0])]
    if name == 'squeeze':
      keep = [i for i in range(len(ins[0])) if i not in {d % len(ins[0]) for d in p['dimensions']}]
      return [tuple(ins[0][i] for i in keep)]
    if name == 'expand_dims':
      return [self.reshape(ins[0], eqn.invars[0].aval.shape, out_shapes[0])]
    if name == 'transpose':
      return [tuple(ins[0][i] for i in p['permutation'])]
    if name in ('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'argmax', 'argmin'):
      axes = set(p['axes'])
      for i in axes:
        self.sets.block(ins[0][i][0])
      return [tuple(a for i, a in enumerate(ins[0]) if i not in axes)]
    if name.startswith('reduce_window') or name == 'cumsum':
      return [self.window(eqn, ins[0], out_shapes[0])]
    if name == 'dot_general':
      return [self.dot_general(eqn, ins)]
    if name == 'conv_general_dilated':
      return [self.conv(eqn, ins)]
    # Unknown op: everything it touches is mixed in ways we do not follow.
    for a in ins:
      self.block_all(a)
    return [self.fresh(s, blocked=True) for s in out_shapes]

  def reshape(self, a, src, dst) -> tuple[Axis, ...]:
    """Maps axes through a reshape by matching runs of equal products; a merged run keeps the
    label of its last (fastest) non-unit axis, tiled by the product of the others."""
    out = list(self.fresh(dst))
    i = j = 0
    while i < len(src) and j < len(dst):
      i2, j2, ps, pd = i + 1, j + 1, src[i], dst[j]
      while ps != pd:
        if ps < pd:
          ps *= src[i2]
          i2 += 1
        else:
          pd *= dst[j2]
          j2 += 1
      s_run = [k for k in range(i, i2) if src[k] > 1]
      d_run = [k for k in range(j, j2) if dst[k] > 1]
      if len(s_run) == 1 and len(d_run) == 1:
        self.sets.unite(a[s_run[0]], out[d_run[0]])
      elif len(d_run) == 1 and s_run:  # merge: [.., H, W, C] -> [.., H*W*C]
        last = s_run[-1]
        self.sets.unite((a[last][0], a[last][1] * (ps // src[last])), out[d_run[0]])
        for k in s_run[:-1]:
          self.sets.block(a[k][0])
      else:  # a split: the split axis is mixed with its neighbours
        for k in s_run:
          self.sets.block(a[k][0])
        for k in d_run:
          self.sets.block(out[k][0])
      i, j = i2, j2
    return tuple(out)

  def window(self, eqn, a, out_shape) -> tuple[Axis, ...]:
    dims = eqn.params.get('window_dimensions', (1,) * len(a))
    out = list(self.fresh(out_shape))
    for i, (ai, w) in enumerate(zip(a, dims, strict=True)):
      if w == 1 and eqn.invars[0].aval.shape[i] == out_shape[i]:
        self.sets.unite(ai, out[i])
      else:
        self.sets.block(ai[0])
    return tuple(out)

  def dot_general(self, eqn, ins) -> tuple[Axis, ...]:
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    lhs, rhs = ins
    for i, j in zip(lc, rc, strict=True):
      self.sets.unite(lhs[i], rhs[j])
    for i, j in zip(lb, rb, strict=True):
      self.sets.unite(lhs[i], rhs[j])
    lfree = [i for i in range(len(lhs)) if i not in lc and i not in lb]
    rfree = [j for j in range(len(rhs)) if j not in rc and j not in rb]
    out = self.fresh(eqn.outvars[0].aval.shape)
    src = [lhs[i] for i in lb] + [lhs[i] for i in lfree] + [rhs[j] for j in rfree]
    for s, o in zip(src, out, strict=True):
      self.sets.unite(s, o)
    self.producers += [rhs[j][0] for j in rfree]
    return out

  def conv(self, eqn, ins) -> tuple[Axis, ...]:
    lhs, rhs = ins
    dn = eqn.params['dimension_numbers']
    (lb, lf, *ls), (ro, ri, *rs), (ob, of, *os_) = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out = list(self.fresh(eqn.outvars[0].aval.shape))
    if eqn.params['feature_group_count'] != 1 or eqn.params['batch_group_count'] != 1:
      self.block_all(lhs)
      self.block_all(rhs)
      return tuple(self.fresh(eqn.outvars[0].aval.shape, blocked=True))
    self.sets.unite(lhs[lf], rhs[ri])
    self.sets.unite(lhs[lb], out[ob])
    self.sets.unite(rhs[ro], out[of])
    for k in ls:
      self.sets.block(lhs[k][0])
    for k in rs:
      self.sets.block(rhs[k][0])
    for k in os_:
      self.sets.block(out[k][0])
    self.producers.append(rhs[ro][0])
    return tuple(out)


def zero_invariant_families(
  apply_fn: Callable[[Variables, jax.Array], jax.Array],
  variables: Variables,
  example_input: jax.Array,
) -> tuple[Family, ...]:
  """The zero-invariant groups of `apply_fn(variables, x)` (OTOv3, Sec. 3.1), found from its jaxpr.

  Args:
    apply_fn: the model's forward pass, e.g. `lambda v, x: model.apply(v, x, train=False)`.
    variables: the model's variables (`params` and any state such as `batch_stats`).
    example_input: an input of the shape the model is used with (values are not read).

  Returns:
    The prunable families (channels written by some contraction, free of the inputs, outputs
    and any op that mixes them), each with every array slice that indexes the channel.
  """
  flat = flat_arrays(variables)
  paths = list(flat)
  closed = jax.make_jaxpr(lambda leaves, x: apply_fn(unflatten_like(variables, leaves), x))(
    flat, example_input
  )
  tracer = _Tracer()
  leaf_axes = {k: tracer.fresh(np.shape(flat[k])) for k in paths}
  x_axes = tracer.fresh(np.shape(example_input), blocked=True)
  # make_jaxpr flattens the dict argument in sorted-key order, then the input.
  args = [leaf_axes[k] for k in sorted(paths)] + [x_axes]
  outs = tracer.run(closed.jaxpr, args)
  for o in outs:
    tracer.block_all(o)

  sets = tracer.sets
  producer_roots = {sets.find(a)[0] for a in tracer.producers}
  by_root: dict[int, list[Member]] = {}
  for k in paths:
    for axis, (label, extra) in enumerate(leaf_axes[k]):
      root, tile = sets.find(label)
      if sets.blocked[root] or root not in producer_roots:
        continue
      is_producer = k.endswith('/kernel') and axis == len(leaf_axes[k]) - 1
      by_root.setdefault(root, []).append(Member(k, axis, tile * extra, is_producer))
  families = []
  for root, members in by_root.items():
    producers = [m for m in members if m.producer]
    if not producers:
      continue
    name = producers[0].path.removeprefix('params/').removesuffix('/kernel')
    families.append(Family(name, sets.size[root], tuple(members)))
  return tuple(sorted(families, key=lambda f: _order_key(f.name)))


def _order_key(name: str) -> list:
  """Natural order: `conv2` before `conv10`."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def find_family(families: tuple[Family, ...], path: str, axis: int) -> Family | None:
  """The family that has the axis `axis` of the array at `path` as a member, if any."""
  for f in families:
    for m in f.members:
      if m.path == path and m.axis is not None and m.axis == axis:
        return f
  return None
