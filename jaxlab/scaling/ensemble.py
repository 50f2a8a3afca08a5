"""Ensembles of independently trained LMs: member logits, their combination, and eval loss.

"Pre-training under infinite compute" (Kim, Kotha, Liang, Hashimoto, 2025, Sec. 4) trains K
members with the same recipe and different seeds and scores the ensemble's validation loss as
K grows. Its released evaluation (Levanter's `EnsembleModel`, branch `suhas/eval-ensemble`, per
marin `experiments/data_efficiency/README.md`) averages the members' raw logits,

  z̄ = (1/K) Σ_k z_k / T,      p_ens = softmax(z̄),

(`combine='logits'`, the default; `T` a temperature, 1 in the paper's runs). Averaging the
probabilities, `p_ens = (1/K) Σ_k softmax(z_k / T)`, is the classical alternative
(`combine='probs'`). Either way the ensemble's log loss is at most the members' mean log loss,
token by token (`y` the target):

- logits: `-log softmax(z̄)_y = LSE(z̄) − z̄_y ≤ (1/K) Σ_k (LSE(z_k) − z_{k,y})` because
  log-sum-exp is convex (Jensen) and `z̄_y` is linear in the members;
- probs: `-log (1/K) Σ_k p_{k,y} ≤ (1/K) Σ_k −log p_{k,y}` because `−log` is convex.

Members are grouped by model config; each group's parameters are stacked on a leading axis and
applied with `jax.vmap`, so members that differ only in seed run as one program. Members come
from finished run directories (`config.json` + `checkpoints/`), e.g. the points of a sweep.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core.config import config_from_json
from jaxlab.core.sweep import load_point_params
from jaxlab.core.task import Task, build_task

COMBINES = ('logits', 'probs')


def load_run(point_dir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, Any]:
  """`(config, params)` of a finished run: its `config.json` and its latest checkpoint's
  parameters (`jaxlab.core.sweep.load_point_params`)."""
  point_dir = pathlib.Path(point_dir)
  if not (point_dir / 'config.json').is_file():
    raise ValueError(f'{point_dir}: expected a finished run with a config.json, found none')
  try:
    params = load_point_params(point_dir)
  except FileNotFoundError as e:
    raise ValueError(f'{point_dir}: expected a finished run ({e})') from None
  return config_from_json(point_dir / 'config.json'), jax.tree.map(np.asarray, params)


def combine_logits(
  member_logits: jax.Array, combine: str = 'logits', temperature: float = 1.0
) -> jax.Array:
  """The ensemble's logits `[..., V]` from the members' `[K, ..., V]` (module docstring).

  'logits' returns the mean logit `z̄` (unnormalised); 'probs' returns `log p_ens`.
  """
  z = member_logits.astype(jnp.float32) / temperature
  if combine == 'logits':
    return jnp.mean(z, axis=0)
  if combine == 'probs':
    return jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1), axis=0) - math.log(z.shape[0])
  raise ValueError(f'combine: expected one of {COMBINES}, got {combine!r}')


def prefix_logits(member_logits: jax.Array, combine: str = 'logits') -> jax.Array:
  """`[K, ..., V]`: entry `k−1` is the combination of the first `k` members, for k = 1..K."""
  z = member_logits.astype(jnp.float32)
  count = jnp.arange(1, z.shape[0] + 1, dtype=jnp.float32).reshape((-1,) + (1,) * (z.ndim - 1))
  if combine == 'logits':
    return jnp.cumsum(z, axis=0) / count
  if combine == 'probs':
    return jax.lax.cumlogsumexp(jax.nn.log_softmax(z, axis=-1), axis=0) - jnp.log(count)
  raise ValueError(f'combine: expected one of {COMBINES}, got {combine!r}')


def token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy (nats) over the unmasked tokens, as the LM task computes it."""
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], -1)[..., 0]
  mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
  return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class Ensemble:
  """K trained members; `member_logits(batch)` is a pure function of the batch (jittable).

  Members with equal `config.model` form one group whose parameters are stacked (leading
  axis) and applied with `jax.vmap`; groups are concatenated in the members' order.
  """

  def __init__(self, configs: Sequence[ml_collections.ConfigDict], params: Sequence[Any]):
    if not configs or len(configs) != len(params):
      raise ValueError(
        f'configs, params: expected equal non-zero lengths, got {len(configs)}, {len(params)}'
      )
    keys = [json.dumps(c.model.to_dict(), sort_keys=True, default=str) for c in configs]
    self.size = len(configs)
    self._groups: list[tuple[Task, Any, list[int]]] = []
    for key in dict.fromkeys(keys):
      idx = [i for i, k in enumerate(keys) if k == key]
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[i] for i in idx))
      self._groups.append((build_task(configs[idx[0]]), stacked, idx))
    order = [i for _, _, idx in self._groups for i in idx]
    self._order = np.argsort(order)  # group-concatenated position -> member position

  @classmethod
  def from_runs(cls, point_dirs: Sequence[str | os.PathLike]) -> Ensemble:
    """The ensemble of the finished runs in `point_dirs` (see `load_run`)."""
    runs = [load_run(d) for d in point_dirs]
    return cls([c for c, _ in runs], [p for _, p in runs])

  def member_logits(self, batch: dict) -> jax.Array:
    """`[K, B, T, V]` logits of every member on `batch` (evaluation mode)."""
    rng = jax.random.key(0)  # unused in evaluation mode (no dropout)
    outs = []
    for task, stacked, _ in self._groups:

      def logits(p, task=task):
        return task.loss(p, batch, rng, train=False)[1][1]

      outs.append(jax.vmap(logits)(stacked))
    z = jnp.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]
    return z if len(self._groups) == 1 else z[self._order]


def evaluate(ensemble: Ensemble, batches: Sequence[dict], combine: str = 'logits') -> np.ndarray:
  """Eval loss (nats per token) of the first-k-members ensemble for k = 1..K: `float[K]`.

  Averaged over batches as the train loop's `evaluate` does (per-batch means weighted by the
  batch's real rows, `sum(mask)`, or equally without a mask), so k = 1 reproduces the first
  member's `eval/loss`.
  """
  if combine not in COMBINES:
    raise ValueError(f'combine: expected one of {COMBINES}, got {combine!r}')

  @jax.jit
  def batch_losses(batch):
    z = prefix_logits(ensemble.member_logits(batch), combine)
    mask = batch.get('mask')
    losses = jax.vmap(lambda zk: token_loss(zk, batch['targets'], mask))(z)
    weight = jnp.sum(mask) if mask is not None else jnp.ones(())
    return losses, weight

  results = [jax.device_get(batch_losses(b)) for b in batches]
  weights = np.array([float(w) for _, w in results])
  return np.average(np.stack([losses for losses, _ in results]), axis=0, weights=weights)
