"""The `structured_prior` plugin: a structured-sparsity prior's gradient added before the optimizer.

  config.plugins.structured_prior = ml_collections.ConfigDict({'kind': 'turbo_vbi'})
  config.plugins.prune = ml_collections.ConfigDict({'granularity': 'channel', ...})

`kind` picks the prior over the model's neurons (the producer slices of its zero-invariant
channel groups, `jaxlab.sparsity.groups`; the same groups as `prune` with granularity channel):

- `'none'`: no prior (plain training; with `prune`, plain magnitude channel pruning).
- `'group_lasso'`: λ Σ_g ‖w_g‖₂ (Wen et al., 2016, Sec. 3.1), λ = `strength`.
- `'turbo_vbi'`: the three-layer hierarchical prior of Xia, Tsang & Lau (IEEE TSP 2023,
  Secs. II-III), whose ELBO term ½ · prior_scale · Σ_n E_q[ρ_n] w_n² is refreshed by Turbo-VBI
  every `update_every` steps (`jaxlab.sparsity.bayesian.turbo_vbi`; read its docstring for the
  model, the defaults and what is simplified).

The optimizer becomes `optax.chain(prior, tx)`: the prior's gradient is added to the loss's
before anything of `tx` (global-norm clipping, AdamW), exactly as if the prior were a term of
the loss. `prior_scale` defaults to 1/N for N training examples (the ELBO per example, as the
task's loss is a mean over examples). With `start > 0` the prior is off for the first `start`
steps (`delayed`): the network first learns, then is compressed. From a random initialisation
the Turbo-VBI prior at its defaults (spike threshold |w| ≈ 0.05, about the initial weight
scale of a no-BN VGG's deeper layers) can shrink every neuron before the data gradient grows,
and training never starts (seen on the tiny VGG: `prior/expected_neurons` falls to 0, the loss
stays at ln 10).

**Plugin order.** Plugins wrap in the order they were added to `config.plugins` (built by
`base_config()` with `sort_keys=False`; a plain ConfigDict would sort them). To let `prune` see
the Turbo-VBI posterior (the `bayesian` scorer), `structured_prior` must wrap first, so
`prune`'s mask wrapper is outermost and its `inner_state` holds the `TurboVBIState`: add
`structured_prior` before `prune` (`experiments/turbo_vbi.py` does).
In the other order the gradients are the same; only the `bayesian` scorer fails (loudly).

Importing this module also registers the scorer `'bayesian'` in `SCORERS`: a neuron's score is
its posterior keep probability P(neuron active) from the last Turbo-VBI refresh
(`keep_probabilities`). The posterior is often sure: in float32 many keep probabilities are
exactly 1 or exactly 0 (on the small VGG, most neurons of a layer share one of 2-6 values).
Those within `KEEP_TIE` of 1 rank above all others and those within `KEEP_TIE` of 0 below
all others, each set among itself by the L1 norm of the neuron's kernel slice, so that ties
are not broken by channel index (the allocators remove the earlier index first, which fakes
contiguous pruned runs). So when the posterior is sure about every neuron at the pruning step,
`bayesian` chooses within its two sets as `magnitude` does.

Logged every step: `prior/group_norm` (Σ_g ‖w_g‖₂) and, for turbo_vbi, `prior/expected_neurons`
(Σ keep probabilities). After training, with a `prune` mask present: the paper's "regular
structure" as `prior/pruned_runs`, the mean over layers of the number of maximal runs of
consecutive pruned channels (lower = more clustered; 1 = all pruned channels adjacent), next to
`prior/pruned_runs_random`, its expectation had the same number of channels per layer been
pruned at uniformly random positions, k (n - k + 1) / n.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.core.plugins import PLUGINS, Plugin
from jaxlab.sparsity.bayesian import find_turbo_state, group_lasso, keep_probabilities, turbo_vbi
from jaxlab.sparsity.groups import Family, flat_arrays, group_matrix, member_slices
from jaxlab.sparsity.masking import find_masked_state
from jaxlab.sparsity.plugin import model_families
from jaxlab.sparsity.scorers import SCORERS, ScoreContext, Scorer

KINDS = ('none', 'group_lasso', 'turbo_vbi')
KEEP_TIE = 1e-4  # keep probabilities within KEEP_TIE of 0 or 1 are ranked by their L1 norm


# ------------------------------------------------------------------------------ the scorer


def bayesian_group_score(ctx: ScoreContext) -> dict[str, jax.Array]:
  """{family name (its first producer layer): [size] score}: the Turbo-VBI keep probability.

  Reads the `TurboVBIState` in `ctx.extras['inner_state']` (the optimizer state inside
  `prune`'s mask wrapper). With ℓ the L1 norm of the neuron's slice of its layer's kernel (last
  axis) and t = ℓ/(1 + ℓ) ∈ [0, 1), a keep probability within `KEEP_TIE` of 1 becomes 1 + t and
  one within `KEEP_TIE` of 0 becomes t - 1: such neurons rank above (below) all others and
  among themselves by magnitude.
  """
  state = find_turbo_state(ctx.extras.get('inner_state'))
  if state is None:
    raise ValueError(
      "scorer bayesian: no Turbo-VBI posterior in the pruner's inner optimizer state; use "
      "plugins.structured_prior with kind='turbo_vbi', added to config.plugins before "
      'plugins.prune'
    )
  flat = flat_arrays({'params': ctx.params})
  out = {}
  for name, keep in keep_probabilities(state).items():
    keep = keep.astype(jnp.float32)
    kernel = flat.get(f'params/{name}/kernel')
    if kernel is None or kernel.shape[-1] != keep.shape[0]:
      out[name] = keep
      continue
    l1 = jnp.sum(jnp.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0).astype(jnp.float32)
    t = l1 / (1.0 + l1)
    out[name] = jnp.where(
      keep >= 1.0 - KEEP_TIE, 1.0 + t, jnp.where(keep <= KEEP_TIE, t - 1.0, keep)
    )
  return out


BAYESIAN = SCORERS.register('bayesian')(Scorer('bayesian', group_score=bayesian_group_score))


# ------------------------------------------------------------------------------ structure metrics


def pruned_runs(alive: np.ndarray) -> int:
  """The number of maximal runs of consecutive pruned (False) entries of a `[n]` keep vector."""
  pruned = ~np.asarray(alive, bool)
  starts = pruned & ~np.concatenate([[False], pruned[:-1]])
  return int(starts.sum())


def expected_random_runs(n: int, k: int) -> float:
  """E[runs of pruned channels] when `k` of `n` positions are pruned uniformly at random.

  A run starts at i if i is pruned and i - 1 is not (or i = 0):
  k/n + (n - 1) (k/n) ((n - k)/(n - 1)) = k (n - k + 1) / n.
  """
  return 0.0 if n == 0 else k * (n - k + 1) / n


def family_alive(families: tuple[Family, ...], masks: Any) -> list[np.ndarray]:
  """`[size]` per family: whether any parameter entry of the group is still unmasked."""
  flat = flat_arrays({'params': masks})
  out = []
  for f in families:
    rows = [np.asarray(member_slices(flat[m.path], m, f.size)).any(axis=1) for m in f.param_members]
    out.append(np.any(np.stack(rows), axis=0))
  return out


def regularity_summary(families: tuple[Family, ...], masks: Any) -> dict[str, float]:
  """Pruned channels, and the mean per layer of pruned runs, measured and at random."""
  alive = family_alive(families, jax.device_get(masks))
  runs = [pruned_runs(a) for a in alive]
  rand = [expected_random_runs(a.size, int((~a).sum())) for a in alive]
  return {
    'prior/pruned_channels': float(sum(int((~a).sum()) for a in alive)),
    'prior/pruned_runs': float(np.mean(runs)),
    'prior/pruned_runs_random': float(np.mean(rand)),
  }


def group_norm_total(params: Any, families: tuple[Family, ...]) -> jax.Array:
  """Σ_g ‖w_g‖₂ over every neuron's producer slices (the group lasso penalty over λ)."""
  return sum(
    jnp.sum(jnp.linalg.norm(rows.astype(jnp.float32), axis=1))
    for rows in (group_matrix({'params': params}, f, producers_only=True) for f in families)
  )


