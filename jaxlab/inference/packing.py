"""Packing prompts into rows (Prepacking, Zhao et al., 2024, arXiv:2404.09529) and length buckets.

Prefilling a batch padded to its longest prompt spends `P · max_i n_i` token slots on
`Σ_i n_i` real tokens. Prepacking instead places the prompts into rows of a fixed length by
first-fit-decreasing bin packing, so most slots hold real tokens; every prompt keeps its own
position ids (restarting at 0) and segment id, from which the model builds a block-diagonal
causal mask.

Array shapes are rounded up to a few bucket sizes (rows, prompts, row length), so a jitted
prefill compiles once per bucket rather than once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def pack_prompts(lengths: Sequence[int], max_len: int) -> list[list[int]]:
  """First-fit decreasing: the prompts, longest first, each into the first row it fits in.

  FFD uses at most `11/9 · OPT + 6/9` rows (Dósa, 2007), where OPT is the fewest possible.

  Args:
    lengths: the length of each prompt, each in `[1, max_len]`.
    max_len: the length of a row.

  Returns:
    The rows, each a list of prompt indices in the order they were placed; every index appears
    exactly once and the lengths in a row sum to at most `max_len`.

  Raises:
    ValueError: a length is not a positive integer at most `max_len`.
  """
  if int(max_len) != max_len or max_len <= 0:
    raise ValueError(f'pack_prompts: expected max_len a positive integer, got {max_len!r}')
  for i, n in enumerate(lengths):
    if int(n) != n or not 1 <= n <= max_len:
      raise ValueError(
        f'pack_prompts: expected every prompt length in [1, max_len={max_len}], '
        f'got {n!r} for prompt {i}'
      )
  rows: list[list[int]] = []
  free: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    for r, space in enumerate(free):
      if lengths[i] <= space:
        rows[r].append(i)
        free[r] -= lengths[i]
        break
    else:
      rows.append([i])
      free.append(max_len - lengths[i])
  return rows


def power_of_two_buckets(max_value: int, min_value: int = 1) -> tuple[int, ...]:
  """`(min_value, 2·min_value, 4·min_value, ..., max_value)`; the last is `max_value` itself."""
  if not 1 <= min_value <= max_value:
    raise ValueError(
      f'power_of_two_buckets: expected 1 <= min_value <= max_value, got {min_value}, {max_value}'
    )
  out = [min_value]
  while out[-1] * 2 < max_value:
    out.append(out[-1] * 2)
  if out[-1] != max_value:
    out.append(max_value)
  return tuple(out)


def count_buckets(max_value: int) -> tuple[int, ...]:
  """`1, 2, 3, 4, 6, 8, 12, 16, 24, ...` (powers of two and 1.5× them) up to the first one
  `>= max_value`: for counts of rows or prompts, where rounding up to a power of two could double
  the work, rounding up to these adds at most half."""
  out = [1]
  while out[-1] < max_value:
    k = out[-1]
    out.append(k + 1 if k < 2 else (k * 3 // 2 if k & (k - 1) == 0 else k * 4 // 3))
  return tuple(out)


def next_power_of_two(n: int) -> int:
  """The smallest power of two `>= n` (1 for `n <= 1`)."""
  return 1 << max(int(n) - 1, 0).bit_length()


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket `>= n`."""
  fitting = [b for b in buckets if b >= n]
  if not fitting:
    raise ValueError(f'bucket: expected a value at most the largest bucket {max(buckets)}, got {n}')
  return min(fitting)


class PackedBatch(NamedTuple):
  """Prompts packed into rows (numpy; a pytree, so it goes into `jax.jit` as it is).

  Row arrays `[R, L]`: `tokens` (0 in empty slots), `positions` (restart at 0 per prompt),
  `segment_ids` (1, 2, ... per prompt within a row, 0 in empty slots). Prompt arrays `[P]`:
  `rows`, `offsets` (the prompt occupies `tokens[rows[p], offsets[p]:offsets[p] + lengths[p]]`)
  and `lengths`, 0 for the padding prompts that round `P` up to its bucket.
  """

  tokens: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  rows: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray

  @property
  def num_prompts(self) -> int:
    return int(np.count_nonzero(self.lengths))


