"""Vectorised sweep points: K runs that differ only in hyperparameters that change no shape,
trained together as one program.

The K train states are stacked on a leading `replica` axis and the train step is
`jax.vmap(step, spmd_axis_name='replica')`, sharded over a mesh
`('replica', 'data', 'fsdp', 'model')`: the replica axis takes `gcd(K, devices)` devices and each
replica keeps the config's own data/fsdp/model layout on the rest. So one accelerator (or a pod)
trains many small models at once instead of one after another, and each replica computes what its
separate run would (same initialisation key, same step keys, same batches: its own seed's data
order).

What may differ between the points (`VECTOR_FIELDS`): the seed (initialisation, dropout and data
order), the peak learning rate and the weight decay (traced into the optimizer, built per
replica inside the vmap: `make_optimizer(..., lr=, weight_decay=)`) and the initialisation scale
`model.init_std` (replicas are initialised per distinct value). Anything else changes the
program and is a separate group.

Each point still gets an ordinary run directory: `config.json`, `metrics.jsonl`, its own final
checkpoint, `final_metrics.json` and `report.md`, so downstream tools (ensembles, distillation,
`load_point_params`) cannot tell how it was trained. The group's stacked checkpoints live in the
group directory, and an interrupted group resumes from them. A replica whose loss or gradient
turns non-finite is recorded (`train/nonfinite_step`) and the others train on: a sweep over
learning rates is expected to diverge at its high end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlab.core import config as config_lib
from jaxlab.core import metrics as metrics_lib
from jaxlab.core import sharding
from jaxlab.core.checkpoint import Checkpointer, abstract_like
from jaxlab.core.errors import ConfigError
from jaxlab.core.optim import make_optimizer
from jaxlab.core.plugins import build_plugins, path_name
from jaxlab.core.task import Task, build_task
from jaxlab.core.train import (
  Interrupted,
  SignalCatcher,
  average_eval,
  eval_metrics,
  init_and_step_rngs,
  make_train_step,
  run_size,
  save_now,
  summarise_window,
  write_run_report,
)
from jaxlab.core.train_state import TrainState, train_state_shardings

log = logging.getLogger(__name__)

VECTOR_FIELDS = ('seed', 'optim.lr', 'optim.weight_decay', 'model.init_std')


def program_key(config: ml_collections.ConfigDict) -> str:
  """The config without `VECTOR_FIELDS`: points with equal keys can be vectorised together."""
  d = config.to_dict()
  for field in VECTOR_FIELDS:
    *parents, leaf = field.split('.')
    node = d
    for p in parents:
      node = node[p]
    node.pop(leaf, None)
  d.pop('sweep', None)
  return json.dumps(d, sort_keys=True, default=str)


def replica_mesh(config: ml_collections.ConfigDict, replicas: int) -> Mesh:
  """`('replica', 'data', 'fsdp', 'model')`: `gcd(replicas, devices)` devices on the replica axis,
  the config's mesh over the rest."""
  n = jax.device_count()
  r = math.gcd(replicas, n)
  sizes = config_lib.mesh_shape(config.mesh, n // r)
  axes = ('replica', *config_lib.MESH_AXES)
  shape = (r, *(sizes[a] for a in config_lib.MESH_AXES))
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes))


def _stacked(s: NamedSharding) -> NamedSharding:
  return NamedSharding(s.mesh, PartitionSpec('replica', *s.spec))


class _Hyper:
  """The per-replica values of `VECTOR_FIELDS` that enter the traced program."""

  def __init__(self, configs: Sequence[ml_collections.ConfigDict]):
    self.seed = np.array([c.seed for c in configs], np.int32)
    self.lr = np.array([c.optim.lr for c in configs], np.float32)
    self.weight_decay = np.array([c.optim.weight_decay for c in configs], np.float32)

  def arrays(self) -> dict[str, np.ndarray]:
    return {'seed': self.seed, 'lr': self.lr, 'weight_decay': self.weight_decay}


def _check_group(configs: Sequence[ml_collections.ConfigDict], devices_per_replica: int) -> None:
  for c in configs:
    config_lib.validate(c, devices_per_replica)
  keys = [program_key(c) for c in configs]
  for c, k in zip(configs[1:], keys[1:], strict=True):
    if k != keys[0]:
      a, b = json.loads(keys[0]), json.loads(k)
      field = _first_difference(a, b)
      raise ConfigError(
        f'sweep.vectorize: points trained together may differ only in {VECTOR_FIELDS}; '
        f'{field} differs ({_lookup(a, field)!r} vs {_lookup(b, field)!r}) for seed={c.seed}'
      )


def _first_difference(a: Any, b: Any, prefix: str = '') -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        return _first_difference(a.get(k), b.get(k), f'{prefix}{k}.')
  return prefix.rstrip('.')


def _lookup(d: dict, field: str) -> Any:
  for k in field.split('.'):
    d = d.get(k) if isinstance(d, dict) else None
  return d


