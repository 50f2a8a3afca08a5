"""Cropping: a masked VGG or ResNet and its physically smaller copy compute the same logits and
the small one has exactly the masked model's nonzero parameters; the rebuilt config's widths;
what cannot be cropped is refused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core.errors import ConfigError
from jaxlab.nn import build_model
from jaxlab.sparsity import (
  SCORERS,
  Family,
  Member,
  Pruner,
  apply_masks,
  check_croppable,
  crop,
  cropped_model_config,
  one_shot,
  unstructured_families,
  zero_invariant_families,
)
from jaxlab.vision import vision_config

NUM_CLASSES = 4
X = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32)
CONFIGS = {
  'vgg': vision_config('vgg', channels=(6, 8, 5), pool_after=(0,)),
  'resnet': vision_config('resnet', widths=(6, 8), blocks_per_stage=2),
  'mlp': vision_config('mlp', hidden=(7, 5)),
}


def _random_variables(model, seed: int = 0) -> dict:
  """Numpy draws, no zeros: kernels N(0, 2 / fan_in), every BatchNorm entry random."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False))

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.3, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@functools.cache
def _setup(name: str):
  cfg = CONFIGS[name]
  model = build_model(cfg, NUM_CLASSES)
  variables = _random_variables(model)
  families = zero_invariant_families(
    lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(X)
  )
  return cfg, model, variables, families


@functools.cache
def _forward(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _logits(model, variables) -> np.ndarray:
  return np.asarray(_forward(model)(variables, X))


def _count(tree) -> int:
  return sum(int(np.size(p)) for p in jax.tree.leaves(tree))


def _nonzero(tree) -> int:
  return sum(int(np.count_nonzero(np.asarray(p))) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', ['vgg', 'resnet'])
def test_masked_then_cropped_equals_masked(name):
  cfg, model, variables, families = _setup(name)
  assert _nonzero(variables['params']) == _count(variables['params'])  # no natural zeros
  rng = np.random.default_rng(1)
  keeps = [rng.permutation(np.arange(f.size) < rng.integers(1, f.size)) for f in families]
  # The masks the optimizer wrapper would hold for these keep vectors.
  pruner = Pruner(families, SCORERS.get('magnitude'), 'global', one_shot(0, 0.5))
  masks = jax.jit(pruner.expand)(variables['params'], [jnp.asarray(k) for k in keeps])
  params = jax.device_get(jax.jit(apply_masks)(variables['params'], masks))
  masked_vars = {**variables, 'params': params}
  alive = [np.asarray(a) for a in jax.jit(pruner.alive)(masks)]
  for k, a in zip(keeps, alive, strict=True):
    np.testing.assert_array_equal(k, a)

  cropped = crop(masked_vars, families, {f.name: k for f, k in zip(families, keeps, strict=True)})
  small = build_model(cropped_model_config(cfg, cropped), NUM_CLASSES)
  want = _logits(model, masked_vars)
  np.testing.assert_allclose(_logits(small, cropped), want, atol=1e-6, rtol=0)
  assert np.abs(want - _logits(model, variables)).max() > 1e-2  # the masks did matter
  # Every removed group is entirely zero, so nothing nonzero was cropped and nothing zero kept.
  assert _count(cropped['params']) == _nonzero(params) < _count(variables['params'])
  # The model state (BatchNorm statistics) is cropped along with the parameters.
  assert jax.tree.structure(cropped) == jax.tree.structure(variables)
  assert _count(cropped['batch_stats']) < _count(variables['batch_stats'])


def test_resnet_cropped_config_widths():
  cfg, _, variables, families = _setup('resnet')
  kept = {f.name: f.size - 1 - i % 3 for i, f in enumerate(families)}
  keeps = {n: np.arange(f.size) < kept[n] for n, f in zip(kept, families, strict=True)}
  out = cropped_model_config(cfg, crop(variables, families, keeps))
  # The residual stream families set the stage widths, each block's inner conv its entry.
  assert tuple(out.widths) == (kept['stage0_block0/conv1'], kept['stage1_block0/conv1'])
  inner = ['stage0_block0', 'stage0_block1', 'stage1_block0', 'stage1_block1']
  assert tuple(out.inner_widths) == tuple(kept[f'{b}/conv0'] for b in inner)
  assert out.blocks_per_stage == 2 and cfg.inner_widths == ()  # the input config is unchanged


@pytest.mark.parametrize('name', ['vgg', 'resnet', 'mlp'])
def test_model_families_are_croppable(name):
  cfg, *_, families = _setup(name)
  check_croppable(cfg, families)  # does not raise


def test_check_croppable_rejects_a_family_without_a_width_field():
  cfg, *_, families = _setup('vgg')
  stray = Family('extra', 3, (Member('params/extra/kernel', 3, 1, True),))
  with pytest.raises(ConfigError, match=r"family extra .*no width field in model 'vgg'"):
    check_croppable(cfg, (*families, stray))
  # A model with no WIDTH_FIELDS entry at all.
  unknown = vision_config('vgg')
  unknown.name = 'nope'
  with pytest.raises(ConfigError, match='model with croppable widths'):
    check_croppable(unknown, ())


def test_cropped_model_config_needs_the_kernels_of_the_config():
  _, _, variables, _ = _setup('vgg')
  wider = vision_config('vgg', channels=(6, 8, 5, 4), pool_after=(0,))
  with pytest.raises(ConfigError, match=r"model\.channels: the model has no kernel 'conv3/kernel'"):
    cropped_model_config(wider, variables)


def test_crop_refuses_what_it_cannot_do():
  _, _, variables, families = _setup('vgg')
  f = families[0]
  with pytest.raises(ValueError, match='every group of conv0 is removed'):
    crop(variables, families, {f.name: np.zeros(f.size, bool)})
  with pytest.raises(ValueError, match=r'has shape \(3,\), expected \(6,\)'):
    crop(variables, families, {f.name: np.ones(3, bool)})
  unstructured = unstructured_families(variables['params'])
  with pytest.raises(ValueError, match='unstructured; only whole groups'):
    crop(variables, unstructured, {unstructured[0].name: np.ones(unstructured[0].size, bool)})
  # Families not named in `keeps` keep everything; keeping everything changes nothing.
  same = crop(variables, families, {f.name: np.ones(f.size, bool)})
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)
