"""Image classification data: real images shipped with scikit-learn, a procedural harder set,
and loaders for CIFAR-10 and `.npz` files the user supplies.

Every loader returns `LabelledArrays` with float32 `[N, H, W, C]` images scaled to `[0, 1]` and
is registered in `DATASETS` under its `config.data.source` name:

- `digits`: scikit-learn's handwritten digits (UCI optdigits test set), 1,797 real 8x8
  grey-level images of 10 classes; stratified test split of `data.val_fraction`.
- `shapes`: procedurally drawn 10-class shapes (disc, ring, square, frame, triangle, plus, cross,
  bars, stripes, checker) at random position, size and contrast on a noisy, cluttered
  background: harder than digits, with a known label for every image.
- `cifar10`: the CIFAR-10 "python version" directory (`data_batch_1..5`, `test_batch`).
- `npz`: a `.npz` file with `x_train, y_train, x_test, y_test` (images NHWC or NHW, any dtype;
  integer images are divided by 255).
- `imagefolder`: an ImageNet-style directory `data.path/{train,val}/<class>/<image>` (any
  format Pillow reads, converted to RGB), classes in sorted order; needs `data.image_size`
  (every image is resized to it, as ImageNet images differ in size). Loaded into memory, so for
  subsets that fit (ImageNet-100 at 64 px, Imagenette, a user's own set).

`data.image_size > 0` resizes every image bilinearly (e.g. digits 8 -> 32 for a VGG).
"""

from __future__ import annotations

import pathlib
import pickle

import jax
import ml_collections
import numpy as np

from jaxlab.core.data.arrays import DATASETS, LabelledArrays, stratified_split

SHAPE_CLASSES = (
  'disc',
  'ring',
  'square',
  'frame',
  'triangle',
  'plus',
  'cross',
  'bars',
  'stripes',
  'checker',
)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of `[N, H, W, C]` images to `[N, size, size, C]` (`jax.image.resize`)."""
  if size <= 0 or images.shape[1:3] == (size, size):
    return images
  n, _, _, c = images.shape
  out = jax.image.resize(images, (n, size, size, c), method='bilinear', antialias=True)
  return np.asarray(out, np.float32)


def _finish(name: str, x: np.ndarray, y: np.ndarray, cfg: ml_collections.ConfigDict, classes: int):
  train, test = stratified_split(y, cfg.val_fraction, seed=0)
  x = resize_images(x, cfg.image_size)
  return LabelledArrays(name, x[train], y[train], x[test], y[test], classes)


@DATASETS.register('digits')
def load_digits(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """scikit-learn's 1,797 8x8 digit images (values 0..16 -> [0, 1]), 10 classes."""
  from sklearn.datasets import load_digits as sklearn_digits  # noqa: PLC0415 (heavy import)

  bunch = sklearn_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  return _finish('digits', x, bunch.target.astype(np.int32), cfg, 10)


