"""Labelled array datasets (images, token sequences) and their resumable batch iterator.

A dataset is a `LabelledArrays`: train and test inputs with integer labels, held in memory.
`DATASETS` maps `config.data.source` to a loader `(data_config) -> LabelledArrays`; the image
loaders live in `jaxlab.core.data.images`, and a method that needs another kind of labelled data
registers its own loader there rather than writing a second pipeline.

`ArrayIterator` visits the training examples in a per-epoch permutation drawn from
`np.random.default_rng([seed, epoch])`, so its whole position is `{'epoch', 'index'}` exactly as
for `WindowIterator`: a resumed run sees the batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np

from jaxlab.core.data.iterator import checked_state, host_rows
from jaxlab.core.registry import Registry


@dataclasses.dataclass(frozen=True)
class LabelledArrays:
  """In-memory train/test split; inputs are `[N, ...]`, labels int32 `[N]` in `[0, classes)`."""

  name: str
  train_inputs: np.ndarray
  train_labels: np.ndarray
  test_inputs: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    for split in ('train', 'test'):
      x, y = getattr(self, f'{split}_inputs'), getattr(self, f'{split}_labels')
      if len(x) != len(y):
        raise ValueError(f'{self.name} {split}: {len(x)} inputs but {len(y)} labels')
      if len(y) == 0:
        raise ValueError(f'{self.name} {split}: expected at least one example, got none')
      if y.min() < 0 or y.max() >= self.num_classes:
        raise ValueError(
          f'{self.name} {split}: labels expected in [0, {self.num_classes}), '
          f'got [{y.min()}, {y.max()}]'
        )
    if self.train_inputs.shape[1:] != self.test_inputs.shape[1:]:
      raise ValueError(
        f'{self.name}: train and test inputs differ in shape: '
        f'{self.train_inputs.shape[1:]} vs {self.test_inputs.shape[1:]}'
      )

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train_inputs.shape[1:])


DatasetLoader = Callable[[ml_collections.ConfigDict], LabelledArrays]
DATASETS: Registry[DatasetLoader] = Registry('dataset')


def stratified_split(
  labels: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Train and test indices with each class split in the same proportion (deterministic)."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test fraction: expected a value in (0, 1), got {test_fraction}')
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = max(1, round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class ArrayIterator:
  """Seeded, shuffled, never-ending batches `{'inputs', 'labels'}` of in-memory examples.

  Epoch `e` visits the examples in `default_rng([seed, e]).permutation(N)`; a batch that runs
  past the end of an epoch continues into the next, so every batch is full.
  """

  def __init__(
    self,
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if len(inputs) != len(labels) or len(inputs) == 0:
      raise ValueError(
        f'expected equal, non-zero numbers of inputs and labels, got '
        f'{len(inputs)} and {len(labels)}'
      )
    if seed < 0:
      raise ValueError(f'seed: expected a non-negative integer, got {seed}')
    self._rows = host_rows(batch_size, process_index, process_count)
    self._inputs, self._labels = inputs, labels.astype(np.int32)
    self._batch_size, self._seed = batch_size, seed
    self._epoch, self._index = 0, 0
    self._order_epoch, self._order = -1, np.empty(0, np.int64)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch != self._order_epoch:
      self._order = np.random.default_rng([self._seed, epoch]).permutation(len(self._labels))
      self._order_epoch = epoch
    return self._order

  def __iter__(self) -> ArrayIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    chunks, needed = [], self._batch_size
    while needed:
      order = self._epoch_order(self._epoch)
      chunk = order[self._index : self._index + needed]
      chunks.append(chunk)
      needed -= len(chunk)
      self._index += len(chunk)
      if self._index == len(order):
        self._epoch, self._index = self._epoch + 1, 0
    idx = np.concatenate(chunks)[self._rows]
    return {'inputs': self._inputs[idx], 'labels': self._labels[idx]}

  def get_state(self) -> dict[str, int]:
    return {'epoch': self._epoch, 'index': self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    state = checked_state(state, ('epoch', 'index'))
    if state['index'] >= len(self._labels):
      raise ValueError(
        f'iterator state: index {state["index"]} is past the {len(self._labels)} examples; '
        'was the state saved with different data?'
      )
    self._epoch, self._index = state['epoch'], state['index']


def array_eval_batches(
  inputs: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  max_batches: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """In-order batches covering every example once; the last batch is padded with `mask = 0`.

  Each batch has `{'inputs', 'labels', 'mask'}`, so averages weighted by the mask are exact
  over the whole split whatever the batch size.
  """
  rows = host_rows(batch_size, process_index, process_count)
  n = len(labels)
  num_batches = -(-n // batch_size)
  if max_batches is not None:
    if max_batches < 1:
      raise ValueError(f'max_batches: expected a positive integer or None, got {max_batches}')
    num_batches = min(num_batches, max_batches)
  out = []
  for b in range(num_batches):
    idx = np.arange(b * batch_size, (b + 1) * batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)[rows]
    out.append({'inputs': inputs[idx], 'labels': labels[idx].astype(np.int32), 'mask': mask[rows]})
  return out
