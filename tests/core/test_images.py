"""Tests for jaxlab.core.data.images: the digits, shapes, CIFAR-10 and .npz loaders, resizing."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest

from jaxlab.core import data
from jaxlab.core.config import base_config
from jaxlab.core.data.images import SHAPE_CLASSES, draw_shapes, resize_images


def _data_config(**fields):
  d = base_config().data
  d.update(fields)
  return d


def _load(source: str, **fields) -> data.LabelledArrays:
  return data.DATASETS.get(source)(_data_config(source=source, **fields))


# ----------------------------------------------------------------------------- digits


def test_digits_are_real_8x8_images_of_ten_classes():
  ds = _load('digits')
  assert ds.name == 'digits' and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
  assert len(ds.train_labels) + len(ds.test_labels) == 1797
  for x, y in ((ds.train_inputs, ds.train_labels), (ds.test_inputs, ds.test_labels)):
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0  # grey levels 0..16 scaled by 1/16
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
  # The held-out split is data.val_fraction = 5% of every class (stratified).
  train_counts, test_counts = np.bincount(ds.train_labels), np.bincount(ds.test_labels)
  np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.05, atol=0.01)
  # No image is in both splits (digits has no exact duplicates across a random split).
  train_rows = {row.tobytes() for row in ds.train_inputs}
  assert not any(row.tobytes() in train_rows for row in ds.test_inputs)


def test_digits_resized_by_image_size():
  ds = _load('digits', image_size=16)
  assert ds.train_inputs.shape[1:] == ds.test_inputs.shape[1:] == (16, 16, 1)
  assert ds.train_inputs.dtype == np.float32


# ----------------------------------------------------------------------------- shapes


def test_shapes_loader_is_balanced_and_deterministic():
  a, b = _load('shapes'), _load('shapes')
  assert a.num_classes == len(SHAPE_CLASSES) == 10 and a.input_shape == (16, 16, 1)
  labels = np.concatenate([a.train_labels, a.test_labels])
  np.testing.assert_array_equal(np.bincount(labels), [200] * 10)
  np.testing.assert_array_equal(np.bincount(a.test_labels), [10] * 10)  # 5% of each
  np.testing.assert_array_equal(a.train_inputs, b.train_inputs)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert 0.0 <= a.train_inputs.min() and a.train_inputs.max() <= 1.0


def test_draw_shapes_labels_match_the_drawings():
  images, labels = draw_shapes(400, 16, seed=0)
  assert images.shape == (400, 16, 16, 1) and labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels), [40] * 10)
  x = images[..., 0]
  bright = (x > 0.4).sum(axis=(1, 2))
  mean_bright = {name: bright[labels == c].mean() for c, name in enumerate(SHAPE_CLASSES)}
  # Filled shapes light up more pixels than their hollow versions.
  assert mean_bright['disc'] > mean_bright['ring'] + 10
  assert mean_bright['square'] > mean_bright['frame'] + 10
  # Bars alternate along x (vertical bars), stripes along y.
  grad_x = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
  grad_y = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2))
  bars, stripes = labels == SHAPE_CLASSES.index('bars'), labels == SHAPE_CLASSES.index('stripes')
  assert np.all(grad_x[bars] > grad_y[bars]) and np.all(grad_y[stripes] > grad_x[stripes])


def test_draw_shapes_depends_on_seed_and_rejects_tiny_images():
  a, la = draw_shapes(20, 12, seed=1)
  b, lb = draw_shapes(20, 12, seed=1)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert not np.array_equal(a, draw_shapes(20, 12, seed=2)[0])
  with pytest.raises(ValueError, match='at least 8 pixels'):
    draw_shapes(10, 7)


# ----------------------------------------------------------------------------- cifar10


def _write_cifar(root: pathlib.Path, per_file: int = 2, test: int = 3, skip: str = '') -> dict:
  """A fake `cifar-10-batches-py`: random uint8 rows `[n, 3072]` (R, G, B planes of 32x32)."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  written = {}
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  for k, name in enumerate(names):
    n = test if name == 'test_batch' else per_file
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(k + j) % 10 for j in range(n)]  # a plain list, as in the real files
    written[name] = (rows, labels)
    if name != skip:
      with (root / name).open('wb') as f:
        pickle.dump({b'data': rows, b'labels': labels, b'batch_label': name.encode()}, f)
  return written


def test_cifar10_reads_batches_in_order_and_transposes_chw_to_hwc(tmp_path):
  written = _write_cifar(tmp_path / 'cifar-10-batches-py')
  ds = _load('cifar10', path=str(tmp_path / 'cifar-10-batches-py'))
  assert ds.name == 'cifar10' and ds.num_classes == 10
  assert ds.train_inputs.shape == (10, 32, 32, 3) and ds.test_inputs.shape == (3, 32, 32, 3)
  assert ds.train_inputs.dtype == np.float32
  train_rows = np.concatenate([written[f'data_batch_{i}'][0] for i in range(1, 6)])
  train_labels = np.concatenate([written[f'data_batch_{i}'][1] for i in range(1, 6)])
  np.testing.assert_array_equal(ds.train_labels, train_labels)
  np.testing.assert_array_equal(ds.test_labels, written['test_batch'][1])
  # Row layout: channel c's 32x32 plane starts at c * 1024, row-major (y * 32 + x).
  for i, y, x, c in [(0, 0, 0, 0), (3, 1, 2, 0), (5, 31, 0, 1), (9, 7, 30, 2), (2, 31, 31, 2)]:
    assert ds.train_inputs[i, y, x, c] == np.float32(train_rows[i, c * 1024 + y * 32 + x] / 255)
  test_rows = written['test_batch'][0]
  assert ds.test_inputs[2, 4, 9, 1] == np.float32(test_rows[2, 1024 + 4 * 32 + 9] / 255)
  # uint8 0..255 -> [0, 1]
  assert ds.train_inputs.min() == 0.0 and ds.train_inputs.max() == 1.0


