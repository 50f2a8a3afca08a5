"""The `dhspg` plugin: OTOv3's one-shot train-and-compress from the config.

Chen et al., 2023, "OTOv3: Automatic Architecture-Agnostic Neural Network Training and
Compression": the model's zero-invariant groups are found automatically (Sec. 3.1,
`jaxlab.sparsity.groups.zero_invariant_families`), DHSPG (Sec. 3.2, `jaxlab.sparsity.dhspg`)
trains the model while driving a target fraction of the groups to exactly zero, and the
sub-network without the zero groups is built automatically (Sec. 3.3, `jaxlab.sparsity.crop`).
Zero-invariance makes the sub-network compute exactly what the trained group-sparse network
does, so there is no fine-tuning.

  config.optim.name = 'sgd'   # the paper's SGD variant (config.optim.b1 = 0: no momentum)
  config.plugins.dhspg = ml_collections.ConfigDict({
    'target_group_sparsity': 0.5,  # fraction K / N of all groups driven to exactly zero
    'warmup_fraction': 0.2,        # of config.train.steps: plain training before the partition
    'lmbda': 1e-3, 'epsilon': 0.0, # group-lasso weight λ, half-space threshold ε
  })

The plugin wraps the train loop's optimizer (`config.optim`, with its learning-rate schedule as
DHSPG's step size `α_t`), logs `dhspg/group_sparsity = |{g : x_g = 0}| / N` every step, and
after training reports what the `prune` plugin reports (`sparse_summary`, `crop_summary`): the
nonzero parameters, dense and sparse FLOPs, and the model cropped to the groups that are not
exactly zero (its parameters, FLOPs, eval accuracy, and its largest logit difference from the
trained model). `target_group_sparsity=0` trains the dense model with the inner optimizer alone
(DHSPG is not applied) and still reports the crop metrics (every group kept: the identity), so
a dense point of a sweep is the baseline of the sparse ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from jaxlab.core.optim import make_schedule
from jaxlab.core.plugins import PLUGINS, Plugin
from jaxlab.sparsity.dhspg import dhspg as dhspg_transform
from jaxlab.sparsity.dhspg import zero_group_fraction, zero_groups
from jaxlab.sparsity.groups import Family
from jaxlab.sparsity.plugin import crop_summary, model_families, sparse_summary


def kept_groups(params: Any, families: Sequence[Family]) -> dict[str, np.ndarray]:
  """Family name -> `[size]` bool, True for the groups that are not exactly zero.

  A family whose groups are all zero keeps its first one (a layer cannot be cropped to no
  channel; zero-invariance still makes the cropped model exact).
  """
  keeps = {}
  for f, zero in zip(families, zero_groups(params, families), strict=True):
    keep = ~np.asarray(zero, bool)
    if not keep.any():
      keep[0] = True
    keeps[f.name] = keep
  return keeps


@PLUGINS.register('dhspg')
def dhspg(
  task: Any,
  config: Any,
  target_group_sparsity: float = 0.5,
  warmup_fraction: float = 0.2,
  lmbda: float = 1e-3,
  lmbda_amplify: float = 2.0,
  hat_lmbda_coeff: float = 10.0,
  epsilon: float = 0.0,
  tolerance: float = 0.05,
) -> Plugin:
  """OTOv3 with DHSPG around the optimizer of `config.optim` (see the module docstring).

  Args:
    task: the task whose model's zero-invariant groups are sparsified.
    config: the run's config: `config.optim` gives the step size `α_t` (its schedule) and
      `config.train.steps` the length `T` of the run.
    target_group_sparsity: the fraction of all groups to drive to exactly zero, in [0, 1);
      0 trains the dense model (no DHSPG).
    warmup_fraction: `warmup_steps = ⌊warmup_fraction · T⌋` steps of plain training before the
      partition into redundant and important groups, in [0, 1).
    lmbda: the base group-lasso weight `λ` (defaults: the official SGD variant's, via
      `jaxlab.sparsity.dhspg.dhspg`).
    lmbda_amplify: `a`, the factor on `λ_min` of the adaptive λ.
    hat_lmbda_coeff: `ĉ`, the adaptive λ is at most `ĉ λ`.
    epsilon: `ε` of the half-space test `x̃_gᵀ x_g < ε ‖x_g‖²`, in [0, 1).
    tolerance: extra fraction of groups in the redundant set beyond the target.

  Returns:
    The plugin: `wrap_optimizer` (DHSPG, or nothing at target 0), `metrics`
    (`dhspg/group_sparsity`) and `finalize` (sparsity, FLOPs and crop metrics).
  """
  if not 0.0 <= target_group_sparsity < 1.0:
    raise ValueError(f'target_group_sparsity: expected in [0, 1), got {target_group_sparsity}')
  if not 0.0 <= warmup_fraction < 1.0:
    raise ValueError(f'warmup_fraction: expected in [0, 1), got {warmup_fraction}')
  families = model_families(task, 'channel', r'.*kernel', '')
  steps = config.train.steps
  warmup_steps = int(warmup_fraction * steps)
  schedule = make_schedule(config.optim, steps)  # the inner optimizer's step size α_t

  def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    if target_group_sparsity == 0.0:
      return tx  # the dense baseline: the inner optimizer alone
    return dhspg_transform(
      tx,
      families,
      target_group_sparsity,
      warmup_steps=warmup_steps,
      learning_rate=schedule,
      lmbda=lmbda,
      lmbda_amplify=lmbda_amplify,
      hat_lmbda_coeff=hat_lmbda_coeff,
      epsilon=epsilon,
      tolerance=tolerance,
    )

  def metrics(state) -> dict[str, jax.Array]:
    return {'dhspg/group_sparsity': zero_group_fraction(state.params, families)}

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(state.params)
    variables = {'params': params, **jax.device_get(state.model_state)}
    keeps = kept_groups(params, families)
    zeros = zero_groups(params, families)
    fraction = float(sum(z.sum() for z in zeros) / sum(z.size for z in zeros))
    return {
      **sparse_summary(task, variables, eval_batches),
      **crop_summary(task, variables, families, keeps, eval_batches),
      'dhspg/group_sparsity': fraction,
      'dhspg/target_group_sparsity': float(target_group_sparsity),
    }

  return Plugin(wrap_optimizer=wrap, metrics=metrics, finalize=finalize)
