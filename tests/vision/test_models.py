"""Tests for jaxlab.vision.models: shapes, layer structure, BatchNorm train/eval, config errors.

Shapes and structure are checked under `jax.eval_shape` and numerics use parameters drawn with
NumPy: compiling a random initialiser costs seconds on CPU, these checks do not need one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core.errors import ConfigError
from jaxlab.nn.models import MODELS, build_model
from jaxlab.vision import vision_config

SMALL = {
  'mlp': dict(hidden=(16, 8)),
  'vgg': dict(channels=(4, 6, 8), pool_after=(0, 1)),
  'resnet': dict(widths=(4, 8), blocks_per_stage=1),
}


def _model(name: str, num_classes: int = 7, **overrides) -> nn.Module:
  return build_model(vision_config(name, **{**SMALL[name], **overrides}), num_classes)


def _abstract(model: nn.Module, x) -> dict:
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _shapes(tree) -> dict:
  return jax.tree.map(lambda a: a.shape, tree)


def _numpy_variables(model: nn.Module, x, seed: int = 0) -> dict:
  """Variables with the model's structure: params ~ N(0, 0.5^2), BatchNorm stats at init."""
  rng = np.random.default_rng(seed)
  abstract = _abstract(model, x)
  params = jax.tree.map(
    lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), abstract['params']
  )
  out = {'params': params}
  if 'batch_stats' in abstract:
    out['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.zeros(a.shape) if p[-1].key == 'mean' else jnp.ones(a.shape),
      abstract['batch_stats'],
    )
  return out


def _intermediate(model: nn.Module, x, name: str):
  """The abstract output of the submodule `name` (its `__call__`)."""
  variables = _abstract(model, x)
  _, state = jax.eval_shape(
    lambda v: model.apply(v, x, train=False, capture_intermediates=True, mutable=True), variables
  )
  return state['intermediates'][name]['__call__'][0]


# ----------------------------------------------------------------------------- shapes


def test_models_are_registered():
  assert {'mlp', 'vgg', 'resnet'} <= set(MODELS.names())


