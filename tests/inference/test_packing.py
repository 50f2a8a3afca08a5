"""First-fit-decreasing packing, packed/padded batch layout and buckets (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlab.inference import (
  bucket,
  count_buckets,
  next_power_of_two,
  pack_batch,
  pack_prompts,
  pad_batch,
  power_of_two_buckets,
)


def test_ffd_on_a_worked_example():
  # Longest first: 5 -> row 0, 4 -> row 1, 3 -> row 0 (full), 3 -> row 1, 2 -> row 2 (row 1 has
  # 1 left), 1 -> row 1.
  assert pack_prompts([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


@pytest.mark.parametrize('seed', range(5))
def test_ffd_places_every_prompt_once_within_rows_and_is_first_fit(seed):
  rng = np.random.default_rng(seed)
  max_len = int(rng.integers(8, 64))
  lengths = [int(n) for n in rng.integers(1, max_len + 1, size=int(rng.integers(1, 60)))]
  lengths[0] = max_len  # a prompt that fills a whole row
  rows = pack_prompts(lengths, max_len)
  assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
  loads = [sum(lengths[i] for i in row) for row in rows]
  assert max(loads) <= max_len
  for row in rows:  # decreasing: each row receives prompts longest first
    assert [lengths[i] for i in row] == sorted((lengths[i] for i in row), reverse=True)
  # First fit: a row was opened only because its first prompt fit in no earlier row, and rows
  # only fill up, so every earlier row's final load plus that prompt exceeds the row length.
  for j, row in enumerate(rows):
    for i in range(j):
      assert loads[i] + lengths[row[0]] > max_len
  assert len(rows) >= -(-sum(lengths) // max_len)


@pytest.mark.parametrize(
  ('lengths', 'max_len', 'match'),
  [
    ([3, 9], 8, r'\[1, max_len=8\], got 9 for prompt 1'),
    ([0, 2], 8, r'got 0 for prompt 0'),
    ([2.5], 8, r'got 2.5'),
    ([2], 0, 'max_len a positive integer'),
  ],
)
def test_bad_lengths_are_clear_errors(lengths, max_len, match):
  with pytest.raises(ValueError, match=match):
    pack_prompts(lengths, max_len)


def test_pack_batch_layout():
  rng = np.random.default_rng(0)
  lengths = [1, 8, 3, 5, 2, 4]
  prompts = [rng.integers(1, 100, n).astype(np.int32) for n in lengths]
  batch = pack_batch(prompts, 8, row_buckets=(4, 8), prompt_buckets=(8,))
  assert batch.tokens.shape == (4, 8) and batch.lengths.shape == (8,)
  assert batch.num_prompts == 6
  for p, prompt in enumerate(prompts):
    r, o, n = batch.rows[p], batch.offsets[p], batch.lengths[p]
    assert n == prompt.size
    np.testing.assert_array_equal(batch.tokens[r, o : o + n], prompt)
    np.testing.assert_array_equal(batch.positions[r, o : o + n], np.arange(n))
    assert len(set(batch.segment_ids[r, o : o + n])) == 1 and batch.segment_ids[r, o] > 0
  # Segments in a row are distinct prompts; empty slots are segment 0 with token 0.
  used = np.zeros(batch.tokens.shape, bool)
  for r, o, n in zip(batch.rows[:6], batch.offsets[:6], batch.lengths[:6], strict=True):
    assert not used[r, o : o + n].any()
    used[r, o : o + n] = True
  assert (batch.segment_ids[~used] == 0).all() and (batch.tokens[~used] == 0).all()
  assert used.sum() == sum(lengths)
  assert (batch.lengths[6:] == 0).all()


def test_pack_batch_rejects_a_prompt_longer_than_the_row():
  with pytest.raises(ValueError, match='fit in a row of 4 tokens, got a prompt of 5'):
    pack_batch([np.arange(3), np.arange(5)], 4)
  with pytest.raises(ValueError, match='non-empty 1-D array'):
    pack_batch([np.zeros((2, 2), np.int32)], 4)


def test_pad_batch_and_buckets():
  batch = pad_batch([np.arange(1, 4), np.arange(1, 2)], len_buckets=(4, 8), prompt_buckets=(4,))
  np.testing.assert_array_equal(batch.tokens, [[1, 2, 3, 0], [1, 0, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(batch.lengths, [3, 1, 0, 0])
  assert power_of_two_buckets(100, 16) == (16, 32, 64, 100)
  assert power_of_two_buckets(64, 16) == (16, 32, 64)
  assert [bucket(n, (16, 32, 64)) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
  assert [next_power_of_two(n) for n in (1, 2, 3, 8, 9)] == [1, 2, 4, 8, 16]
  assert count_buckets(100) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
  assert count_buckets(1) == (1,)
  for n in range(1, 200):  # rounding a count up to its bucket adds at most half
    assert n <= bucket(n, count_buckets(n)) <= 1.5 * n
  with pytest.raises(ValueError, match='at most the largest bucket 64, got 65'):
    bucket(65, (16, 32, 64))