def train_vectorized(
  configs: Sequence[ml_collections.ConfigDict],
  point_dirs: Sequence[str | os.PathLike],
  group_dir: str | os.PathLike,
) -> list[dict]:
  """Trains the K points `configs` as one vmapped program; returns their final metrics.

  Args:
    configs: point configs that differ only in `VECTOR_FIELDS`.
    point_dirs: each point's run directory (written as a separate run would write it).
    group_dir: the group's directory (its stacked checkpoints; resumed from if present).

  Returns:
    One final-metrics dict per point, as `train_and_evaluate` returns.
  """
  start_time = time.perf_counter()
  k = len(configs)
  if k != len(point_dirs):
    raise ValueError(f'expected one point dir per config, got {len(point_dirs)} for {k}')
  base = configs[0]
  mesh = replica_mesh(base, k)
  _check_group(configs, jax.device_count() // mesh.shape['replica'])
  rules = sharding.rules_from_config(base.mesh)
  task = build_task(base)
  plugins = build_plugins(base, task)
  hyper = _Hyper(configs)
  total_steps, accum = base.train.steps, base.optim.grad_accum_steps
  main_process = jax.process_index() == 0
  point_dirs = [pathlib.Path(d) for d in point_dirs]
  group_dir = pathlib.Path(group_dir)

  def build_tx(lr, weight_decay):
    tx, schedule = make_optimizer(base.optim, total_steps, lr=lr, weight_decay=weight_decay)
    for plugin in plugins.values():
      if plugin.wrap_optimizer is not None:
        tx = plugin.wrap_optimizer(tx)
    return tx, schedule

  # ----------------------------------------------------------------------------- State
  # Shardings of one replica's state (any lr/wd: they change no shape), then stacked.
  one_tx, _ = build_tx(base.optim.lr, base.optim.weight_decay)
  key0 = jax.random.key(0)
  one = train_state_shardings(
    lambda: task.init_params(key0), one_tx, mesh, rules, lambda: task.init_model_state(key0)
  )
  state_shardings = jax.tree.map(_stacked, one)
  hyper_sharding = NamedSharding(mesh, PartitionSpec('replica'))
  replicated = sharding.replicated(mesh)

  def init_with(init_task: Task):
    def init(seed, lr, weight_decay):
      init_rng, _ = init_and_step_rngs(seed)
      params = nn.unbox(init_task.init_params(init_rng))
      return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=build_tx(lr, weight_decay)[0].init(params),
        model_state=init_task.init_model_state(init_rng),
      )

    return init

  def init_all() -> TrainState:
    # Replicas are initialised per distinct `model.init_std` (it lives in the module).
    stds = [c.model.get('init_std') for c in configs]
    order, parts = [], []
    for std in dict.fromkeys(stds):
      idx = [i for i, s in enumerate(stds) if s == std]
      init_task = task if std == stds[0] else build_task(configs[idx[0]])
      args = (hyper.seed[idx], hyper.lr[idx], hyper.weight_decay[idx])
      parts.append(jax.vmap(init_with(init_task))(*args))
      order += idx
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
    inverse = np.argsort(order)
    return jax.tree.map(lambda x: x[inverse], stacked)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init_all, out_shardings=state_shardings)()
  hp = jax.device_put(hyper.arrays(), hyper_sharding)

  def one_step(state, batch, hp):
    tx, schedule = build_tx(hp['lr'], hp['weight_decay'])
    _, step_rng = init_and_step_rngs(hp['seed'])
    return make_train_step(task, plugins, tx, schedule, step_rng, accum)(state, batch)

  train_step = jax.jit(
    jax.vmap(one_step, spmd_axis_name='replica'),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    jax.vmap(
      lambda state, batch: eval_metrics(task, state, batch, rng=key0),
      in_axes=(0, None),
      spmd_axis_name='replica',
    ),
    out_shardings=replicated,
  )

  # ----------------------------------------------------------------------------- Input
  # Every host builds each replica's whole global batch and hands each device its slice, so the
  # replica axis may span hosts.
  iters = [task.train_iterator(c.seed, 0, 1) for c in configs]
  eval_batches = [_put(b, mesh, rules) for b in task.eval_batches(0, 1)]

  def next_batch() -> dict:
    host = [next(it) for it in iters]
    return _put({key: np.stack([h[key] for h in host]) for key in host[0]}, mesh, rules, True)

  def evaluate(state: TrainState) -> list[dict[str, float]]:
    results = jax.device_get([eval_step(state, b) for b in eval_batches])
    return [
      average_eval([({m: v[i] for m, v in r.items()}, w[i]) for r, w in results]) for i in range(k)
    ]

  # ----------------------------------------------------------------------------- Checkpoint
  if main_process:
    group_dir.mkdir(parents=True, exist_ok=True)
    for c, d in zip(configs, point_dirs, strict=True):
      d.mkdir(parents=True, exist_ok=True)
      config_lib.save_config(c, d)
  ckpt = Checkpointer(
    group_dir / 'checkpoints',
    every=base.checkpoint.every,
    keep=base.checkpoint.keep,
    async_save=base.checkpoint.async_save,
  )
  diverged: dict[int, int] = {}  # replica -> first non-finite step

  def data_state() -> dict:
    return {
      'iterators': [it.get_state() for it in iters],
      'diverged': {str(i): s for i, s in diverged.items()},
    }

  restored = ckpt.restore_latest(abstract_like(state))
  start_step = 0
  if restored is not None:
    start_step, state, saved = restored
    for it, s in zip(iters, saved['iterators'], strict=True):
      it.set_state(s)
    diverged.update({int(i): s for i, s in saved['diverged'].items()})
    log.info('vectorised group resumed from step %d', start_step)
  writers = [
    metrics_lib.create_writer(
      d,
      resume_step=start_step if restored else None,
      tensorboard=base.metrics.tensorboard,
      is_main_process=main_process,
    )
    for d in point_dirs
  ]

  # ----------------------------------------------------------------------------- Loop
  param_names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(one.params)[0]]
  progress = metrics_lib.Progress(
    total_steps,
    initial_step=start_step,
    tokens_per_step=k * task.items_per_batch,
    disable=not (base.train.progress and main_process),
  )
  pending: list[tuple[int, dict]] = []
  train_loss: list[float | None] = [None] * k
  last_time, last_step = time.perf_counter(), start_step
  step = start_step
  with SignalCatcher() as signals, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < total_steps:
      state, step_metrics = train_step(state, next_batch(), hp)
      step += 1
      pending.append((step, step_metrics))
      if (
        step % base.train.log_every == 0
        or step % base.checkpoint.every == 0
        or step == total_steps
        or signals.caught
      ):
        now = time.perf_counter()
        steps_per_sec = (step - last_step) / (now - last_time)
        last_time, last_step = now, step
        host = [(s, jax.device_get(m)) for s, m in pending]
        pending = []
        for i in range(k):
          if i in diverged:
            continue
          window = [(s, {name: v[i] for name, v in m.items()}) for s, m in host]
          try:
            scalars = summarise_window(window, param_names, base.train.check_finite)
          except metrics_lib.NonFiniteError as e:
            diverged[i] = e.step
            log.warning('replica %d (%s) diverged: %s', i, point_dirs[i].name, e)
            continue
          scalars['perf/steps_per_sec'] = steps_per_sec
          scalars['perf/items_per_sec'] = steps_per_sec * task.items_per_batch
          writers[i].write_scalars(step, scalars)
          train_loss[i] = scalars['train/loss']
        progress.update(
          step, loss=float(np.nanmean([x for x in train_loss if x is not None] or [np.nan]))
        )
      if step % base.train.eval_every == 0 and step < total_steps:
        for i, scalars in enumerate(evaluate(state)):
          if i not in diverged:
            writers[i].write_scalars(step, scalars)
      ckpt.save(step, state, data_state())
      if signals.caught:
        save_now(ckpt, step, state, data_state())
        for w in writers:
          w.flush()
        raise Interrupted(signals.caught, step, group_dir)
    progress.close()
  save_now(ckpt, step, state, data_state())
  ckpt.close()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    finals = evaluate(state)
  wall = time.perf_counter() - start_time
  # Each point as a separate run: its own state on the config's ordinary mesh.
  point_mesh = sharding.make_mesh(base.mesh)
  point_shardings = train_state_shardings(
    lambda: task.init_params(key0), one_tx, point_mesh, rules, lambda: task.init_model_state(key0)
  )
  for i in range(k):
    state_i = jax.device_put(
      jax.device_get(jax.tree.map(lambda x, i=i: x[i], state)), point_shardings
    )
    final = {**run_size(state_i.params, step, task.items_per_batch), **finals[i]}
    if train_loss[i] is not None:
      final['train/loss'] = train_loss[i]
    if i in diverged:
      final['train/nonfinite_step'] = diverged[i]
    with jax.set_mesh(point_mesh), nn.logical_axis_rules(rules):
      for plugin in plugins.values():
        if plugin.finalize is not None:
          final.update(plugin.finalize(task, state_i, task.eval_batches(0, 1)))
    writers[i].write_scalars(step, {m: v for m, v in final.items() if m.startswith('eval/')})
    writers[i].close()
    point_ckpt = Checkpointer(point_dirs[i] / 'checkpoints', every=1, keep=1, async_save=False)
    point_ckpt.save(step, state_i, iters[i].get_state(), force=True)
    point_ckpt.close()
    final['wall_time_s'] = wall  # the group's: its points trained concurrently
    final['vectorized/replicas'] = k
    if main_process:
      write_run_report(configs[i], point_dirs[i], task, final, plugins)
    finals[i] = final
  return finals


def _put(batch: dict, mesh: Mesh, rules: sharding.Rules, stacked: bool = False) -> dict:
  """Global host arrays -> arrays sharded over the batch axes (after `replica` if `stacked`)."""
  out = {}
  for key, value in batch.items():
    spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (value.ndim - 1 - stacked), rules)
    spec = PartitionSpec('replica', *spec) if stacked else spec
    out[key] = jax.make_array_from_callback(
      value.shape, NamedSharding(mesh, spec), lambda idx, v=value: v[idx]
    )
  return out