@pytest.mark.parametrize('name', ['mlp', 'vgg', 'resnet'])
@pytest.mark.parametrize('image', [(8, 8, 1), (16, 16, 3)])
def test_logits_shape(name, image):
  model = _model(name, num_classes=7)
  x = jnp.zeros((5, *image))
  variables = _abstract(model, x)
  for train in (False, True):
    mutable = ['batch_stats'] if train and 'batch_stats' in variables else False
    out = jax.eval_shape(
      lambda v: model.apply(v, x, train=train, mutable=mutable),  # noqa: B023
      variables,
    )
    logits = out[0] if mutable else out
    assert logits.shape == (5, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize('image', [(8, 8, 1), (16, 16, 3)])
def test_layer_structure_and_names(image):
  h, w, c = image
  x = jnp.zeros((2, *image))
  mlp = _shapes(_abstract(_model('mlp'), x)['params'])
  assert mlp['dense0']['kernel'] == (h * w * c, 16)  # flattened image in
  assert mlp['dense1']['kernel'] == (16, 8) and mlp['head']['kernel'] == (8, 7)

  vgg = _shapes(_abstract(_model('vgg'), x))
  ins = (c, 4, 6)
  for i, width in enumerate((4, 6, 8)):
    assert vgg['params'][f'conv{i}'] == {'kernel': (3, 3, ins[i], width)}  # no bias with BN
    assert vgg['batch_stats'][f'bn{i}'] == {'mean': (width,), 'var': (width,)}
  assert vgg['params']['head']['kernel'] == (8, 7)
  plain = _shapes(_abstract(_model('vgg', batch_norm=False), x))
  assert 'batch_stats' not in plain and plain['params']['conv0']['bias'] == (4,)

  resnet = _shapes(_abstract(_model('resnet'), x))
  assert resnet['params']['stem_conv']['kernel'] == (3, 3, c, 4)
  assert 'shortcut_conv' not in resnet['params']['stage0_block0']  # same width, stride 1
  assert resnet['params']['stage1_block0']['shortcut_conv']['kernel'] == (1, 1, 4, 8)
  assert resnet['params']['head']['kernel'] == (8, 7)


def test_vgg_pools_after_the_listed_layers_and_resnet_strides_later_stages():
  x = jnp.zeros((2, 8, 8, 1))
  vgg = _model('vgg', channels=(4, 4, 4, 4, 4, 4), pool_after=(0, 1, 2, 3, 4))
  # 8 -> 4 -> 2 -> 1, then no further pooling of a 1x1 image.
  sizes = [_intermediate(vgg, x, f'conv{i}').shape[1] for i in range(6)]
  assert sizes == [8, 4, 2, 1, 1, 1]
  assert _intermediate(_model('vgg', pool_after=(1,)), x, 'conv2').shape == (2, 4, 4, 8)
  resnet = _model('resnet', widths=(4, 8, 16))
  assert _intermediate(resnet, x, 'stage0_block0').shape == (2, 8, 8, 4)
  assert _intermediate(resnet, x, 'stage1_block0').shape == (2, 4, 4, 8)
  assert _intermediate(resnet, x, 'stage2_block0').shape == (2, 2, 2, 16)


def test_inner_widths_set_each_blocks_inner_conv():
  x = jnp.zeros((2, 8, 8, 3))
  inner = (3, 5, 6, 7)  # stage0 block0, stage0 block1, stage1 block0, stage1 block1
  pruned = _shapes(_abstract(_model('resnet', blocks_per_stage=2, inner_widths=inner), x))
  full = _shapes(_abstract(_model('resnet', blocks_per_stage=2), x))
  blocks = ['stage0_block0', 'stage0_block1', 'stage1_block0', 'stage1_block1']
  for block, in_ch, width, k in zip(blocks, (4, 4, 4, 8), (4, 4, 8, 8), inner, strict=True):
    p = pruned['params'][block]
    assert p['conv0']['kernel'] == (3, 3, in_ch, k), block
    assert p['conv1']['kernel'] == (3, 3, k, width), block  # the residual stream keeps its width
    assert pruned['batch_stats'][block]['bn0']['mean'] == (k,), block
    assert full['params'][block]['conv0']['kernel'] == (3, 3, in_ch, width), block


def test_sequence_fields_from_json_become_tuples():
  model = build_model(vision_config('vgg', channels=[4, 4], pool_after=[0]), 3)
  assert model.cfg.channels == (4, 4) and model.cfg.pool_after == (0,)
  hash(model.cfg)  # Flax module attributes must be hashable


# ----------------------------------------------------------------------------- BatchNorm


@pytest.fixture(scope='module')
def vgg_batch():
  model = build_model(vision_config('vgg', channels=(4, 6), pool_after=(0,)), 5)
  x = jnp.asarray(2.0 + np.random.default_rng(1).standard_normal((16, 8, 8, 1)), jnp.float32)
  return model, _numpy_variables(model, x), x


def test_train_step_moves_batch_stats_toward_the_batch_statistics(vgg_batch):
  model, variables, x = vgg_batch
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  # bn0 sees conv0(x): running = 0.9 * init + 0.1 * batch statistic (biased variance).
  conv0 = nn.Conv(4, (3, 3), use_bias=False).apply({'params': variables['params']['conv0']}, x)
  mean, var = np.mean(conv0, axis=(0, 1, 2)), np.var(conv0, axis=(0, 1, 2))
  np.testing.assert_allclose(updated['batch_stats']['bn0']['mean'], 0.1 * mean, rtol=1e-4)
  np.testing.assert_allclose(updated['batch_stats']['bn0']['var'], 0.9 + 0.1 * var, rtol=1e-4)
  for layer in ('bn0', 'bn1'):
    for stat, init in (('mean', 0.0), ('var', 1.0)):
      assert not np.allclose(updated['batch_stats'][layer][stat], init), (layer, stat)
  # Evaluation never updates them.
  _, same = model.apply(variables, x, train=False, mutable=['batch_stats'])
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables['batch_stats']), strict=True):
    np.testing.assert_array_equal(a, b)


