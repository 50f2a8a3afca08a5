"""Tests for jaxlab.core.data.arrays: labelled arrays, stratified split, the resumable array
iterator and padded evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxlab.core import data
from jaxlab.core.data import ArrayIterator, LabelledArrays, array_eval_batches, stratified_split

# Example ids as inputs make every batch say which examples it holds; 37 examples in batches of
# 8 means batches straddle epoch boundaries (37 is prime).
N = 37
IDS = np.arange(N) * 10
LABELS = np.arange(N) % 3


def _iterator(seed: int = 0, batch_size: int = 8, **kwargs) -> ArrayIterator:
  return ArrayIterator(IDS, LABELS, batch_size=batch_size, seed=seed, **kwargs)


def _take(it: ArrayIterator, k: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(k)]


def _ids(batches: list[dict[str, np.ndarray]]) -> np.ndarray:
  return np.concatenate([b['inputs'] for b in batches]) // 10


# ----------------------------------------------------------------------------- LabelledArrays


def test_labelled_arrays_validates_lengths_labels_and_shapes():
  x, y = np.zeros((4, 2, 2, 1)), np.array([0, 1, 2, 1])
  ok = LabelledArrays('toy', x, y, x[:2], y[:2], 3)
  assert ok.input_shape == (2, 2, 1)
  with pytest.raises(ValueError, match='4 inputs but 3 labels'):
    LabelledArrays('toy', x, y[:3], x, y, 3)
  with pytest.raises(ValueError, match=r'labels expected in \[0, 2\)'):
    LabelledArrays('toy', x, y, x, y, 2)
  with pytest.raises(ValueError, match='at least one example'):
    LabelledArrays('toy', x, y, x[:0], y[:0], 3)
  with pytest.raises(ValueError, match='differ in shape'):
    LabelledArrays('toy', x, y, np.zeros((4, 3, 3, 1)), y, 3)


def test_dataset_registry_holds_the_image_loaders():
  assert {'digits', 'shapes', 'cifar10', 'npz'} <= set(data.DATASETS.names())


# ----------------------------------------------------------------------------- stratified_split


def test_stratified_split_keeps_class_proportions_disjoint_and_complete():
  counts = {0: 100, 1: 50, 2: 20, 3: 10}  # imbalanced; 20% of each is a whole number
  labels = np.random.default_rng(1).permutation(np.repeat(list(counts), list(counts.values())))
  train, test = stratified_split(labels, 0.2, seed=3)
  assert np.intersect1d(train, test).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
  assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted, no repeats
  for c, n in counts.items():
    assert np.sum(labels[test] == c) == n // 5, c
    assert np.sum(labels[train] == c) == n - n // 5, c


def test_stratified_split_is_deterministic_by_seed_and_keeps_tiny_classes_in_test():
  labels = np.repeat(np.arange(5), 30)
  a, b = stratified_split(labels, 0.1, seed=0), stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], stratified_split(labels, 0.1, seed=1)[1])
  # A class of 3 at 10% still gets one test example (round(0.3) would give none).
  _, test = stratified_split(np.array([0] * 20 + [1] * 3), 0.1)
  assert np.sum(test >= 20) == 1


@pytest.mark.parametrize('fraction', [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fractions(fraction):
  with pytest.raises(ValueError, match='test fraction'):
    stratified_split(np.arange(10) % 2, fraction)


# ----------------------------------------------------------------------------- ArrayIterator


def test_iterator_visits_every_example_exactly_once_per_epoch():
  # lcm(37, 8) = 296 = 37 batches = 8 whole epochs.
  batches = _take(_iterator(), N)
  assert all(b['inputs'].shape == (8,) and b['labels'].dtype == np.int32 for b in batches)
  ids = _ids(batches)
  epochs = ids.reshape(8, N)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
  # Labels travel with their inputs.
  np.testing.assert_array_equal(np.concatenate([b['labels'] for b in batches]), LABELS[ids])
  # Each epoch has its own order, and none is the identity.
  assert len({tuple(e) for e in epochs}) == 8
  assert not any(np.array_equal(e, np.arange(N)) for e in epochs)


def test_iterator_is_deterministic_by_seed():
  a, b, c = _ids(_take(_iterator(5), 10)), _ids(_take(_iterator(5), 10)), _iterator(6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, _ids(_take(c, 10)))


@pytest.mark.parametrize('k', [0, 1, 4, 5, 9, 14])  # 4 and 5 straddle the first epoch's end
def test_resume_from_state_yields_the_uninterrupted_batches(k):
  straight = _take(_iterator(seed=2), 20)
  first = _iterator(seed=2)
  _take(first, k)
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
  resumed = _iterator(seed=2)
  resumed.set_state(state)
  for want, got in zip(straight[k:], _take(resumed, 20 - k), strict=True):
    np.testing.assert_array_equal(want['inputs'], got['inputs'])
    np.testing.assert_array_equal(want['labels'], got['labels'])


def test_state_counts_position_within_epoch():
  it = _iterator()
  _take(it, 4)
  assert it.get_state() == {'epoch': 0, 'index': 32}
  next(it)  # 5 from epoch 0, 3 from epoch 1
  assert it.get_state() == {'epoch': 1, 'index': 3}


@pytest.mark.parametrize('count', [2, 4, 8])
def test_host_rows_partition_the_global_batch(count):
  hosts = [_iterator(process_index=p, process_count=count) for p in range(count)]
  for want in _take(_iterator(), 6):
    local = [next(h) for h in hosts]
    assert all(b['inputs'].shape == (8 // count,) for b in local)
    np.testing.assert_array_equal(np.concatenate([b['inputs'] for b in local]), want['inputs'])
    np.testing.assert_array_equal(np.concatenate([b['labels'] for b in local]), want['labels'])


@pytest.mark.parametrize(
  'state, match',
  [
    ({'epoch': 0}, 'expected keys'),
    ({'epoch': 0, 'index': 1, 'extra': 2}, 'expected keys'),
    ({'epoch': -1, 'index': 0}, 'expected >= 0'),
    ({'epoch': 0, 'index': 1.5}, 'expected an integer'),
    ({'epoch': '0', 'index': 1}, 'expected an integer'),
    ({'epoch': 0, 'index': N}, 'past the 37 examples'),
  ],
)
def test_bad_state_raises_and_leaves_the_position_alone(state, match):
  it, ref = _iterator(), _iterator()
  _take(it, 3)
  _take(ref, 3)
  with pytest.raises(ValueError, match=match):
    it.set_state(state)
  np.testing.assert_array_equal(next(it)['inputs'], next(ref)['inputs'])


def test_iterator_rejects_bad_arguments():
  with pytest.raises(ValueError, match='equal, non-zero'):
    ArrayIterator(IDS, LABELS[:-1], batch_size=4, seed=0)
  with pytest.raises(ValueError, match='seed'):
    ArrayIterator(IDS, LABELS, batch_size=4, seed=-1)
  with pytest.raises(ValueError, match='multiple of process_count'):
    ArrayIterator(IDS, LABELS, batch_size=6, seed=0, process_count=4)


# ----------------------------------------------------------------------------- eval batches


def test_eval_batches_cover_each_example_once_and_mask_the_padding():
  n, batch_size = 21, 8  # 3 batches, the last with 5 real rows and 3 of padding
  inputs, labels = np.arange(n) * 10, np.arange(n) % 4
  batches = array_eval_batches(inputs, labels, batch_size=batch_size)
  assert len(batches) == 3
  assert all(len(b['inputs']) == batch_size == len(b['mask']) for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [1.0] * n + [0.0] * 3)
  real = np.concatenate([b['inputs'] for b in batches])[mask == 1]
  np.testing.assert_array_equal(real, inputs)  # in order, each exactly once
  np.testing.assert_array_equal(np.concatenate([b['labels'] for b in batches])[mask == 1], labels)
  assert batches[-1]['labels'].dtype == np.int32
  # A mask-weighted mean over the batches is the mean over the split.
  values = np.concatenate([b['inputs'] for b in batches]).astype(np.float64)
  assert np.sum(values * mask) / np.sum(mask) == pytest.approx(inputs.mean())
  # The same batches on every call.
  again = array_eval_batches(inputs, labels, batch_size=batch_size)
  assert all(np.array_equal(a['inputs'], b['inputs']) for a, b in zip(batches, again, strict=True))


def test_eval_batches_without_padding_and_with_max_batches():
  inputs, labels = np.arange(16), np.zeros(16, np.int64)
  batches = array_eval_batches(inputs, labels, batch_size=8)
  assert len(batches) == 2 and all(b['mask'].min() == 1.0 for b in batches)
  first = array_eval_batches(inputs, labels, batch_size=4, max_batches=2)
  assert len(first) == 2
  np.testing.assert_array_equal(np.concatenate([b['inputs'] for b in first]), np.arange(8))
  with pytest.raises(ValueError, match='max_batches'):
    array_eval_batches(inputs, labels, batch_size=4, max_batches=0)


def test_eval_batches_host_rows_partition_each_batch():
  inputs, labels = np.arange(21), np.arange(21) % 2
  full = array_eval_batches(inputs, labels, batch_size=8)
  hosts = [
    array_eval_batches(inputs, labels, batch_size=8, process_index=p, process_count=4)
    for p in range(4)
  ]
  for i, want in enumerate(full):
    for key in ('inputs', 'labels', 'mask'):
      got = np.concatenate([h[i][key] for h in hosts])
      np.testing.assert_array_equal(got, want[key])
