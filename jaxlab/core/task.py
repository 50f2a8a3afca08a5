"""Tasks: what the train loop needs to know about a problem, and nothing about a paper.

A task owns the data, the model and the loss. The loop only calls the methods below, so a new
kind of problem (classification, a synthetic sequence task, a certified-robustness loss) is a
registered task, never an edit to the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from jaxlab.core.registry import Registry

Batch = dict[str, np.ndarray]


class DataIterator(Protocol):
  """A never-ending batch iterator whose whole position is a small JSON-able dict."""

  def __next__(self) -> Batch: ...

  def get_state(self) -> dict[str, int]: ...

  def set_state(self, state: Mapping[str, int]) -> None: ...


class Task(Protocol):
  items_per_batch: int  # e.g. tokens per global batch, for throughput
  title: str  # what is being trained, for the report

  def init_params(self, rng: jax.Array) -> Any:
    """Parameters as `nn.LogicallyPartitioned` boxes (called under `jax.eval_shape` first)."""

  def init_model_state(self, rng: jax.Array) -> Any:
    """Non-trainable collections the forward pass updates (BatchNorm `batch_stats`), or `{}`."""

  def loss(
    self,
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    train: bool,
    model_state: Any = None,
  ) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array, Any]]:
    """Returns `(scalar loss, (metrics, model outputs, new model state))`.

    Outputs feed plugin loss terms; the new model state is `model_state` updated by a training
    forward pass (unchanged when `train=False`); `None` stands for `{}`.
    """

  def train_iterator(self, seed: int, process_index: int, process_count: int) -> DataIterator:
    """This host's rows of each global training batch."""

  def eval_batches(self, process_index: int, process_count: int) -> list[Batch]:
    """This host's rows of a fixed, deterministic list of evaluation batches."""


class ModelTask(Task, Protocol):
  """A task whose model methods (pruning, compression, certification) can call directly."""

  model: Any  # the flax module
  model_config: ml_collections.ConfigDict  # `config.model`, the model's own section
  model_size: int  # what the task gives `build_model` (classes, vocabulary size)

  def forward(self, variables: Any, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """The model's outputs (logits) for `inputs`, BatchNorm in eval mode unless `train`."""

  def example_inputs(self, batch: int = 1) -> jax.Array:
    """Zeros shaped like `batch` model inputs (for tracing and shape inference)."""


TASKS: Registry[Callable[[ml_collections.ConfigDict], Task]] = Registry('task')


def build_task(config: ml_collections.ConfigDict) -> Task:
  """Builds `config.task.name`; the task validates its own config sections (data, model)."""
  return TASKS.get(config.task.name, 'task.name')(config)
