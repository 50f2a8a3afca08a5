"""Supervised classification of in-memory labelled arrays (images, token sequences).

Data: `config.data.source` names a loader in `jaxlab.core.data.DATASETS` (`digits`, `shapes`,
`cifar10`, `npz`, and whatever a method registers). Model: any `MODELS` entry built with the
number of classes and called as `model.apply(variables, inputs, train=bool)` -> logits.
Loss: mean softmax cross-entropy (nats); metrics: loss and accuracy. BatchNorm statistics are
the task's model state: updated by training steps, used as running averages in evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

import jaxlab.vision  # noqa: F401  (registers the mlp, vgg and resnet models)
from jaxlab.core import data
from jaxlab.core.config import base_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.task import TASKS, Batch, DataIterator
from jaxlab.nn import build_model


@TASKS.register('classification')
class ClassificationTask:
  """Classifies `config.data` with `config.model`."""

  def __init__(self, config: ml_collections.ConfigDict):
    d = config.data
    loader = data.DATASETS.get(d.source, 'data.source')
    try:
      self.data = loader(d)
    except (OSError, ValueError) as e:
      raise ConfigError(f'data: {e}') from None
    self._data_cfg = d
    self.model_config = config.model
    self.model_size = self.data.num_classes
    self.model = build_model(config.model, self.model_size)
    self.items_per_batch = d.batch_size
    self.title = f'{config.model.name} classifier on {self.data.name}'

  def example_inputs(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.data.input_shape), self.data.train_inputs.dtype)

  def forward(self, variables: Any, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    return self.model.apply(variables, inputs, train=train)

  def _init_variables(self, rng: jax.Array) -> dict:
    return dict(self.model.init(rng, self.example_inputs(), train=False))

  def init_params(self, rng: jax.Array) -> Any:
    return self._init_variables(rng)['params']

  def init_model_state(self, rng: jax.Array) -> Any:
    return {k: v for k, v in self._init_variables(rng).items() if k != 'params'}

  def loss(
    self,
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    train: bool,
    model_state: Any = None,
  ) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array, Any]]:
    model_state = model_state or {}
    chex.assert_equal_shape_prefix([batch['inputs'], batch['labels']], 1)
    variables = {'params': params, **model_state}
    if train and model_state:
      logits, updated = self.model.apply(
        variables, batch['inputs'], train=True, rngs={'dropout': rng}, mutable=list(model_state)
      )
      model_state = dict(updated)
    else:
      logits = self.model.apply(variables, batch['inputs'], train=train, rngs={'dropout': rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
    mask = batch.get('mask')
    mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (ce * mask).sum() / denom
    correct = (jnp.argmax(logits, -1) == batch['labels']).astype(ce.dtype)
    metrics = {'loss': loss, 'accuracy': (correct * mask).sum() / denom}
    return loss, (metrics, logits, model_state)

  def train_iterator(self, seed: int, process_index: int, process_count: int) -> DataIterator:
    return data.ArrayIterator(
      self.data.train_inputs,
      self.data.train_labels,
      batch_size=self._data_cfg.batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )

  def eval_batches(self, process_index: int, process_count: int) -> list[Batch]:
    """The whole test split in order (at most `data.eval_batches` batches), padding masked."""
    return data.array_eval_batches(
      self.data.test_inputs,
      self.data.test_labels,
      batch_size=self._data_cfg.batch_size,
      max_batches=self._data_cfg.eval_batches,
      process_index=process_index,
      process_count=process_count,
    )


def classification_config(
  source: str,
  model: ml_collections.ConfigDict,
  *,
  steps: int,
  batch_size: int = 64,
  lr: float = 3e-3,
  val_fraction: float = 0.2,
) -> ml_collections.ConfigDict:
  """A full config for `model` on `data.source=source`: AdamW, warmup 5% then cosine, the whole
  test split evaluated 5 times during training, checkpoints every quarter."""
  c = base_config()
  c.task.name = 'classification'
  c.data.source, c.data.val_fraction = source, val_fraction
  c.data.batch_size, c.data.eval_batches = batch_size, 1000
  c.model = model
  c.optim.lr, c.optim.warmup_steps = lr, max(steps // 20, 1)
  c.train.steps, c.train.eval_every = steps, max(steps // 5, 1)
  c.train.log_every = max(min(steps // 20, 50), 1)
  c.checkpoint.every = max(steps // 4, 1)
  return c
