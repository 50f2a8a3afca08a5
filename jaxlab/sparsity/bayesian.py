"""Structured Bayesian compression with Turbo-VBI (Xia, Tsang & Lau, IEEE TSP 2023).

Reference: C. Xia, D. H. K. Tsang, V. K. N. Lau, "Structured Bayesian Compression for Deep
Neural Networks Based on the Turbo-VBI Approach", IEEE Trans. Signal Process. 71:670-685, 2023,
arXiv:2302.10483. No official code exists. Only the abstract and the start of the introduction
could be read here. The model and algorithm below are our reading of the paper's Sec. II
(three-layer hierarchical prior) and Sec. III (Turbo-VBI, Modules A and B), which follow the
Turbo-VBI framework of Lau and co-authors. Every numeric default is ours, not the paper's.

**Prior** (per family of groups, `jaxlab.sparsity.groups`). A neuron is a group's producer
slice (a Dense kernel column, a conv filter: `Member.producer`). Its weights are the entries of
that slice, laid out as the rows of a `[size, k]` matrix `W` (`member_slices` order; a family
with several producers concatenates them). Every weight `w_n` has a support `s_n ∈ {0, 1}`
(1 = active) and a precision `ρ_n`:

  p(w, ρ, s) = p(s) ∏_n p(ρ_n | s_n) N(w_n; 0, 1/ρ_n),
  p(ρ_n | s_n) = Γ(ρ_n; a, b)^{s_n} Γ(ρ_n; ā, b̄)^{1 - s_n}   (shape, rate),

with a small mean precision a/b when active (default Γ(1, 1e-2): mean 100, a weight scale of
0.1) and a large one ā/b̄ when inactive (default Γ(2, 2e-6): mean 1e6, scale 1e-3). The
support prior is a binary Markov random field on the `[size, k]` grid of `W` (Ising form,
x_n = 2 s_n - 1, so exp(½ h₀ x_n) ∝ exp(h₀ s_n)):

  p(s) ∝ exp(½ h₀ Σ_n x_n + β_neuron Σ_{vertical edges} x_n x_m + β_weight Σ_{horizontal} x_n x_m).

Vertical edges join weight j of neighbouring neurons i and i+1, a chain over the channel index:
active neurons cluster, and so do the neurons' active input positions. Horizontal edges join
neighbouring weights j and j+1 of one neuron, a chain within the neuron: active weights form
runs. `h₀ = support_logit` (default -3) is the log-odds of the field's unary term; the
defaults β_neuron = 1, β_weight = 0.5 weigh neuron-level clustering above weight-level. For a
conv filter the within-neuron chain runs over the flattened `(kh, kw, c_in)` slice, so its
neighbours are adjacent input channels at one kernel tap (a chain, not the kernel's 3-D grid).

**Module A (VBI).** Mean field q(w) q(ρ) q(s). We take q(w) to be the trained network's weights,
a point estimate: updating q(w) given q(ρ) is then training the network with the ELBO's
log-prior term -E_q[ln p(w | ρ)] = ½ Σ_n E[ρ_n] w_n² + const in the loss, a per-weight L2
penalty, which is what `turbo_vbi` adds to the gradient (a Gaussian q(w) would add its variance
σ_n² to w_n² below). Given w and the support prior π_n from Module B, Module A starts at
q(s_n = 1) = π̃_n = π_n and iterates

  q(ρ_n) = Γ(ã_n, b̃_n),  ã_n = π̃_n a + (1 - π̃_n) ā + ½,  b̃_n = π̃_n b + (1 - π̃_n) b̄ + ½ w_n²,
  logit π̃_n = logit π_n + Δ_n,  Δ_n = E_q[ln Γ(ρ_n; a, b)] - E_q[ln Γ(ρ_n; ā, b̄)],
  E_q[ln Γ(ρ; a, b)] = a ln b - ln Γ(a) + (a - 1)(ψ(ã_n) - ln b̃_n) - b ã_n / b̃_n.

It then passes the extrinsic message Δ_n (its posterior divided by its prior) to Module B.
The mean-field fixed point is bistable: a weight settles inactive only if it starts with small
w_n and small π_n. At the defaults it never does for logit π_n > -1.6; at logit π_n = h₀ = -3
it does for |w_n| < 0.05 (0.073 at -9, an isolated weight). The MRF's messages thus move each
weight's threshold, and inside a block of active neighbours every weight is kept. Each
refresh therefore re-infers the posterior from the prior (π_n = σ(h₀)) on the current
weights, with no hysteresis. On the active branch Δ_n grows like (ā - a) ln w_n², so a large
weight stays active even when isolated. With ā = a, Δ_n would saturate at a ln(b/b̄) and the
MRF could override any weight.

**Module B (message passing).** Sum-product (loopy belief propagation) on the MRF with Δ_n as
local evidence returns the extrinsic message logit π_n = logit p(s_n | Δ) - Δ_n: the belief
without Module A's own input. Each sweep runs exact forward-backward along every column (the
neuron chain), with the row messages as local evidence, then along every row. That is two
`lax.scan`s per direction, over all chains of the direction at once; on a single chain one
sweep is exact. A neuron is active if any of its weights is. Its keep probability
1 - P(s_i = 0) is exact on the row's chain given the column messages, by the chain rule
P(s_i = 0) = P(s_i0 = 0) ∏_{j ≥ 1} P(s_ij = 0 | s_i,j-1 = 0); each factor is read off the
backward messages.

Turbo-VBI alternates A and B `turbo_iterations` times. The penalty uses E[ρ_n] = ã_n / b̃_n from
the last Module A: at most (a + ½)/b = 150 for an active weight, about (ā + ½)/b̄ = 1.25e6 for
an inactive one near w = 0. That last value makes the penalty stiff: use an adaptive optimizer
(Adam), or with SGD keep lr · prior_scale · E[ρ] < 2.

**Simplified** relative to the paper:
- q(w) is a point estimate (no weight variances).
- The support, precision and MRF cover only the producer slices (a neuron's incoming weights);
  the next layer's input slice of a neuron is left to the training loss.
- The within-neuron chain runs over the flattened slice.
- The posterior is refreshed every `update_every` optimizer steps on the current weights,
  whereas the paper alternates training and Turbo-VBI.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import digamma

from jaxlab.sparsity.groups import Family, Member, flat_arrays, group_rows, unflatten_like


@dataclasses.dataclass(frozen=True)
class HierarchicalPrior:
  """The three-layer prior's parameters (see the module docstring; the defaults are ours).

  Attributes:
    active_shape, active_rate: Γ(a, b) of an active weight's precision (small mean a/b).
    inactive_shape, inactive_rate: Γ(ā, b̄) of an inactive weight's precision (large mean).
    support_logit: h₀, the log-odds of the MRF's unary term (negative favours sparsity).
    neuron_coupling: β between weight j of neighbouring neurons (the chain over channels).
    weight_coupling: β between neighbouring weights of one neuron (the chain within it).
  """

  active_shape: float = 1.0
  active_rate: float = 1e-2
  inactive_shape: float = 2.0
  inactive_rate: float = 2e-6
  support_logit: float = -3.0
  neuron_coupling: float = 1.0
  weight_coupling: float = 0.5

  def __post_init__(self):
    for name in ('active_shape', 'active_rate', 'inactive_shape', 'inactive_rate'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name}: expected a positive number, got {getattr(self, name)}')
    active = self.active_shape / self.active_rate
    inactive = self.inactive_shape / self.inactive_rate
    if active >= inactive:
      raise ValueError(
        'prior: expected a smaller mean precision when active than when inactive, got '
        f'{active} >= {inactive}'
      )
    for name in ('neuron_coupling', 'weight_coupling'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name}: expected a non-negative coupling, got {getattr(self, name)}')


# ------------------------------------------------------------------------------ Module A: VBI


class ModuleAOutput(NamedTuple):
  support: jax.Array  # q(s_n = 1) = π̃_n
  evidence_logit: jax.Array  # Δ_n: the extrinsic message A -> B (log-odds)
  precision: jax.Array  # E_q[ρ_n]


def _expected_log_gamma(shape: float, rate: float, e_rho: jax.Array, e_log_rho: jax.Array):
  return shape * math.log(rate) - math.lgamma(shape) + (shape - 1) * e_log_rho - rate * e_rho


def vbi_update(
  weights: jax.Array, prior_logit: jax.Array, prior: HierarchicalPrior, iterations: int = 3
) -> ModuleAOutput:
  """Module A: from q(s) = π, `iterations` mean-field rounds of q(ρ) then q(s).

  Args:
    weights: the point estimates w_n (any shape).
    prior_logit: logit π_n, the support prior from Module B (shaped like `weights`).
    prior: the hierarchical prior.
    iterations: q(ρ), q(s) rounds (at least 1).

  Returns:
    q(s = 1), the extrinsic evidence Δ_n = logit q(s) - logit π_n and E[ρ_n] of the last q(ρ).
  """
  a, b = prior.active_shape, prior.active_rate
  a0, b0 = prior.inactive_shape, prior.inactive_rate
  half_sq = 0.5 * jnp.square(weights)

  def round_(_, out):
    pi = out.support
    shape = pi * a + (1 - pi) * a0 + 0.5
    rate = pi * b + (1 - pi) * b0 + half_sq
    e_rho, e_log_rho = shape / rate, digamma(shape) - jnp.log(rate)
    delta = _expected_log_gamma(a, b, e_rho, e_log_rho) - _expected_log_gamma(
      a0, b0, e_rho, e_log_rho
    )
    return ModuleAOutput(jax.nn.sigmoid(prior_logit + delta), delta, e_rho)

  zeros = jnp.zeros_like(half_sq)
  start = ModuleAOutput(jax.nn.sigmoid(prior_logit) + zeros, zeros, zeros)
  return jax.lax.fori_loop(0, iterations, round_, start)


# ------------------------------------------------------------------------------ Module B: MRF


def chain_messages(field: jax.Array, coupling: float, axis: int) -> tuple[jax.Array, jax.Array]:
  """Exact sum-product messages along `axis` of independent binary chains.

  A chain's joint is ∝ exp(Σ_j field_j s_j + β Σ_j x_j x_{j+1}) with x = 2s - 1. The message
  from node j to node j+1 (log-odds) is g(field_j + m_{j-1→j}), where
  g(x) = ln(e^{x+β} + e^{-β}) - ln(e^{x-β} + e^{β}) sums s_j out of e^{x s_j} ψ(s_j, s_{j+1});
  likewise backwards. Two scans along `axis`; all chains at once.

  Args:
    field: the local log-odds, any shape.
    coupling: β.
    axis: the chain's axis.

  Returns:
    (from_before, from_after): the log-odds messages into each node from its predecessor and
    from its successor along `axis` (0 at the ends). Node j's marginal log-odds is
    `field + from_before + from_after`.
  """
  f = jnp.moveaxis(field, axis, 0)

  def step(message, f_j):
    x = f_j + message
    out = jnp.logaddexp(x + coupling, -coupling) - jnp.logaddexp(x - coupling, coupling)
    return out, message

  zeros = jnp.zeros_like(f[0])
  _, before = jax.lax.scan(step, zeros, f)
  _, after = jax.lax.scan(step, zeros, f, reverse=True)
  return jnp.moveaxis(before, 0, axis), jnp.moveaxis(after, 0, axis)


class ModuleBOutput(NamedTuple):
  posterior_logit: jax.Array  # [size, k]: logit p(s_n = 1 | Δ)
  prior_logit: jax.Array  # [size, k]: the extrinsic message B -> A, logit π_n
  keep: jax.Array  # [size]: P(neuron i has an active weight)


def support_beliefs(
  evidence_logit: jax.Array, prior: HierarchicalPrior, sweeps: int = 2
) -> ModuleBOutput:
  """Module B: sum-product on the support MRF of a `[size, k]` grid, given Module A's Δ.

  Each sweep runs exact forward-backward along the columns (the chain over neurons), with the
  row messages as evidence, then along the rows (the chain within each neuron). On a single
  chain (`size == 1` or `k == 1`) one sweep gives the exact marginals. On the grid this is
  loopy belief propagation with a chain schedule, started from zero messages.

  Args:
    evidence_logit: Δ, `[size, k]`.
    prior: the MRF's parameters (`support_logit`, `neuron_coupling`, `weight_coupling`).
    sweeps: column-then-row sweeps (at least 1).

  Returns:
    The support beliefs, the extrinsic prior for Module A, and each neuron's keep probability.
  """
  field = prior.support_logit + evidence_logit
  zeros = jnp.zeros_like(field)

  def sweep(_, msgs):
    left, right, _, _ = msgs
    up, down = chain_messages(field + left + right, prior.neuron_coupling, axis=0)
    left, right = chain_messages(field + up + down, prior.weight_coupling, axis=1)
    return left, right, up, down

  left, right, up, down = jax.lax.fori_loop(0, sweeps, sweep, (zeros, zeros, zeros, zeros))
  incoming = left + right + up + down
  # P(row all inactive) on the row's chain; given s_{j-1} = 0, s_j's log-odds gains -2β.
  row = field + up + down + right
  log_off = -jax.nn.softplus(row[:, 0]) - jnp.sum(
    jax.nn.softplus(row[:, 1:] - 2 * prior.weight_coupling), axis=1
  )
  return ModuleBOutput(field + incoming, prior.support_logit + incoming, -jnp.expm1(log_off))


# ------------------------------------------------------------------------------ Turbo-VBI


class FamilyPosterior(NamedTuple):
  """One family's posterior, in the `[size, k]` layout of its producer slices."""

  precision: jax.Array  # E_q[ρ_n]: the L2 penalty's per-weight coefficient
  support: jax.Array  # q(s_n = 1) (Module B's belief)
  keep: jax.Array  # [size]: P(neuron i active)