def test_cifar10_resized_by_image_size(tmp_path):
  _write_cifar(tmp_path / 'c')
  ds = _load('cifar10', path=str(tmp_path / 'c'), image_size=16)
  assert ds.train_inputs.shape == (10, 16, 16, 3) and ds.test_inputs.shape == (3, 16, 16, 3)


def test_cifar10_missing_directory_or_file_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='empty path'):
    _load('cifar10', path='')
  with pytest.raises(ValueError, match='does not exist'):
    _load('cifar10', path=str(tmp_path / 'nowhere'))
  _write_cifar(tmp_path / 'partial', skip='data_batch_3')
  with pytest.raises(ValueError, match='data_batch_3'):
    _load('cifar10', path=str(tmp_path / 'partial'))


# ----------------------------------------------------------------------------- npz


def test_npz_loads_integer_nhw_and_float_nhwc_images(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)  # NHW, integer
  x_test = rng.uniform(0, 1, (4, 5, 5, 1))  # NHWC, float64
  y_train, y_test = np.array([0, 1, 2, 3, 4, 0]), np.array([1, 2, 3, 6])
  path = tmp_path / 'my_set.npz'
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  ds = _load('npz', path=str(path))
  assert ds.name == 'my_set' and ds.num_classes == 7  # the largest label + 1, from either split
  assert ds.input_shape == (5, 5, 1) and ds.train_inputs.dtype == ds.test_inputs.dtype
  assert ds.train_inputs.dtype == np.float32 and ds.train_labels.dtype == np.int32
  np.testing.assert_allclose(ds.train_inputs[..., 0], x_train / 255.0, rtol=1e-6)
  np.testing.assert_allclose(ds.test_inputs, x_test, rtol=1e-6)  # floats kept as they are
  np.testing.assert_array_equal(ds.test_labels, y_test)
  resized = _load('npz', path=str(path), image_size=10)
  assert resized.input_shape == (10, 10, 1)


def test_npz_missing_file_or_arrays_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    _load('npz', path=str(tmp_path / 'absent.npz'))
  partial = tmp_path / 'partial.npz'
  np.savez(partial, x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2, np.int32))
  with pytest.raises(ValueError, match=r"lacks arrays \['x_test', 'y_test'\]"):
    _load('npz', path=str(partial))
  single = tmp_path / 'single.npy'  # one array, not an archive
  np.save(single, np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match='expected an .npz archive'):
    _load('npz', path=str(single))


# ----------------------------------------------------------------------------- resize


def test_resize_images_to_a_given_size():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 8, 8, 2)).astype(np.float32)
  up = resize_images(images, 12)
  assert up.shape == (3, 12, 12, 2) and up.dtype == np.float32
  assert resize_images(images, 4).shape == (3, 4, 4, 2)
  # Bilinear interpolation keeps constant images constant and stays within the input range.
  flat = resize_images(np.full((1, 8, 8, 1), 0.25, np.float32), 20)
  np.testing.assert_allclose(flat, 0.25, rtol=1e-6)
  assert images.min() - 1e-6 <= up.min() and up.max() <= images.max() + 1e-6
  # Channels are resized independently: channel 1 of the result is the resize of channel 1.
  np.testing.assert_allclose(up[..., 1:], resize_images(images[..., 1:], 12), rtol=1e-5)
  # Size 0 or the same size: unchanged.
  assert resize_images(images, 0) is images
  assert resize_images(images, 8) is images


# ----------------------------------------------------------------------------- imagefolder


def _write_imagefolder(root: pathlib.Path) -> None:
  from PIL import Image

  # class 'cat' images are red, class 'dog' images are blue; sizes differ, as in ImageNet.
  for split, count in (('train', 3), ('val', 2)):
    for name, colour in (('cat', (255, 0, 0)), ('dog', (0, 0, 255))):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (10 + 3 * i, 7 + i), colour).save(folder / f'{i}.png')
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')


def test_imagefolder_reads_the_imagenet_layout(tmp_path):
  _write_imagefolder(tmp_path / 'set')
  ds = _load('imagefolder', path=str(tmp_path / 'set'), image_size=8)
  assert ds.num_classes == 2 and ds.input_shape == (8, 8, 3)
  assert len(ds.train_labels) == 6 and len(ds.test_labels) == 4
  # 'cat' (sorted first) is class 0 and red; 'dog' is class 1 and blue, in both splits.
  for x, y in ((ds.train_inputs, ds.train_labels), (ds.test_inputs, ds.test_labels)):
    assert np.allclose(x[y == 0][..., 0], 1.0) and np.allclose(x[y == 0][..., 2], 0.0)
    assert np.allclose(x[y == 1][..., 2], 1.0) and np.allclose(x[y == 1][..., 0], 0.0)


def test_imagefolder_errors_are_clear(tmp_path):
  _write_imagefolder(tmp_path / 'set')
  with pytest.raises(ValueError, match='image_size'):
    _load('imagefolder', path=str(tmp_path / 'set'), image_size=0)
  (tmp_path / 'set' / 'val' / 'bird').mkdir()
  (tmp_path / 'set' / 'val' / 'bird' / 'x.png').write_bytes(b'')
  with pytest.raises(ValueError, match='val/bird is not a class'):
    _load('imagefolder', path=str(tmp_path / 'set'), image_size=8)
  with pytest.raises(ValueError, match='class folders'):
    _load('imagefolder', path=str(tmp_path), image_size=8)
