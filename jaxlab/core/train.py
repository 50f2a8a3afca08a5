"""The one train loop: `train_and_evaluate(config, workdir)`.

Read top to bottom: setup, model and optimizer, input, checkpoint/resume, steps, loop, report.
The loop never knows which paper it runs: the task (`config.task.name`) owns data, model and
loss; plugins (`config.plugins`) wrap the optimizer or add loss terms.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxlab.core import config as config_lib
from jaxlab.core import metrics as metrics_lib
from jaxlab.core import report as report_lib
from jaxlab.core import sharding
from jaxlab.core.checkpoint import Checkpointer, abstract_like
from jaxlab.core.errors import UserError
from jaxlab.core.optim import make_optimizer
from jaxlab.core.plugins import Plugin, build_plugins, path_name
from jaxlab.core.task import Task, build_task
from jaxlab.core.train_state import TrainState, create_train_state

log = logging.getLogger(__name__)


class Interrupted(UserError):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can resume from it."""

  def __init__(self, signum: int, step: int, workdir: pathlib.Path):
    self.signum, self.step = signum, step
    super().__init__(
      f'{signal.Signals(signum).name} at step {step}: checkpoint saved; run the '
      f'same command again to resume from {workdir}'
    )


@dataclasses.dataclass(frozen=True)
class Training:
  """Everything built from a config before the first step (shared with the benchmarks)."""

  task: Task
  mesh: Mesh
  rules: sharding.Rules
  state: TrainState  # freshly initialised, sharded
  state_shardings: TrainState
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # jitted, donates state
  step_rng: jax.Array
  plugins: dict[str, Plugin]


