"""Checkpoints: one orbax `CheckpointManager` holding the train state and the data position.

A checkpoint at step `t` is everything needed to continue exactly as if never interrupted:
the train state (params, optimizer state, step; the RNG is a function of the step) and the
batch iterator's position. Orbax writes each step to a temporary directory and renames it when
complete, so a save cut short by a kill is never mistaken for a checkpoint. A finalised
checkpoint that fails to restore (corrupt or truncated files) is reported and the previous
one is used (the bad one is moved to `corrupt_checkpoints/` beside it, not deleted).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`, restores the latest."""

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int, async_save: bool):
    self.directory = pathlib.Path(directory).absolute()
    self.every = every
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=every,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    """Saves if `step` is a multiple of `every` (or `force`); returns whether a save started."""
    if step % self.every and not force:
      return False
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
      force=force,
    )

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest checkpoint that loads, into the shardings of `abstract_state`.

    Args:
      abstract_state: a tree of `jax.ShapeDtypeStruct` with `.sharding` set.

    Returns:
      `(step, state, data_state)`, or None if the directory holds no usable checkpoint.
    """
    for step in sorted(self.steps(), reverse=True):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
        quarantine = self.directory.parent / 'corrupt_checkpoints' / str(step)
        log.warning(
          'checkpoint at step %d in %s could not be restored (%s: %s); moved it to %s '
          'and trying the previous one',
          step,
          self.directory,
          type(e).__name__,
          e,
          quarantine,
        )
        quarantine.parent.mkdir(exist_ok=True)
        shutil.move(self.directory / str(step), quarantine)
        self._manager.reload()
        continue
      return step, restored['state'], dict(restored['data'])
    return None

  def wait(self) -> None:
    """Blocks until every async save has been written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) describing the arrays of `tree`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
