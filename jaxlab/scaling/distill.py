"""The `distill` plugin: train a student towards a fixed ensemble of trained teachers.

On every batch the teachers (finished runs, `jaxlab.scaling.ensemble`) give the ensemble's
logits `z̄` for the same inputs; the student's logits `s` get the Hinton et al. (2015) term

  KD = T² · mean_tokens KL( softmax(z̄/T) ‖ softmax(s/T) ),

and the plugin's loss term is `weight · KD − (1 − hard_weight) · CE(s, y)`. The loop already
adds the task's cross-entropy `CE(s, y)` with weight 1, so the student's total objective is

  hard_weight · CE(s, y) + weight · KD.

`hard_weight=0, weight=1` is pure distillation.

The paper ("Pre-training under infinite compute", Kim et al., 2025, Sec. 5; released configs in
marin `experiments/data_efficiency/distill.py`) distils at the sequence level: the student
trains on a mixture of text sampled from the K = 8 members (weight 0.9) and the real data
(weight 0.1), for 16 epochs, at the members' size (the "8× smaller" student is one member's
size against the 8-member ensemble). Cross-entropy on teacher samples is, in expectation over
the samples, `KL(p_teacher ‖ p_student) + H(p_teacher)`, so this plugin's defaults
(`weight=0.9, hard_weight=0.1, temperature=1`) are the token-level analogue of that mixture:
same weights, the teacher's exact distribution in place of samples, but on real contexts
rather than teacher-generated ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import PLUGINS, Plugin
from jaxlab.scaling.ensemble import COMBINES, Ensemble, combine_logits


def distill_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float = 1.0,
  mask: jax.Array | None = None,
) -> jax.Array:
  """`T² · mean KL(softmax(teacher/T) ‖ softmax(student/T))` over the (unmasked) tokens."""
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  mask = jnp.ones_like(kl) if mask is None else mask.astype(kl.dtype)
  return temperature**2 * (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _masked_ce(logits: jax.Array, batch: dict) -> jax.Array:
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  mask = batch.get('mask')
  mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
  return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@PLUGINS.register('distill')
def distill(
  teachers: str | Sequence[str],
  weight: float = 0.9,
  hard_weight: float = 0.1,
  temperature: float = 1.0,
  combine: str = 'logits',
) -> Plugin:
  """Distillation towards the ensemble of the runs in `teachers` (see the module docstring).

  Args:
    teachers: finished run directories (each `config.json` + `checkpoints/`): a sequence, or
      one string joined by `os.pathsep` (':'; sweep point names contain commas). Their models
      may differ from the student's (e.g. wider) but share its vocabulary.
    weight: the weight of the distillation term `KD`.
    hard_weight: the weight the task's cross-entropy ends up with (the loop adds it with 1).
    temperature: the softening temperature `T` of both distributions (and of the ensemble).
    combine: how the teachers combine, 'logits' (the paper's) or 'probs'.
  """
  parts = teachers.split(os.pathsep) if isinstance(teachers, str) else teachers
  dirs = [str(d).strip() for d in parts if str(d).strip()]
  if not dirs:
    raise ConfigError(f'plugins.distill.teachers: expected run directories, got {teachers!r}')
  if combine not in COMBINES:
    raise ConfigError(f'plugins.distill.combine: expected one of {COMBINES}, got {combine!r}')
  if not temperature > 0 or weight < 0 or hard_weight < 0:
    raise ConfigError(
      'plugins.distill: expected temperature > 0, weight >= 0, hard_weight >= 0, got '
      f'{temperature}, {weight}, {hard_weight}'
    )
  ensemble = Ensemble.from_runs(dirs)  # loaded once; the params are constants of the step

  def term(params, batch, outputs):
    del params
    teacher = jax.lax.stop_gradient(
      combine_logits(ensemble.member_logits(batch), combine, temperature) * temperature
    )
    if teacher.shape != outputs.shape:
      raise ValueError(
        f'distill: teacher logits {teacher.shape} do not match the student logits '
        f'{outputs.shape} (expected one vocabulary and sequence length)'
      )
    kd = weight * distill_loss(outputs, teacher, temperature, batch.get('mask'))
    if hard_weight == 1.0:
      return kd
    return kd - (1.0 - hard_weight) * _masked_ce(outputs, batch)

  return Plugin(loss_term=term)
