"""Zero-invariant groups found from the jaxpr: zeroing a group equals removing it physically
(`crop` + `cropped_model_config` + a rebuilt model), the expected member structure (BatchNorm,
residual streams, a flatten's tiling), normalisations over channels block a family, and the
model's inputs and outputs never belong to one."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn import build_model
from jaxlab.sparsity import (
  Family,
  Member,
  crop,
  cropped_model_config,
  group_matrix,
  unstructured_families,
  zero_invariant_families,
)
from jaxlab.sparsity.groups import flat_arrays, unflatten_like
from jaxlab.vision import vision_config

NUM_CLASSES = 3
X = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)

MODELS = {
  'mlp': vision_config('mlp', hidden=(6, 5)),
  'vgg': vision_config('vgg', channels=(4, 6, 5), pool_after=(0,)),
  # Two blocks per stage; stage 1 starts with a stride-2 block and a 1x1 shortcut conv.
  'resnet': vision_config('resnet', widths=(4, 6), blocks_per_stage=2),
}


class ConvFlattenDense(nn.Module):
  """conv -> conv (stride 2) -> flatten -> dense -> head: a flatten of [4, 4, C] tiles the last
  conv's channels 16 times along the dense kernel's inputs."""

  widths: tuple[int, int, int] = (5, 4, 6)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = nn.relu(nn.Conv(self.widths[0], (3, 3), name='conv0')(x))
    x = nn.relu(nn.Conv(self.widths[1], (3, 3), strides=2, name='conv1')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.widths[2], name='dense0')(x))
    return nn.Dense(NUM_CLASSES, name='head')(x)


class NormMLP(nn.Module):
  """dense0 -> LayerNorm/RMSNorm over its channels -> relu -> dense1 -> relu -> head."""

  norm: str
  widths: tuple[int, int] = (6, 5)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = nn.Dense(self.widths[0], name='dense0')(x.reshape(x.shape[0], -1))
    x = (nn.LayerNorm if self.norm == 'layernorm' else nn.RMSNorm)(name='norm')(x)
    x = nn.relu(nn.Dense(self.widths[1], name='dense1')(nn.relu(x)))
    return nn.Dense(NUM_CLASSES, name='head')(x)


def _random_variables(model: nn.Module, seed: int = 0) -> dict:
  """Kernels N(0, 2 / fan_in); biases, BatchNorm scales and running statistics all random and
  non-trivial (drawn by numpy: compiling `model.init` takes longer than the tests)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), X, train=False))

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
      return rng.normal(0, std, leaf.shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 0.3, leaf.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@functools.cache
def _setup(name: str):
  """`(model config or None, model, variables, families)` for a model of this file."""
  if name in MODELS:
    cfg = MODELS[name]
    model = build_model(cfg, NUM_CLASSES)
  else:
    cfg, model = None, ConvFlattenDense()
  variables = _random_variables(model)
  families = zero_invariant_families(
    lambda v, x: model.apply(v, x, train=False), variables, jnp.asarray(X)
  )
  return cfg, model, variables, families


def _members(family: Family) -> set[tuple[str, int, int, bool]]:
  return {(m.path, m.axis, m.tile, m.producer) for m in family.members}


def _by_name(families) -> dict[str, Family]:
  return {f.name: f for f in families}


def _zero_groups(variables: dict, family: Family, removed: np.ndarray) -> dict:
  """Every parameter member slice of the `removed` groups set to 0; model state (BatchNorm
  running statistics) untouched: zero-invariance is about the parameters."""
  flat = {k: np.array(v) for k, v in flat_arrays(variables).items()}
  for m in family.param_members:
    x = flat[m.path]
    axis = m.axis % x.ndim
    view = x.reshape(*x.shape[:axis], m.tile, family.size, *x.shape[axis + 1 :])
    index = [slice(None)] * view.ndim
    index[axis + 1] = removed
    view[tuple(index)] = 0.0
    flat[m.path] = view.reshape(x.shape)
  return unflatten_like(variables, flat)


def _cropped_model(name: str, cfg, cropped: dict) -> nn.Module:
  if cfg is not None:
    return build_model(cropped_model_config(cfg, cropped), NUM_CLASSES)
  p = cropped['params']
  widths = tuple(int(p[k]['kernel'].shape[-1]) for k in ('conv0', 'conv1', 'dense0'))
  return ConvFlattenDense(widths)


@functools.cache
def _forward(model: nn.Module):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _apply(model: nn.Module, variables: dict) -> np.ndarray:
  return np.asarray(_forward(model)(variables, X))


# ------------------------------------------------------------------------------ structure


def test_mlp_families():
  *_, families = _setup('mlp')
  assert [(f.name, f.size) for f in families] == [('dense0', 6), ('dense1', 5)]
  f = _by_name(families)
  assert _members(f['dense0']) == {
    ('params/dense0/kernel', 1, 1, True),
    ('params/dense0/bias', 0, 1, False),
    ('params/dense1/kernel', 0, 1, False),
  }
  assert _members(f['dense1']) == {
    ('params/dense1/kernel', 1, 1, True),
    ('params/dense1/bias', 0, 1, False),
    ('params/head/kernel', 0, 1, False),
  }


def test_vgg_family_is_filter_batch_norm_and_next_input():
  *_, families = _setup('vgg')
  assert [(f.name, f.size) for f in families] == [('conv0', 4), ('conv1', 6), ('conv2', 5)]
  f = _by_name(families)
  for i, consumer in enumerate(['conv1/kernel', 'conv2/kernel', 'head/kernel']):
    bn = [
      (f'params/bn{i}/scale', 0, 1, False),
      (f'params/bn{i}/bias', 0, 1, False),
      (f'batch_stats/bn{i}/mean', 0, 1, False),
      (f'batch_stats/bn{i}/var', 0, 1, False),
    ]
    consumer_axis = 0 if consumer.startswith('head') else 2
    assert _members(f[f'conv{i}']) == {
      (f'params/conv{i}/kernel', 3, 1, True),
      *bn,
      (f'params/{consumer}', consumer_axis, 1, False),
    }
  # BatchNorm statistics are members (cropped with the channel) but not parameters.
  assert {m.path for m in f['conv0'].param_members} == {
    'params/conv0/kernel',
    'params/bn0/scale',
    'params/bn0/bias',
    'params/conv1/kernel',
  }


def _bn(prefix: str) -> set[tuple[str, int, int, bool]]:
  return {
    (f'params/{prefix}/scale', 0, 1, False),
    (f'params/{prefix}/bias', 0, 1, False),
    (f'batch_stats/{prefix}/mean', 0, 1, False),
    (f'batch_stats/{prefix}/var', 0, 1, False),
  }


def test_resnet_residual_stream_is_one_family():
  *_, families = _setup('resnet')
  f = _by_name(families)
  assert sorted(f) == [
    'stage0_block0/conv0',
    'stage0_block0/conv1',  # the stage-0 residual stream (stem + both block outputs)
    'stage0_block1/conv0',
    'stage1_block0/conv0',
    'stage1_block0/conv1',  # the stage-1 residual stream (shortcut + both block outputs)
    'stage1_block1/conv0',
  ]
  stream0 = f['stage0_block0/conv1']
  assert stream0.size == 4
  assert _members(stream0) == {
    ('params/stem_conv/kernel', 3, 1, True),
    *_bn('stem_bn'),
    ('params/stage0_block0/conv1/kernel', 3, 1, True),
    *_bn('stage0_block0/bn1'),
    ('params/stage0_block1/conv1/kernel', 3, 1, True),
    *_bn('stage0_block1/bn1'),
    # consumers: both blocks' first convs, and stage 1's first conv and its shortcut
    ('params/stage0_block0/conv0/kernel', 2, 1, False),
    ('params/stage0_block1/conv0/kernel', 2, 1, False),
    ('params/stage1_block0/conv0/kernel', 2, 1, False),
    ('params/stage1_block0/shortcut_conv/kernel', 2, 1, False),
  }
  stream1 = f['stage1_block0/conv1']
  assert stream1.size == 6
  assert _members(stream1) == {
    ('params/stage1_block0/conv1/kernel', 3, 1, True),
    *_bn('stage1_block0/bn1'),
    ('params/stage1_block0/shortcut_conv/kernel', 3, 1, True),
    *_bn('stage1_block0/shortcut_bn'),
    ('params/stage1_block1/conv1/kernel', 3, 1, True),
    *_bn('stage1_block1/bn1'),
    ('params/stage1_block1/conv0/kernel', 2, 1, False),
    ('params/head/kernel', 0, 1, False),
  }
  for block, size in [('stage0_block0', 4), ('stage0_block1', 4), ('stage1_block1', 6)]:
    inner = f[f'{block}/conv0']
    assert inner.size == size
    assert _members(inner) == {
      (f'params/{block}/conv0/kernel', 3, 1, True),
      *_bn(f'{block}/bn0'),
      (f'params/{block}/conv1/kernel', 2, 1, False),
    }


def test_flatten_tiles_the_channel_over_the_spatial_positions():
  _, _, variables, families = _setup('conv_flatten')
  f = _by_name(families)
  assert sorted(f) == ['conv0', 'conv1', 'dense0']
  # conv1 writes [B, 4, 4, 4]; the flatten makes dense0's 64 inputs [4 * 4 positions, 4 channels].
  assert _members(f['conv1']) == {
    ('params/conv1/kernel', 3, 1, True),
    ('params/conv1/bias', 0, 1, False),
    ('params/dense0/kernel', 0, 16, False),
  }
  # Group i of a tiled member is every input j with j % 4 == i: rows i, i + 4, ..., i + 60.
  kernel = np.asarray(variables['params']['dense0']['kernel'])
  rows = np.asarray(group_matrix(variables, f['conv1']))
  conv1 = np.asarray(variables['params']['conv1']['kernel'])
  bias = np.asarray(variables['params']['conv1']['bias'])
  for i in range(4):
    want = np.concatenate([bias[i : i + 1], conv1[..., i].ravel(), kernel[i::4].ravel()])
    np.testing.assert_array_equal(np.sort(rows[i]), np.sort(want))


@pytest.mark.parametrize('name', ['mlp', 'vgg', 'resnet', 'conv_flatten'])
def test_inputs_and_outputs_are_in_no_family(name):
  _, _, variables, families = _setup(name)
  first = {'mlp': 'dense0', 'vgg': 'conv0', 'resnet': 'stem_conv', 'conv_flatten': 'conv0'}[name]
  in_axis = 0 if name == 'mlp' else 2
  for f in families:
    for m in f.members:
      assert (m.path, m.axis) != (f'params/{first}/kernel', in_axis), f.name
      assert not m.path.startswith('params/head/') or (m.path, m.axis) == (
        'params/head/kernel',
        0,
      ), (f.name, m)
  # Every kernel output axis except the head's is a family's producer.
  kernels = [k for k in flat_arrays(variables) if k.endswith('/kernel') and '/head/' not in k]
  produced = {m.path for f in families for m in f.members if m.producer}
  assert produced == set(kernels)


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm'])
def test_normalisation_over_channels_blocks_the_family(norm):
  model = NormMLP(norm)
  variables = _random_variables(model)
  families = zero_invariant_families(lambda v, x: model.apply(v, x), variables, jnp.asarray(X))
  # Only the layer after the norm is prunable: nothing on the norm's channels.
  assert [f.name for f in families] == ['dense1']
  touched = {m.path for f in families for m in f.members}
  assert not touched & {'params/dense0/kernel', 'params/dense0/bias'}
  assert not any(p.startswith('params/norm/') for p in touched)
  # The blocking is needed: removing a dense0 channel (zeroing it and its norm entries and the
  # dense1 inputs it feeds) changes the other channels' normalisation, unlike cropping it.
  members = [Member('params/dense0/kernel', 1, producer=True), Member('params/dense0/bias', 0)]
  members += [Member(f'params/norm/{n}', 0) for n in variables['params']['norm']]
  family = Family('dense0', 6, (*members, Member('params/dense1/kernel', 0)))
  zeroed = _zero_groups(variables, family, np.array([2]))
  cropped = crop(variables, [family], {'dense0': np.arange(6) != 2})
  got = _apply(NormMLP(norm, (5, 5)), cropped)
  assert np.abs(_apply(model, zeroed) - got).max() > 1e-2


def test_unstructured_families_are_one_group_per_entry():
  _, _, variables, _ = _setup('vgg')
  fams = unstructured_families(variables['params'], exclude=r'head/.*')
  assert [f.name for f in fams] == ['conv0/kernel', 'conv1/kernel', 'conv2/kernel']
  assert [f.size for f in fams] == [3 * 3 * 3 * 4, 3 * 3 * 4 * 6, 3 * 3 * 6 * 5]
  assert all(f.members[0].axis is None and f.members[0].producer for f in fams)
  with pytest.raises(ValueError, match='no parameter path matches'):
    unstructured_families(variables['params'], include=r'nothing')


# ------------------------------------------------------------------------------ invariance


def _zero_all(variables: dict, families, removed: dict) -> dict:
  for f in families:
    variables = _zero_groups(variables, f, removed[f.name])
  return variables


@pytest.mark.parametrize('name', ['mlp', 'vgg', 'resnet', 'conv_flatten'])
def test_zeroing_groups_equals_cropping_them(name):
  # Each trial removes random groups from every family at once: first a single group per
  # family, then random proper subsets of several groups.
  cfg, model, variables, families = _setup(name)
  full = _apply(model, variables)
  rng = np.random.default_rng(1)
  for trial in range(3):
    removed = {
      f.name: np.sort(rng.choice(f.size, 1 if trial == 0 else rng.integers(2, f.size), False))
      for f in families
    }
    keeps = {f.name: ~np.isin(np.arange(f.size), removed[f.name]) for f in families}
    zeroed = _apply(model, _zero_all(variables, families, removed))
    # Cropped from the original (not the zeroed) variables: the removed slices are gone.
    cropped = crop(variables, families, keeps)
    for f in families:
      for m in f.members:
        shape = np.shape(flat_arrays(cropped)[m.path])
        assert shape[m.axis] == m.tile * keeps[f.name].sum(), (f.name, m)
    small = _cropped_model(name, cfg, cropped)
    np.testing.assert_allclose(
      _apply(small, cropped), zeroed, atol=1e-5, rtol=0, err_msg=f'trial {trial}: {removed}'
    )
    assert np.abs(zeroed - full).max() > 1e-3  # the removals do change the function
  # Each family on its own: zeroing some of its groups equals cropping just those, and does
  # change the outputs (so no family passes the comparisons vacuously).
  for f in families:
    removed = np.sort(rng.choice(f.size, rng.integers(1, f.size), False))
    alone = _apply(model, _zero_groups(variables, f, removed))
    cropped = crop(variables, families, {f.name: ~np.isin(np.arange(f.size), removed)})
    small = _cropped_model(name, cfg, cropped)
    np.testing.assert_allclose(_apply(small, cropped), alone, atol=1e-5, rtol=0, err_msg=f.name)
    assert np.abs(alone - full).max() > 1e-4, f.name