def build_training(config: ml_collections.ConfigDict) -> Training:
  """Validates `config`, builds task, mesh, optimizer (with plugins), state and the jitted step."""
  config_lib.validate(config, jax.device_count())
  task = build_task(config)  # validates data and model sections
  plugins = build_plugins(config, task)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  for plugin in plugins.values():
    if plugin.wrap_optimizer is not None:
      tx = plugin.wrap_optimizer(tx)
  init_rng, step_rng = init_and_step_rngs(config.seed)
  state, state_shardings = create_train_state(
    lambda: task.init_params(init_rng),
    tx,
    mesh,
    rules,
    lambda: task.init_model_state(init_rng),
  )
  train_step = jax.jit(
    make_train_step(task, plugins, tx, schedule, step_rng, config.optim.grad_accum_steps),
    out_shardings=(state_shardings, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  return Training(task, mesh, rules, state, state_shardings, train_step, step_rng, plugins)


def init_and_step_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
  """The keys of parameter initialisation and of the steps (the key of step t folds in t)."""
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  return init_rng, step_rng


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns final metrics."""
  # ----------------------------------------------------------------------------- Setup
  start_time = time.perf_counter()
  workdir = pathlib.Path(workdir)
  training = build_training(config)  # every config error is raised here, before any file
  task, mesh, rules, state = training.task, training.mesh, training.rules, training.state
  main_process = jax.process_index() == 0
  if main_process:
    workdir.mkdir(parents=True, exist_ok=True)
    config_lib.save_config(config, workdir)
  total_steps = config.train.steps
  param_names = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]]

  # ----------------------------------------------------------------------------- Input
  train_iter = task.train_iterator(config.seed, jax.process_index(), jax.process_count())
  eval_batches = task.eval_batches(jax.process_index(), jax.process_count())

  # ----------------------------------------------------------------------------- Checkpoint
  ckpt = Checkpointer(
    workdir / 'checkpoints',
    every=config.checkpoint.every,
    keep=config.checkpoint.keep,
    async_save=config.checkpoint.async_save,
  )
  restored = ckpt.restore_latest(abstract_like(state))
  start_step = 0
  if restored is not None:
    start_step, state, data_state = restored
    train_iter.set_state(data_state)
    log.info('resumed from step %d', start_step)
  writer = metrics_lib.create_writer(
    workdir,
    resume_step=start_step if restored else None,
    tensorboard=config.metrics.tensorboard,
    is_main_process=main_process,
  )

  # ----------------------------------------------------------------------------- Steps
  eval_step = jax.jit(
    functools.partial(eval_metrics, task, rng=training.step_rng),
    out_shardings=sharding.replicated(mesh),
  )

  def evaluate(state: TrainState) -> dict[str, float]:
    return average_eval(
      [eval_step(state, sharding.shard_batch(b, mesh, rules)) for b in eval_batches]
    )

  # ----------------------------------------------------------------------------- Loop
  progress = metrics_lib.Progress(
    total_steps,
    initial_step=start_step,
    tokens_per_step=task.items_per_batch,
    disable=not (config.train.progress and main_process),
  )
  pending: list[tuple[int, dict]] = []
  last_log_time, last_log_step = time.perf_counter(), start_step
  train_loss = None  # the last logging window's mean
  step = start_step
  with SignalCatcher() as signals, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < total_steps:
      batch = sharding.shard_batch(next(train_iter), mesh, rules)
      state, step_metrics = training.train_step(state, batch)
      step += 1
      pending.append((step, step_metrics))
      # Checking the window before every checkpoint means no non-finite state is ever saved.
      if (
        step % config.train.log_every == 0
        or step % config.checkpoint.every == 0
        or step == total_steps
        or signals.caught
      ):
        scalars = summarise_window(pending, param_names, config.train.check_finite)
        pending = []
        now = time.perf_counter()
        scalars['perf/steps_per_sec'] = (step - last_log_step) / (now - last_log_time)
        scalars['perf/items_per_sec'] = scalars['perf/steps_per_sec'] * task.items_per_batch
        last_log_time, last_log_step = now, step
        writer.write_scalars(step, scalars)
        train_loss = scalars['train/loss']
        progress.update(step, loss=train_loss)
      if step % config.train.eval_every == 0 and step < total_steps:
        writer.write_scalars(step, evaluate(state))
      ckpt.save(step, state, train_iter.get_state())
      if signals.caught:
        save_now(ckpt, step, state, train_iter.get_state())
        writer.flush()
        raise Interrupted(signals.caught, step, workdir)
    progress.close()
    final = {**run_size(state.params, step, task.items_per_batch), **evaluate(state)}
    if train_loss is not None:
      final['train/loss'] = train_loss
    for plugin in training.plugins.values():
      if plugin.finalize is not None:
        final.update(plugin.finalize(task, state, eval_batches))
  writer.write_scalars(step, {k: v for k, v in final.items() if k.startswith('eval/')})
  writer.close()
  save_now(ckpt, step, state, train_iter.get_state())
  ckpt.close()
  final['wall_time_s'] = time.perf_counter() - start_time  # of this invocation only

  # ----------------------------------------------------------------------------- Report
  if main_process:
    write_run_report(config, workdir, task, final, training.plugins)
  return final


def eval_metrics(
  task: Task, state: TrainState, batch: dict, *, rng: jax.Array
) -> tuple[dict, jax.Array]:
  """The task's metrics on one eval batch and the batch's weight: its number of real rows
  (`mask` marks the padding of a last batch)."""
  metrics = task.loss(state.params, batch, rng, train=False, model_state=state.model_state)[1][0]
  return metrics, jnp.sum(batch['mask']) if 'mask' in batch else jnp.ones(())


def average_eval(results: list[tuple[dict, Any]]) -> dict[str, float]:
  """`eval/<metric>`: the row-weighted mean of `eval_metrics` over the eval batches."""
  weights = np.array([float(w) for _, w in results])
  return {
    f'eval/{k}': float(np.average([float(m[k]) for m, _ in results], weights=weights))
    for k in results[0][0]
  }


def run_size(params: Any, steps: int, items_per_batch: int) -> dict[str, float]:
  """What a scaling law needs of a run: parameters `N` (all, and non-embedding: leaves with no
  path component containing 'embed', as in Kaplan et al., 2020), items seen `D` (tokens for an
  LM) and the training compute `C ≈ 6·N·D` (Kaplan et al., Sec. 2.1; Hoffmann et al., 2022)."""
  total = non_embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(leaf.shape))
    total += size
    if 'embed' not in path_name(path):
      non_embedding += size
  items = steps * items_per_batch
  return {
    'train/steps': steps,
    'train/items': items,
    'train/flops': 6.0 * total * items,
    'params/count': total,
    'params/non_embedding': non_embedding,
  }


def make_train_step(
  task: Task,
  plugins: dict[str, Plugin],
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  step_rng: jax.Array,
  accum_steps: int,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The train step (to be jitted): one optimizer update, the batch optionally split into
  `accum_steps` micro-batches whose gradients are averaged in a `lax.scan`.

  `train_and_evaluate` and `benchmarks/lm_throughput.py` both use it, so the benchmark times
  exactly what training runs.
  """

  def loss_fn(params, model_state, batch, rng):
    loss, (metrics, outputs, model_state) = task.loss(
      params, batch, rng, train=True, model_state=model_state
    )
    for name, plugin in plugins.items():
      if plugin.loss_term is not None:
        term = plugin.loss_term(params, batch, outputs)
        metrics[f'{name}_loss'] = term
        loss = loss + term
    return loss, (metrics, model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(step_rng, state.step)
    if accum_steps == 1:
      (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
    else:
      # Micro-batch a takes rows a, a+A, a+2A, ...: each stays spread over the batch shards.
      micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
        batch,
      )

      def accumulate(carry, xs):
        grads_sum, model_state = carry
        i, mb = xs
        (loss, (metrics, model_state)), grads = grad_fn(
          state.params, model_state, mb, jax.random.fold_in(rng, i)
        )
        return (jax.tree.map(jnp.add, grads_sum, grads), model_state), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, model_state), (losses, metrics) = jax.lax.scan(
        accumulate, (zeros, state.model_state), (jnp.arange(accum_steps), micro)
      )
      grads = jax.tree.map(lambda g: g / accum_steps, grads)
      loss, metrics = losses.mean(), jax.tree.map(jnp.mean, metrics)
    updates, opt_state = tx.update(
      grads, state.opt_state, state.params, batch=batch, model_state=state.model_state
    )
    params = optax.apply_updates(state.params, updates)
    metrics = {
      **{f'train/{k}': v for k, v in metrics.items()},
      'train/loss': loss,
      'train/grad_norm': optax.tree.norm(grads),
      'train/lr': schedule(state.step),
      'nonfinite_grad_leaf': metrics_lib.first_nonfinite_index(grads),
    }
    new_state = TrainState(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
    )
    for plugin in plugins.values():
      if plugin.metrics is not None:
        metrics.update(plugin.metrics(new_state))
    return new_state, metrics

  return step_fn


def summarise_window(pending: list[tuple[int, dict]], param_names: list[str], check: bool) -> dict:
  """Means over the logging window; stops at the first step with a non-finite loss or gradient."""
  host = [(s, jax.device_get(m)) for s, m in pending]
  if check:
    for s, m in host:
      loss, leaf = float(m['train/loss']), int(m['nonfinite_grad_leaf'])
      if not np.isfinite(loss) or leaf >= 0:
        where = (
          f'first non-finite gradient leaf: {param_names[leaf]}'
          if leaf >= 0
          else 'all gradient leaves finite'
        )
        raise metrics_lib.NonFiniteError(
          f'non-finite training at step {s} (loss {loss}); {where}. Nothing from this step on '
          f'was checkpointed.',
          step=s,
          leaf=param_names[leaf] if leaf >= 0 else None,
        )
  keys = [k for k in host[-1][1] if k != 'nonfinite_grad_leaf']
  return {k: float(np.mean([m[k] for _, m in host])) for k in keys}


def save_now(ckpt: Checkpointer, step: int, state: TrainState, data_state: dict) -> None:
  """Saves `step` unless already saved, and waits until every save is written."""
  if step not in ckpt.steps():
    ckpt.save(step, state, data_state, force=True)
  ckpt.wait()


class SignalCatcher:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step (main thread only)."""

  def __init__(self):
    self.caught = 0
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.caught = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def write_run_report(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  task: Task,
  final: dict,
  plugins: dict[str, Plugin] | None = None,
) -> pathlib.Path:
  """`final_metrics.json`, loss-curve PNGs and `report.md` (with the plugins' sections and
  PNGs) for a finished run."""
  (workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2, sort_keys=True) + '\n')
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl')
  plots = [
    report_lib.plot_curves(
      records, ['train/loss', 'eval/loss'], workdir / 'loss.png', title='loss (nats per item)'
    )
  ]
  if any('eval/bits_per_byte' in r for r in records):
    plots.append(
      report_lib.plot_curves(
        records,
        ['train/bits_per_byte', 'eval/bits_per_byte'],
        workdir / 'bits_per_byte.png',
        title='bits per byte',
      )
    )
  sections = []
  for plugin in (plugins or {}).values():
    if plugin.report is not None:
      part = plugin.report(workdir, final)
      sections += part.sections
      plots += part.plots
  claim = report_lib.check_claim(config.report.claim, final)
  title = config.report.title or task.title
  return report_lib.write_report(
    workdir,
    title=title,
    config=config,
    final_metrics=final,
    plots=plots,
    claim=claim,
    sections=sections,
  )