class PaddedBatch(NamedTuple):
  """The baseline: prompt `p` in `tokens[p, :lengths[p]]` (right padding, 0 after), `[P, L]`."""

  tokens: np.ndarray
  lengths: np.ndarray

  @property
  def num_prompts(self) -> int:
    return int(np.count_nonzero(self.lengths))


def _check_prompts(prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
  if not prompts:
    raise ValueError('expected at least one prompt, got none')
  out = [np.asarray(p) for p in prompts]
  for i, p in enumerate(out):
    if p.ndim != 1 or p.size == 0 or not np.issubdtype(p.dtype, np.integer):
      raise ValueError(
        f'expected each prompt a non-empty 1-D array of token ids, got prompt {i} with '
        f'shape {p.shape} and dtype {p.dtype}'
      )
  return out


def pack_batch(
  prompts: Sequence[np.ndarray],
  row_len: int,
  *,
  row_buckets: Sequence[int] | None = None,
  prompt_buckets: Sequence[int] | None = None,
) -> PackedBatch:
  """Packs `prompts` (1-D token arrays) into rows of `row_len` by `pack_prompts`.

  Args:
    prompts: the token ids of each prompt.
    row_len: the row length `L` (use `bucket(max length, length buckets)` to bound shapes).
    row_buckets: the number of rows `R` is rounded up to one of these (empty rows are added);
      None keeps the number FFD needs.
    prompt_buckets: the number of prompts `P` is rounded up to one of these; None keeps it.

  Returns:
    The `PackedBatch`.
  """
  prompts = _check_prompts(prompts)
  lengths = [p.size for p in prompts]
  if max(lengths) > row_len:
    raise ValueError(
      f'pack_batch: expected every prompt to fit in a row of {row_len} tokens, got a prompt of '
      f'{max(lengths)} (prompt {int(np.argmax(lengths))})'
    )
  packing = pack_prompts(lengths, row_len)
  num_rows = len(packing) if row_buckets is None else bucket(len(packing), row_buckets)
  num = len(prompts) if prompt_buckets is None else bucket(len(prompts), prompt_buckets)
  tokens, positions, segments = (np.zeros((num_rows, row_len), np.int32) for _ in range(3))
  rows, offsets, lens = (np.zeros(num, np.int32) for _ in range(3))
  for r, members in enumerate(packing):
    offset = 0
    for segment, i in enumerate(members, start=1):
      n = lengths[i]
      tokens[r, offset : offset + n] = prompts[i]
      positions[r, offset : offset + n] = np.arange(n)
      segments[r, offset : offset + n] = segment
      rows[i], offsets[i], lens[i] = r, offset, n
      offset += n
  return PackedBatch(tokens, positions, segments, rows, offsets, lens)


def pad_batch(
  prompts: Sequence[np.ndarray],
  *,
  len_buckets: Sequence[int] | None = None,
  prompt_buckets: Sequence[int] | None = None,
) -> PaddedBatch:
  """The prompts right-padded to the longest (rounded up to `len_buckets`), one per row."""
  prompts = _check_prompts(prompts)
  longest = max(p.size for p in prompts)
  width = longest if len_buckets is None else bucket(longest, len_buckets)
  num = len(prompts) if prompt_buckets is None else bucket(len(prompts), prompt_buckets)
  tokens = np.zeros((num, width), np.int32)
  lengths = np.zeros(num, np.int32)
  for i, p in enumerate(prompts):
    tokens[i, : p.size] = p
    lengths[i] = p.size
  return PaddedBatch(tokens, lengths)