# ------------------------------------------------------------------------------ the plugin


class DelayedState(NamedTuple):
  count: jax.Array  # int32: updates done
  inner_state: optax.OptState


def delayed(tx: optax.GradientTransformation, start: int) -> optax.GradientTransformationExtraArgs:
  """`tx` from update `start` on; before it the updates pass through and `tx`'s state waits.

  So a prior compresses a network trained without it for `start` steps; `tx` sees its first
  update at step `start` (Turbo-VBI then refreshes its posterior at once).
  """
  if start < 0:
    raise ValueError(f'start: expected a non-negative step, got {start}')
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    return DelayedState(jnp.zeros((), jnp.int32), tx.init(params))

  def update_fn(updates, state, params=None, **extra):
    def run(inner):
      return tx.update(updates, inner, params, **extra)

    updates, inner = jax.lax.cond(
      state.count >= start, run, lambda inner: (updates, inner), state.inner_state
    )
    return updates, DelayedState(state.count + 1, inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@PLUGINS.register('structured_prior')
def structured_prior(
  task: Any,
  config: Any,
  kind: str = 'turbo_vbi',
  strength: float = 1e-3,
  start: int = 0,
  update_every: int = 10,
  prior_scale: float = 0.0,
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
) -> Plugin:
  """A structured-sparsity prior on the model's neurons (see the module docstring).

  Args:
    task: the task; its model gives the channel families, its `data.train_inputs` the N of
      the default `prior_scale`.
    config: the run's config (unused; accepted so the plugin sees the same `config` as prune).
    kind: 'none' | 'group_lasso' | 'turbo_vbi'.
    strength: λ of the group lasso (kind 'group_lasso'), in units of the training loss.
    start: the first step with the prior (before it, plain training; `delayed`).
    update_every: optimizer steps between Turbo-VBI refreshes.
    prior_scale: weight of the Turbo-VBI term in the loss; 0 (the default) means 1/N.
    active_shape, active_rate, inactive_shape, inactive_rate, support_logit, neuron_coupling,
      weight_coupling, turbo_iterations, vbi_iterations, bp_sweeps: `bayesian.turbo_vbi`.

  Returns:
    The plugin: the wrapped optimizer (none for 'none'), per-step metrics and the final
    regularity summary of `prune`'s masks.
  """
  del config
  if kind not in KINDS:
    raise ValueError(f'kind: expected one of {KINDS}, got {kind!r}')
  if start < 0:
    raise ValueError(f'start: expected a non-negative step, got {start}')
  if prior_scale < 0:
    raise ValueError(f'prior_scale: expected >= 0 (0 = 1/N), got {prior_scale}')
  families = model_families(task, 'channel', '', '')
  if kind == 'turbo_vbi' and prior_scale == 0:
    data = getattr(task, 'data', None)
    if data is None or not hasattr(data, 'train_inputs'):
      raise ValueError('prior_scale: 0 means 1/N, but the task has no data.train_inputs')
    prior_scale = 1.0 / len(data.train_inputs)
  prior: optax.GradientTransformation | None = None
  if kind == 'group_lasso':
    prior = group_lasso(families, strength)
  elif kind == 'turbo_vbi':
    prior = turbo_vbi(
      families,
      update_every=update_every,
      prior_scale=prior_scale,
      active_shape=active_shape,
      active_rate=active_rate,
      inactive_shape=inactive_shape,
      inactive_rate=inactive_rate,
      support_logit=support_logit,
      neuron_coupling=neuron_coupling,
      weight_coupling=weight_coupling,
      turbo_iterations=turbo_iterations,
      vbi_iterations=vbi_iterations,
      bp_sweeps=bp_sweeps,
    )
  if prior is not None and start > 0:
    prior = delayed(prior, start)

  def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(prior, tx)

  def metrics(state) -> dict[str, jax.Array]:
    out = {'prior/group_norm': group_norm_total(state.params, families)}
    turbo = find_turbo_state(state.opt_state)
    if turbo is not None:
      out['prior/expected_neurons'] = sum(jnp.sum(k) for k in keep_probabilities(turbo).values())
    return out

  def finalize(task, state, eval_batches) -> dict[str, float]:
    del task, eval_batches
    out = {}
    turbo = find_turbo_state(state.opt_state)
    if turbo is not None:
      keeps = jax.device_get(keep_probabilities(turbo))
      out['prior/expected_neurons'] = float(sum(np.sum(k) for k in keeps.values()))
    ms = find_masked_state(state.opt_state)
    if ms is not None:
      out.update(regularity_summary(families, ms.masks))
    return out

  return Plugin(wrap_optimizer=None if prior is None else wrap, metrics=metrics, finalize=finalize)