def turbo_vbi_posterior(
  rows: jax.Array,
  prior: HierarchicalPrior,
  *,
  turbo_iterations: int = 4,
  vbi_iterations: int = 3,
  bp_sweeps: int = 2,
) -> FamilyPosterior:
  """Turbo-VBI on one family's weights `rows` `[size, k]`: Modules A and B, alternated.

  Module A starts from the MRF's unary prior (logit π = h₀); each later round starts from
  Module B's extrinsic message.

  Args:
    rows: the neurons' weights, one neuron per row.
    prior: the hierarchical prior.
    turbo_iterations: A -> B rounds (at least 1).
    vbi_iterations: q(ρ), q(s) rounds inside Module A.
    bp_sweeps: column-then-row sweeps inside Module B.

  Returns:
    E[ρ] from the last Module A; q(s) and the neurons' keep probabilities from the last
    Module B.
  """
  rows = rows.astype(jnp.float32)

  def round_(_, carry):
    prior_logit, _ = carry
    a = vbi_update(rows, prior_logit, prior, vbi_iterations)
    b = support_beliefs(a.evidence_logit, prior, bp_sweeps)
    return b.prior_logit, FamilyPosterior(a.precision, jax.nn.sigmoid(b.posterior_logit), b.keep)

  zeros = jnp.zeros_like(rows)
  start = (zeros + prior.support_logit, FamilyPosterior(zeros, zeros, zeros[:, 0]))
  return jax.lax.fori_loop(0, turbo_iterations, round_, start)[1]