def draw_shapes(count: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` images `[count, size, size, 1]` of the `SHAPE_CLASSES` (balanced) and their labels.

  Each shape has a random centre, radius in `[size/5, size/3]`, foreground intensity in
  `[0.5, 1]`; the background has Gaussian noise (sigma 0.15) and two random bright distractor
  pixels per image. Everything is drawn from `np.random.default_rng(seed)`.
  """
  if size < 8:
    raise ValueError(f'size: expected at least 8 pixels, got {size}')
  rng = np.random.default_rng(seed)
  labels = np.arange(count, dtype=np.int32) % len(SHAPE_CLASSES)
  rng.shuffle(labels)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  images = np.empty((count, size, size, 1), np.float32)
  for i, label in enumerate(labels):
    r = rng.uniform(size / 5, size / 3)
    cy, cx = rng.uniform(r, size - 1 - r, size=2)
    dy, dx = yy - cy, xx - cx
    dist, cheb = np.hypot(dy, dx), np.maximum(np.abs(dy), np.abs(dx))
    period = max(2, round(r / 2))
    inside = cheb <= r
    masks = {
      'disc': dist <= r,
      'ring': (dist <= r) & (dist >= 0.6 * r),
      'square': inside,
      'frame': inside & (cheb >= 0.6 * r),
      'triangle': (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2),
      'plus': inside & ((np.abs(dy) <= r / 4) | (np.abs(dx) <= r / 4)),
      'cross': inside & ((np.abs(dy - dx) <= r / 3) | (np.abs(dy + dx) <= r / 3)),
      'bars': inside & ((np.floor(dx / period) % 2) == 0),
      'stripes': inside & ((np.floor(dy / period) % 2) == 0),
      'checker': inside & (((np.floor(dx / period) + np.floor(dy / period)) % 2) == 0),
    }
    img = rng.normal(0.0, 0.15, (size, size)).astype(np.float32)
    img[masks[SHAPE_CLASSES[label]]] += rng.uniform(0.5, 1.0)
    img[rng.integers(0, size, 2), rng.integers(0, size, 2)] += 1.0
    images[i, ..., 0] = np.clip(img, 0.0, 1.0)
  return images, labels


@DATASETS.register('shapes')
def load_shapes(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """2,000 procedural 16x16 shape images (`draw_shapes`, seed 0), 10 classes."""
  x, y = draw_shapes(2000, 16, seed=0)
  return _finish('shapes', x, y, cfg, len(SHAPE_CLASSES))


def _as_float_images(x: np.ndarray) -> np.ndarray:
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f'images: expected [N, H, W] or [N, H, W, C], got shape {x.shape}')
  if np.issubdtype(x.dtype, np.integer):
    return (x / 255.0).astype(np.float32)
  return x.astype(np.float32)


def _required_file(path: str, what: str) -> pathlib.Path:
  if not path:
    raise ValueError(f'data.path: expected {what}, got an empty path')
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise ValueError(f'data.path: expected {what}, got {str(p)!r}, which does not exist')
  return p


@DATASETS.register('cifar10')
def load_cifar10(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """CIFAR-10 from the "python version" directory at `data.path` (no download)."""
  root = _required_file(cfg.path, 'the cifar-10-batches-py directory')

  def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
      f = root / name
      if not f.exists():
        raise ValueError(f'data.path: expected {name} in {str(root)!r}; it is missing')
      with f.open('rb') as fh:
        batch = pickle.load(fh, encoding='bytes')
      xs.append(np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      ys.append(np.asarray(batch[b'labels'], np.int32))
    return _as_float_images(np.concatenate(xs)), np.concatenate(ys)

  x_train, y_train = read([f'data_batch_{i}' for i in range(1, 6)])
  x_test, y_test = read(['test_batch'])
  x_train, x_test = resize_images(x_train, cfg.image_size), resize_images(x_test, cfg.image_size)
  return LabelledArrays('cifar10', x_train, y_train, x_test, y_test, 10)


@DATASETS.register('npz')
def load_npz(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """Images and labels from a user `.npz` with `x_train, y_train, x_test, y_test`."""
  path = _required_file(cfg.path, 'an .npz file with x_train, y_train, x_test, y_test')
  archive = np.load(path)
  if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy: one array, no context manager
    raise ValueError(f'data.path: expected an .npz archive (np.savez), got {path.name}, one array')
  with archive as f:
    missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(f.files)
    if missing:
      raise ValueError(f'data.path: {path.name} lacks arrays {sorted(missing)}')
    x_train, x_test = _as_float_images(f['x_train']), _as_float_images(f['x_test'])
    y_train, y_test = f['y_train'].astype(np.int32), f['y_test'].astype(np.int32)
  classes = int(max(y_train.max(), y_test.max())) + 1
  x_train, x_test = resize_images(x_train, cfg.image_size), resize_images(x_test, cfg.image_size)
  return LabelledArrays(path.stem, x_train, y_train, x_test, y_test, classes)


IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png', '.bmp', '.gif', '.webp', '.ppm', '.tif', '.tiff')


@DATASETS.register('imagefolder')
def load_imagefolder(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """Images from `data.path/{train,val}/<class>/*` (the ImageNet layout), resized to
  `data.image_size`; the class of an image is the index of its folder among the sorted
  train folders."""
  from PIL import Image  # noqa: PLC0415 (only this loader needs it; matplotlib brings Pillow)

  root = _required_file(cfg.path, 'a directory with train/ and val/ class folders')
  if cfg.image_size <= 0:
    raise ValueError(
      f'data.image_size: imagefolder needs a positive size to resize to, got {cfg.image_size}'
    )
  classes = (
    sorted(d.name for d in (root / 'train').iterdir() if d.is_dir())
    if (root / 'train').is_dir()
    else []
  )
  if not classes:
    raise ValueError(f'data.path: expected class folders in {str(root / "train")!r}, found none')

  def read(split: str) -> tuple[np.ndarray, np.ndarray]:
    split_dir = root / split
    if not split_dir.is_dir():
      raise ValueError(f'data.path: expected a {split}/ directory in {str(root)!r}')
    xs, ys = [], []
    for folder in sorted(d for d in split_dir.iterdir() if d.is_dir()):
      if folder.name not in classes:
        raise ValueError(f'data.path: {split}/{folder.name} is not a class of train/')
      for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
          with Image.open(f) as im:
            im = im.convert('RGB').resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
            xs.append(np.asarray(im, np.uint8))
          ys.append(classes.index(folder.name))
    if not xs:
      raise ValueError(f'data.path: no images in {str(split_dir)!r}')
    return _as_float_images(np.stack(xs)), np.asarray(ys, np.int32)

  x_train, y_train = read('train')
  x_test, y_test = read('val')
  return LabelledArrays(root.name, x_train, y_train, x_test, y_test, len(classes))
