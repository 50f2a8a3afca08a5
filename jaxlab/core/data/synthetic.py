"""Synthetic sequence tasks with known answers, for testing what a sequence model can do.

Each task is a function `(rng, batch_size, seq_len, vocab_size) -> batch` returning int32
`inputs` and `targets` of shape [B, L] and a float32 `mask` that is 1 exactly where the answer
is determined by the inputs (the loss and accuracy are scored there only). `targets[t]` is what
the model should output after reading `inputs[:t + 1]`. Except for `parity`, the top three ids of
the vocabulary are reserved markers (`blank_id`, `delimiter_id`, `query_id`) and data tokens are
drawn from the rest; unscored targets are blanks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from jaxlab.core.data.iterator import checked_state, host_rows
from jaxlab.core.registry import Registry

Batch = dict[str, np.ndarray]
SyntheticTask = Callable[[np.random.Generator, int, int, int], Batch]

SYNTHETIC_TASKS: Registry[SyntheticTask] = Registry('synthetic task')

NUM_RESERVED = 3
SELECTIVE_COPY_MAX_TOKENS = 16  # as in the Mamba paper's selective copying task


def blank_id(vocab_size: int) -> int:
  """The filler / noise token and the unscored target."""
  return vocab_size - 1


def delimiter_id(vocab_size: int) -> int:
  """Marks where the model must start answering."""
  return vocab_size - 2


def query_id(vocab_size: int) -> int:
  """Precedes the key whose value `associative_recall` asks for."""
  return vocab_size - 3


def _check(task: str, seq_len: int, vocab_size: int, min_len: int, min_vocab: int) -> None:
  if seq_len < min_len:
    raise ValueError(f'{task}: expected seq_len >= {min_len}, got {seq_len}')
  if vocab_size < min_vocab:
    raise ValueError(f'{task}: expected vocab_size >= {min_vocab}, got {vocab_size}')


def _batch(inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> Batch:
  return {
    'inputs': inputs.astype(np.int32),
    'targets': targets.astype(np.int32),
    'mask': mask.astype(np.float32),
  }


def _distinct(rng: np.random.Generator, batch_size: int, n: int, k: int) -> np.ndarray:
  """Returns [batch_size, k] draws from range(n) without replacement within each row."""
  return np.argsort(rng.random((batch_size, n)), axis=1)[:, :k]


@SYNTHETIC_TASKS.register('copy')
def copy(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int) -> Batch:
  """Reproduce a string: the sequence `x, delimiter, x` with `len(x) = seq_len // 2`.

  Inputs and targets are that sequence shifted by one, as in language modelling, so the
  scored targets are the second copy of `x` (the model sees its previous answers as inputs).
  """
  _check('copy', seq_len, vocab_size, min_len=2, min_vocab=NUM_RESERVED + 2)
  k = seq_len // 2
  x = rng.integers(0, vocab_size - NUM_RESERVED, (batch_size, k))
  seq = np.full((batch_size, seq_len + 1), blank_id(vocab_size))
  seq[:, :k] = x
  seq[:, k] = delimiter_id(vocab_size)
  seq[:, k + 1 : 2 * k + 1] = x
  mask = np.zeros((batch_size, seq_len))
  mask[:, k : 2 * k] = 1
  return _batch(seq[:, :-1], seq[:, 1:], mask)


@SYNTHETIC_TASKS.register('parity')
def parity(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int) -> Batch:
  """Running parity of random bits (ids 0 and 1): target t is the XOR of inputs[:t + 1].

  Every position is scored (a dense signal, and a model that solves it tracks one bit of state).
  """
  _check('parity', seq_len, vocab_size, min_len=1, min_vocab=2)
  bits = rng.integers(0, 2, (batch_size, seq_len))
  return _batch(bits, np.bitwise_xor.accumulate(bits, axis=1), np.ones(bits.shape))


@SYNTHETIC_TASKS.register('associative_recall')
def associative_recall(
  rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int
) -> Batch:
  """Key-value pairs `k1 v1 k2 v2 ...`, then `query k`: the answer is the value paired with k.

  Keys (distinct within a sequence) come from the lower half of the data ids, values from the
  upper half. There are `min((seq_len - 2) // 2, number of keys)` pairs; leftover positions
  after the query are blanks. Only the position of the queried key is scored.
  """
  _check('associative_recall', seq_len, vocab_size, min_len=4, min_vocab=NUM_RESERVED + 2)
  num_data = vocab_size - NUM_RESERVED
  num_keys = num_data // 2
  n = min((seq_len - 2) // 2, num_keys)
  rows = np.arange(batch_size)
  keys = _distinct(rng, batch_size, num_keys, n)
  values = rng.integers(num_keys, num_data, (batch_size, n))
  asked = rng.integers(0, n, batch_size)
  inputs = np.full((batch_size, seq_len), blank_id(vocab_size))
  inputs[:, 0 : 2 * n : 2] = keys
  inputs[:, 1 : 2 * n : 2] = values
  inputs[:, 2 * n] = query_id(vocab_size)
  inputs[:, 2 * n + 1] = keys[rows, asked]
  targets = np.full((batch_size, seq_len), blank_id(vocab_size))
  targets[:, 2 * n + 1] = values[rows, asked]
  mask = np.zeros((batch_size, seq_len))
  mask[:, 2 * n + 1] = 1
  return _batch(inputs, targets, mask)


@SYNTHETIC_TASKS.register('selective_copy')
def selective_copy(
  rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int
) -> Batch:
  """Data tokens scattered among blanks, then delimiters: output the data tokens in order.

  As in the Mamba paper (Gu & Dao, 2023): `k = min(16, seq_len // 4)` data tokens sit at random
  positions of the first `seq_len - k` positions; the last `k` inputs are delimiters, and their
  targets (the scored ones) are the data tokens in order of appearance.
  """
  _check('selective_copy', seq_len, vocab_size, min_len=4, min_vocab=NUM_RESERVED + 2)
  k = min(SELECTIVE_COPY_MAX_TOKENS, seq_len // 4)
  region = seq_len - k
  positions = np.sort(_distinct(rng, batch_size, region, k), axis=1)
  tokens = rng.integers(0, vocab_size - NUM_RESERVED, (batch_size, k))
  inputs = np.full((batch_size, seq_len), blank_id(vocab_size))
  inputs[np.arange(batch_size)[:, None], positions] = tokens
  inputs[:, region:] = delimiter_id(vocab_size)
  targets = np.full((batch_size, seq_len), blank_id(vocab_size))
  targets[:, region:] = tokens
  mask = np.zeros((batch_size, seq_len))
  mask[:, region:] = 1
  return _batch(inputs, targets, mask)


class SyntheticIterator:
  """Never-ending batches of a synthetic task; batch i is drawn from `default_rng([seed, i])`.

  So the position is just `{'index': i}`, and each host slices its contiguous rows of the same
  global batch.
  """

  def __init__(
    self,
    task: str,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self._task = SYNTHETIC_TASKS.get(task)
    self._rows = host_rows(batch_size, process_index, process_count)
    if seed < 0:
      raise ValueError(f'seed: expected a non-negative integer, got {seed}')
    # Draw one row now, so a too-small seq_len or vocab_size fails here, not at the first batch.
    self._task(np.random.default_rng(0), 1, seq_len, vocab_size)
    self._batch_size = batch_size
    self._seq_len = seq_len
    self._vocab_size = vocab_size
    self._seed = seed
    self._index = 0

  def __iter__(self) -> SyntheticIterator:
    return self

  def __next__(self) -> Batch:
    rng = np.random.default_rng([self._seed, self._index])
    batch = self._task(rng, self._batch_size, self._seq_len, self._vocab_size)
    self._index += 1
    return {name: value[self._rows] for name, value in batch.items()}

  def get_state(self) -> dict[str, int]:
    """Returns the index of the next batch, `{'index': i}`."""
    return {'index': self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state`."""
    self._index = checked_state(state, ('index',))['index']