class TurboVBIState(NamedTuple):
  count: jax.Array  # int32: updates done
  posteriors: dict[str, FamilyPosterior]  # family name -> its posterior


def _producers(family: Family) -> tuple[Member, ...]:
  members = tuple(m for m in family.param_members if m.producer)
  if not members:
    raise ValueError(f'family {family.name}: expected a producer member (a kernel), got none')
  return members


def _rows(flat: dict[str, jax.Array], family: Family) -> jax.Array:
  """`[size, k]`: each neuron's incoming weights (its producer slices) as one row."""
  return group_rows(flat, family, _producers(family))


def _unslice(rows: jax.Array, shape: tuple[int, ...], m: Member, size: int) -> jax.Array:
  """The inverse of `member_slices`: `[size, k]` rows back to an array of `shape`."""
  if m.axis is None:
    return rows.reshape(shape)
  axis = m.axis % len(shape)
  view = (*shape[:axis], m.tile, size, *shape[axis + 1 :])
  moved = (size, *view[: axis + 1], *view[axis + 2 :])
  return jnp.moveaxis(rows.reshape(moved), 0, axis + 1).reshape(shape)


def _add_rows(
  flat_updates: dict[str, jax.Array], family: Family, rows: jax.Array
) -> dict[str, jax.Array]:
  """`flat_updates` plus `rows` `[size, k]` scattered back onto the family's producer slices."""
  out, start = dict(flat_updates), 0
  for m in _producers(family):
    shape = out[m.path].shape
    width = math.prod(shape) // family.size
    part = _unslice(rows[:, start : start + width], shape, m, family.size)
    out[m.path] = out[m.path] + part.astype(out[m.path].dtype)
    start += width
  return out


