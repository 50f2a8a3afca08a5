"""Training and evaluation batches of contiguous token windows.

The training order is a pure function of (seed, epoch, index), so the iterator's whole position
is `{'epoch': e, 'index': i}`: a resumed run restores it and sees exactly the batches it would
have seen, and no data-loader state has to be checkpointed. Every host computes the same global
batch order and reads only its own rows.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import numpy as np


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """Returns this host's contiguous row slice of a global batch of `batch_size` rows."""
  if batch_size < 1:
    raise ValueError(f'batch_size: expected a positive integer, got {batch_size}')
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f'expected 0 <= process_index < process_count, got {process_index} and {process_count}'
    )
  if batch_size % process_count:
    raise ValueError(
      f'batch_size: expected a multiple of process_count={process_count}, got {batch_size}'
    )
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def checked_state(state: Mapping[str, int], keys: tuple[str, ...]) -> dict[str, int]:
  """Returns `state` as non-negative Python ints, or raises if its keys are not `keys`."""
  if set(state) != set(keys):
    raise ValueError(f'iterator state: expected keys {sorted(keys)}, got {sorted(state)}')
  out = {}
  for key in keys:
    try:
      value = operator.index(state[key])
    except TypeError:
      raise ValueError(
        f'iterator state[{key!r}]: expected an integer, got {state[key]!r}'
      ) from None
    if value < 0:
      raise ValueError(f'iterator state[{key!r}]: expected >= 0, got {value}')
    out[key] = value
  return out


def _window_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
  return {'inputs': windows[:, :-1], 'targets': windows[:, 1:]}


class WindowIterator:
  """Seeded, shuffled batches of contiguous token windows from a 1-D token array.

  Epoch `e` cuts the tokens into non-overlapping windows starting at `offset + k * seq_len`,
  where the offset in [0, seq_len) is drawn per epoch so window boundaries differ between
  epochs, and visits them in a random permutation; both come from
  `np.random.default_rng([seed, e])`. A window is `seq_len + 1` tokens: inputs are its first
  `seq_len`, targets its last `seq_len`. A batch that runs past the end of an epoch continues
  into the next one, so every batch is full and the iterator never ends.
  """

  def __init__(
    self,
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if tokens.ndim != 1:
      raise ValueError(f'expected a 1-D token array, got shape {tokens.shape}')
    if seq_len < 1:
      raise ValueError(f'seq_len: expected a positive integer, got {seq_len}')
    if len(tokens) < seq_len + 1:
      raise ValueError(
        f'expected at least seq_len + 1 = {seq_len + 1} tokens for one window, got {len(tokens)}'
      )
    self._rows = host_rows(batch_size, process_index, process_count)
    if seed < 0:
      raise ValueError(f'seed: expected a non-negative integer, got {seed}')
    self._tokens = tokens
    self._batch_size = batch_size
    self._seq_len = seq_len
    self._seed = seed
    self._epoch, self._index = 0, 0
    self._starts_epoch, self._starts = -1, np.empty(0, np.int64)

  def _epoch_starts(self, epoch: int) -> np.ndarray:
    """Returns the window starts of `epoch` in visiting order (the last epoch's is cached)."""
    if epoch != self._starts_epoch:
      rng = np.random.default_rng([self._seed, epoch])
      n, length = len(self._tokens), self._seq_len
      offset = int(rng.integers(0, min(length, n - length)))  # keeps at least one window
      count = (n - offset - 1) // length
      self._starts = offset + rng.permutation(count) * length
      self._starts_epoch = epoch
    return self._starts

  def __iter__(self) -> WindowIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    chunks, needed = [], self._batch_size
    while needed:
      starts = self._epoch_starts(self._epoch)
      chunk = starts[self._index : self._index + needed]
      chunks.append(chunk)
      needed -= len(chunk)
      self._index += len(chunk)
      if self._index == len(starts):
        self._epoch, self._index = self._epoch + 1, 0
    global_starts = np.concatenate(chunks)
    return _window_batch(self._tokens, global_starts[self._rows], self._seq_len)

  def get_state(self) -> dict[str, int]:
    """Returns the position of the next batch, `{'epoch': e, 'index': i}`."""
    return {'epoch': self._epoch, 'index': self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    """Moves to a position returned by `get_state` (of an iterator over the same data)."""
    state = checked_state(state, ('epoch', 'index'))
    count = len(self._epoch_starts(state['epoch']))
    if state['index'] >= count:
      raise ValueError(
        f'iterator state: index {state["index"]} is past the {count} windows of epoch '
        f'{state["epoch"]}; was the state saved with different data or seq_len?'
      )
    self._epoch, self._index = state['epoch'], state['index']


def eval_batches(
  tokens: np.ndarray,
  *,
  batch_size: int,
  seq_len: int,
  max_batches: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """Returns in-order batches of the non-overlapping windows of `tokens` (e.g. validation).

  Window `k` starts at `k * seq_len`; the windows that do not fill a whole batch are dropped.
  The result is the same on every call and, sliced per host, the same for any host count.

  Args:
    tokens: a 1-D token array.
    batch_size: the global batch size; this host gets its contiguous rows of each batch.
    seq_len: the length of inputs and targets.
    max_batches: if given, at most this many batches (the first ones).
    process_index: this host's index.
    process_count: the number of hosts.

  Returns:
    A list of `{'inputs': int32[B_local, L], 'targets': int32[B_local, L]}`.
  """
  rows = host_rows(batch_size, process_index, process_count)
  if tokens.ndim != 1:
    raise ValueError(f'expected a 1-D token array, got shape {tokens.shape}')
  if seq_len < 1:
    raise ValueError(f'seq_len: expected a positive integer, got {seq_len}')
  if max_batches is not None and max_batches < 1:
    raise ValueError(f'max_batches: expected a positive integer or None, got {max_batches}')
  num_batches = max(len(tokens) - 1, 0) // seq_len // batch_size
  if num_batches == 0:
    raise ValueError(
      f'expected at least batch_size x seq_len + 1 = {batch_size * seq_len + 1} tokens for '
      f'one evaluation batch, got {len(tokens)}'
    )
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  starts = np.arange(num_batches * batch_size).reshape(num_batches, batch_size) * seq_len
  return [_window_batch(tokens, batch_starts[rows], seq_len) for batch_starts in starts]
