"""Metric writers, a training progress bar and non-finite checks.

Writers follow CLU's interface (`write_scalars`, `flush`, `close`) and hold no global state:
`create_writer` builds the writer a run uses, and the run passes it around.

  >>> writer = create_writer(workdir, resume_step=None)
  >>> writer.write_scalars(100, {'train/loss': 2.31})
  >>> writer.close()
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from tqdm import tqdm

_RESERVED_KEYS = ('step', 'time')


class MetricWriter(Protocol):
  """Where a run's scalar metrics go."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (name -> value) at training step `step`."""

  def flush(self) -> None:
    """Pushes buffered records to storage."""

  def close(self) -> None:
    """Flushes and releases the writer's resources."""


class JsonlWriter:
  """Appends one JSON object per `write_scalars` call to a file.

  Each line reads `{"step": s, "time": unix_time, "name": value, ...}` with values as Python
  floats (NaN and Inf are written as Python's `json` writes them). The file is line buffered,
  so a killed run leaves only whole lines behind.

  Args:
    path: the file to write, e.g. `workdir/metrics.jsonl`; parent folders are created.
    resume_step: the step of the checkpoint a resumed run starts from. Lines with a larger step
      (written by the interrupted run after its last checkpoint) and unreadable lines are
      dropped first, by an atomic rewrite, so the file reads like one uninterrupted run.
  """

  def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is not None and self.path.exists():
      _drop_lines_after(self.path, resume_step)
    self._file = self.path.open('a', encoding='utf-8', buffering=1)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    clash = [key for key in _RESERVED_KEYS if key in scalars]
    if clash:
      raise ValueError(f'metric names {clash} are reserved by {type(self).__name__}')
    record = {'step': int(step), 'time': time.time()}
    record.update((key, float(value)) for key, value in scalars.items())
    self._file.write(json.dumps(record) + '\n')

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _drop_lines_after(path: pathlib.Path, step: int) -> None:
  """Rewrites `path` atomically, keeping only readable lines whose step is at most `step`."""
  lines = path.read_text(encoding='utf-8').splitlines(keepends=True)
  kept = [line for line in lines if _line_step(line) <= step]
  if len(kept) == len(lines):
    return
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(''.join(kept), encoding='utf-8')
  os.replace(tmp, path)


def _line_step(line: str) -> float:
  """The step recorded on a JSONL line; +inf for a line that cannot be read (a partial write)."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSONL metrics file (as `JsonlWriter` writes it) into a list of dicts."""
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


class TensorBoardWriter:
  """Writes scalars as TensorBoard events with `tensorboardX` (an optional dependency).

  Args:
    logdir: the folder for the event files.
    resume_step: the step a resumed run starts from; TensorBoard then hides the events the
      interrupted run wrote after it.
  """

  def __init__(self, logdir: str | os.PathLike, *, resume_step: int | None = None):
    from tensorboardX import SummaryWriter

    purge_step = None if resume_step is None else resume_step + 1
    self._writer = SummaryWriter(os.fspath(logdir), purge_step=purge_step)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MultiWriter:
  """Fans every call out to several writers; with none, a writer that does nothing."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def create_writer(
  workdir: str | os.PathLike,
  *,
  resume_step: int | None = None,
  tensorboard: bool = True,
  is_main_process: bool = True,
) -> MetricWriter:
  """The writer for a run in `workdir`.

  Args:
    workdir: the run's folder.
    resume_step: the checkpoint step a resumed run starts from (see `JsonlWriter`).
    tensorboard: also write TensorBoard events to `workdir/tensorboard`, if `tensorboardX`
      is installed.
    is_main_process: False on the other hosts of a multi-host run, which then write nothing.

  Returns:
    A writer to `workdir/metrics.jsonl`, and to TensorBoard when asked for and available.
  """
  if not is_main_process:
    return MultiWriter([])
  workdir = pathlib.Path(workdir)
  writers: list[MetricWriter] = [JsonlWriter(workdir / 'metrics.jsonl', resume_step=resume_step)]
  if tensorboard and importlib.util.find_spec('tensorboardX') is not None:
    writers.append(TensorBoardWriter(workdir / 'tensorboard', resume_step=resume_step))
  return MultiWriter(writers)


class Progress:
  """Progress bar for a training loop: step, loss, steps/s, tokens/s, ETA (tqdm).

  Args:
    total_steps: the step the run ends at.
    initial_step: the step the run starts from (non-zero when resuming).
    tokens_per_step: tokens consumed per step; when positive, the bar shows tokens/s.
    disable: draw nothing (tests, non-main processes).
  """

  def __init__(
    self,
    total_steps: int,
    *,
    initial_step: int = 0,
    tokens_per_step: int = 0,
    disable: bool = False,
  ):
    self.tokens_per_step = tokens_per_step
    self._bar = tqdm(
      total=total_steps,
      initial=initial_step,
      unit='step',
      mininterval=0.5,
      dynamic_ncols=True,
      disable=disable,
    )

  def update(self, step: int, **scalars: float) -> None:
    """Moves the bar to `step`, showing `scalars` (e.g. `loss=...`) after it."""
    if self._bar.disable:
      return
    postfix = {key: float(value) for key, value in scalars.items()}
    stats = self._bar.format_dict
    elapsed = stats['elapsed']
    if self.tokens_per_step and elapsed > 0:
      steps_per_s = (step - stats['initial']) / elapsed
      postfix['tok/s'] = tqdm.format_sizeof(self.tokens_per_step * steps_per_s)
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    self._bar.close()


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or Inf.

  Attributes:
    step: the step at which it happened.
    leaf: the path of the first non-finite leaf of the checked tree, or None if all are finite.
  """

  def __init__(self, message: str, *, step: int, leaf: str | None):
    super().__init__(message)
    self.step = step
    self.leaf = leaf


def first_nonfinite_index(tree: Any) -> jax.Array:
  """Index, in tree-flatten order, of the first leaf holding a NaN or Inf; -1 if none. Jittable.

  The train step computes it on the gradients on device, so the guard names the culprit without
  copying any gradient to the host; non-float leaves are always finite.
  """
  bad = jnp.stack([~jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)])
  return jnp.where(bad.any(), jnp.argmax(bad), -1)