def _check_families(families: tuple[Family, ...], who: str) -> None:
  if not families:
    raise ValueError(f'{who}: expected at least one family of groups, got none')
  names = [f.name for f in families]
  if len(set(names)) != len(names):
    raise ValueError(f'{who}: expected distinct family names, got {names}')
  for f in families:
    _producers(f)


def turbo_vbi(
  families: tuple[Family, ...],
  *,
  update_every: int,
  prior_scale: float,
  active_shape: float = 1.0,
  active_rate: float = 1e-2,
  inactive_shape: float = 2.0,
  inactive_rate: float = 2e-6,
  support_logit: float = -3.0,
  neuron_coupling: float = 1.0,
  weight_coupling: float = 0.5,
  turbo_iterations: int = 4,
  vbi_iterations: int = 3,
  bp_sweeps: int = 2,
) -> optax.GradientTransformationExtraArgs:
  """Adds the gradient of the Turbo-VBI prior term, `prior_scale · E_q[ρ] ⊙ w`, to the updates.

  The prior term of the ELBO is -E_q[ln p(w | ρ)] = ½ Σ_n E_q[ρ_n] w_n² + const over the
  families' producer slices (the module docstring has the model). Every `update_every` updates,
  starting with the first, Turbo-VBI runs on the current weights before the gradient is added;
  until then the state holds no posterior (E[ρ] = 0, q(s) = σ(h₀), keep probabilities 1).
  Chain it before the optimizer's scaling: `optax.chain(turbo_vbi(...), optax.adam(lr))`.

  Args:
    families: the groups (`zero_invariant_families`); each needs a producer member.
    update_every: optimizer steps between posterior refreshes.
    prior_scale: the prior term's weight in the loss: 1/N for a loss that averages over N
      training examples (the ELBO per example).
    active_shape, active_rate, inactive_shape, inactive_rate, support_logit, neuron_coupling,
      weight_coupling: the `HierarchicalPrior`.
    turbo_iterations, vbi_iterations, bp_sweeps: see `turbo_vbi_posterior`.

  Returns:
    A transform whose `update(grads, state, params, **extra_args)` needs `params` and ignores
    the extra arguments; its state is a `TurboVBIState` (see `keep_probabilities` and
    `find_turbo_state`).

  References:
    Xia, Tsang & Lau, "Structured Bayesian Compression for Deep Neural Networks Based on the
    Turbo-VBI Approach", IEEE TSP 2023, arXiv:2302.10483.
  """
  if update_every < 1:
    raise ValueError(f'update_every: expected a positive int, got {update_every}')
  counts = dict(
    turbo_iterations=turbo_iterations, vbi_iterations=vbi_iterations, bp_sweeps=bp_sweeps
  )
  for name, n in counts.items():
    if n < 1:
      raise ValueError(f'{name}: expected a positive int, got {n}')
  _check_families(families, 'turbo_vbi')
  prior = HierarchicalPrior(
    active_shape,
    active_rate,
    inactive_shape,
    inactive_rate,
    support_logit,
    neuron_coupling,
    weight_coupling,
  )

  def infer(params):
    flat = flat_arrays({'params': params})
    return {f.name: turbo_vbi_posterior(_rows(flat, f), prior, **counts) for f in families}

  def init_fn(params):
    flat = flat_arrays({'params': params})
    empty = {}
    for f in families:
      size, k = _rows(flat, f).shape
      support = jnp.full((size, k), jax.nn.sigmoid(prior.support_logit), jnp.float32)
      empty[f.name] = FamilyPosterior(jnp.zeros_like(support), support, jnp.ones((size,)))
    return TurboVBIState(jnp.zeros((), jnp.int32), empty)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args  # a leaf transform: nothing to forward them to
    if params is None:
      raise ValueError('turbo_vbi: update needs the parameters (optax params argument)')
    due = state.count % update_every == 0
    posteriors = jax.lax.cond(due, lambda: infer(params), lambda: state.posteriors)
    flat_params = flat_arrays({'params': params})
    flat = flat_arrays({'params': updates})
    for f in families:
      grad = prior_scale * posteriors[f.name].precision * _rows(flat_params, f)
      flat = _add_rows(flat, f, grad)
    return unflatten_like({'params': updates}, flat)['params'], TurboVBIState(
      state.count + 1, posteriors
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def keep_probabilities(state: TurboVBIState) -> dict[str, jax.Array]:
  """Family name -> `[size]` posterior probability that each neuron is active."""
  return {name: post.keep for name, post in state.posteriors.items()}


def find_turbo_state(opt_state: Any) -> TurboVBIState | None:
  """The `TurboVBIState` inside a (possibly chained) optimizer state, if any."""
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, TurboVBIState))
    if isinstance(s, TurboVBIState)
  ]
  return found[0] if found else None