def test_eval_uses_running_averages(vgg_batch):
  model, variables, x = vgg_batch
  # Eval: an example's logits do not depend on the rest of the batch; train: they do.
  eval_all = model.apply(variables, x, train=False)
  # atol: batch 1 and batch N use different matmul blockings, so a logit near 0 (7e-4 seen)
  # differs by float32 rounding (3e-8); batch dependence (train mode) would be O(1).
  np.testing.assert_allclose(
    model.apply(variables, x[:1], train=False), eval_all[:1], rtol=1e-5, atol=1e-6
  )
  train_one = model.apply(variables, x[:1], train=True, mutable=['batch_stats'])[0]
  train_all = model.apply(variables, x, train=True, mutable=['batch_stats'])[0]
  assert not np.allclose(train_one, train_all[:1], atol=1e-3)

  # With running averages converged to this batch's statistics (0.9^300 ~ 2e-14 of the init
  # left), evaluation on the batch equals training-mode normalisation of it.
  def update(_, stats):
    out = model.apply({**variables, 'batch_stats': stats}, x, train=True, mutable=['batch_stats'])
    return out[1]['batch_stats']

  stats = jax.jit(lambda s: jax.lax.fori_loop(0, 300, update, s))(variables['batch_stats'])
  converged = model.apply({**variables, 'batch_stats': stats}, x, train=False)
  np.testing.assert_allclose(converged, train_all, rtol=1e-3, atol=1e-3)
  assert not np.allclose(converged, eval_all, atol=1e-2)  # the stats really matter in eval


def test_resnet_training_updates_every_batchnorm():
  model = _model('resnet')
  x = jnp.asarray(1.0 + np.random.default_rng(2).standard_normal((4, 8, 8, 3)), jnp.float32)
  variables = _numpy_variables(model, x)
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  paths = jax.tree_util.tree_flatten_with_path(updated['batch_stats'])[0]
  names = {jax.tree_util.keystr(p) for p, _ in paths}
  assert any('shortcut_bn' in n for n in names) and any('stem_bn' in n for n in names)
  for (path, new), old in zip(paths, jax.tree.leaves(variables['batch_stats']), strict=True):
    assert not np.allclose(new, old), jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
  'name, overrides, match',
  [
    ('vgg', dict(channels=(8, 8), pool_after=(2,)), r'model\.pool_after.*\[0, 2\).*\[2\]'),
    ('vgg', dict(pool_after=(-1,)), r'model\.pool_after'),
    ('vgg', dict(channels=()), r'model\.channels'),
    ('vgg', dict(channels=(8, 0)), r'model\.channels'),
    ('resnet', dict(widths=(4, 8), inner_widths=(4,)), r'model\.inner_widths: expected 2'),
    ('resnet', dict(blocks_per_stage=2, inner_widths=(4, 4, 4)), r'expected 6 entries'),
    ('resnet', dict(inner_widths=(4, 0, 4)), r'model\.inner_widths'),
    ('resnet', dict(blocks_per_stage=0), r'model\.blocks_per_stage'),
    ('resnet', dict(widths=()), r'model\.widths'),
    ('mlp', dict(hidden=()), r'model\.hidden'),
    ('mlp', dict(activation='nope'), r'model\.activation'),
    ('vgg', dict(activation='nope'), r'model\.activation'),
    ('resnet', dict(activation='nope'), r'model\.activation'),
  ],
)
def test_bad_fields_are_config_errors_at_build_time(name, overrides, match):
  with pytest.raises(ConfigError, match=match):
    build_model(vision_config(name, **overrides), 10)


def test_unknown_fields_and_names_are_config_errors():
  with pytest.raises(ConfigError, match=r'model\.kernel_size: not a field of vgg'):
    vision_config('vgg', kernel_size=5)
  with pytest.raises(ConfigError, match=r"model\.name: .*got 'alexnet'"):
    vision_config('alexnet')
  cfg = vision_config('mlp')
  cfg.dropout = 0.1  # e.g. a typo'd or stale field in an experiment file
  with pytest.raises(ConfigError, match=r'model\.dropout: not a field of mlp'):
    build_model(cfg, 10)
  # num_classes is the task's, not a config field.
  with pytest.raises(ConfigError, match=r'model\.num_classes'):
    vision_config('resnet', num_classes=3)