# ------------------------------------------------------------------------------ group lasso


def group_lasso(families: tuple[Family, ...], strength: float) -> optax.GradientTransformation:
  """Adds the gradient of the group lasso λ Σ_g ‖w_g‖₂ over the families' neurons.

  A group w_g is a neuron's producer slices (the same neurons as `turbo_vbi`). The gradient
  λ w_g / ‖w_g‖₂ is taken as 0 at w_g = 0 (a subgradient). This is the structured-sparsity
  baseline (Wen et al., "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016).

  Args:
    families: the groups; each needs a producer member.
    strength: λ, in the units of the training loss.

  Returns:
    A stateless transform whose `update(grads, state, params)` needs `params`.
  """
  if strength < 0:
    raise ValueError(f'strength: expected a non-negative number, got {strength}')
  _check_families(families, 'group_lasso')

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('group_lasso: update needs the parameters (optax params argument)')
    flat_params = flat_arrays({'params': params})
    flat = flat_arrays({'params': updates})
    for f in families:
      rows = _rows(flat_params, f)
      norm = jnp.linalg.norm(rows, axis=1, keepdims=True)
      grad = strength * rows / jnp.where(norm > 0, norm, 1.0)
      flat = _add_rows(flat, f, grad)
    return unflatten_like({'params': updates}, flat)['params'], state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
