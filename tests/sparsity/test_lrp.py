"""LRP pruning criterion (Yeom et al. 2021): conservation, numpy reference, alpha-beta, BN fold."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn import build_model
from jaxlab.sparsity import lrp
from jaxlab.vision import vision_config

NUM_CLASSES = 5
VGG = dict(channels=(8, 8), pool_after=(0,))
# Small nets without BatchNorm; one shape each, so tests share the compiled LRP (static args too).
NETS = [('mlp', dict(hidden=(32, 32))), ('vgg', dict(**VGG, batch_norm=False))]


def _init(model, x, seed: int = 0):
  """Random variables drawn by numpy: kernels N(0, 2 / fan_in), BatchNorm the identity.

  Compiling `model.init` (threefry) takes seconds on CPU, longer than LRP itself.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return (np.ones if path[-1].key in ('scale', 'var') else np.zeros)(leaf.shape, np.float32)

  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _model(name: str, **overrides):
  model = build_model(vision_config(name, **overrides), NUM_CLASSES)
  x = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)  # >= 0, like images
  return model, _init(model, x), x


@functools.cache
def _logits(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _target_logit(model, variables, x):
  return _logits(model)(variables, x).max(-1)


def _zero_biases(variables):
  zero = lambda path, v: np.zeros_like(v) if path[-1].key == 'bias' else v  # noqa: E731
  return {**variables, 'params': jax.tree_util.tree_map_with_path(zero, variables['params'])}


def _random_batch_norm(variables, seed: int = 2):
  """BatchNorm with non-trivial scale, offset and running statistics (folding then adds biases)."""
  rng = np.random.default_rng(seed)

  def perturb(path, v):
    if not any(p.key.startswith('bn') or p.key.endswith('_bn') for p in path[:-1]):
      return v
    if path[-1].key in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return rng.normal(0, 0.5, v.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(perturb, dict(variables))


def _totals(relevance):
  """Per-sample total relevance of a layer."""
  return relevance.reshape(relevance.shape[0], -1).sum(-1)


@pytest.fixture(scope='module')
def vgg_bn():
  """A VGG with BatchNorm in eval mode, random statistics, and positive logits."""
  model, variables, x = _model('vgg', **VGG)
  variables = _random_batch_norm(variables)
  head = variables['params']['head']
  variables['params'] = {**variables['params'], 'head': {**head, 'bias': head['bias'] + 5.0}}
  return model, variables, x


@pytest.mark.parametrize('name, overrides', NETS)
def test_z_rule_conserves_relevance_without_biases(name, overrides):
  # VGG: conv, max-pool, global average pool, dense head.
  model, variables, x = _model(name, **overrides)
  variables = _zero_biases(variables)
  maps = lrp.lrp_relevance_maps(model, variables, x, rule='z')
  assert set(maps) == {*variables['params'], 'input'}
  logit = _target_logit(model, variables, x)
  for key, relevance in maps.items():
    np.testing.assert_allclose(_totals(relevance), logit, rtol=1e-4, err_msg=key)


def test_resnet_with_folded_batch_norm():
  # Folding BN creates biases. With them out of the denominators (bias=False) every layer
  # conserves exactly, so every cut through the network carries the target logit (the residual
  # sum splits it between branch and shortcut). The bias-free denominators can be close to 0,
  # which float32 resolves poorly, so this runs in float64.
  model, variables, x = _model('resnet', widths=(4, 8))
  with jax.enable_x64(True):
    variables, x = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64), (_random_batch_norm(variables), x)
    )
    logit = _target_logit(model, variables, x)
    maps = lrp.lrp_relevance_maps(model, variables, x, rule='z', bias=False)
    totals = {k: _totals(v) for k, v in maps.items()}
    for key in ('input', 'stem_conv', 'head'):
      np.testing.assert_allclose(totals[key], logit, rtol=1e-9, err_msg=key)
    for block in ('stage0_block0', 'stage1_block0'):
      np.testing.assert_allclose(totals[f'{block}/conv0'], totals[f'{block}/conv1'], rtol=1e-9)
    cut = totals['stage1_block0/conv1'] + totals['stage1_block0/shortcut_conv']
    np.testing.assert_allclose(cut, logit, rtol=1e-9)

    # With the biases in the denominators they absorb relevance, and LRP-0 of a ReLU network
    # is input * gradient of the target logit: an independent check, by plain autodiff of the
    # model itself, of BN folding, the residual sums and average pooling.
    with_biases = lrp.lrp_relevance_maps(model, variables, x, rule='z')['input']
    assert np.abs(_totals(with_biases) - logit).max() > 1e-2
    grad = jax.jit(jax.grad(lambda x: _target_logit(model, variables, x).sum()))(x)
    np.testing.assert_allclose(with_biases, x * grad, rtol=1e-9, atol=1e-12)


def test_z_rule_with_biases_is_gradient_times_input_through_max_pool(vgg_bn):
  model, variables, x = vgg_bn
  grad = jax.jit(jax.grad(lambda x: _target_logit(model, variables, x).sum()))(x)
  relevance = lrp.lrp_relevance_maps(model, variables, x, rule='z')['input']
  np.testing.assert_allclose(relevance, x * grad, rtol=1e-4, atol=1e-6)


def _share(c, z):
  return c / z if z else 0.0


def _numpy_lrp_layer(a, w, b, r, rule, eps=0.25, alpha=2.0, beta=1.0):
  """One sample, one Dense layer: R_j = sum_k (share of a_j w_jk in z_k) R_k, by loops."""
  out = np.zeros_like(a)
  for k in np.flatnonzero(r):
    contributions = [a[j] * w[j, k] for j in range(len(a))]
    if rule == 'epsilon':
      z = sum(contributions) + b[k]
      z += eps if z >= 0 else -eps
      for j, c in enumerate(contributions):
        out[j] += c / z * r[k]
    else:  # alphabeta
      zp = sum(max(c, 0) for c in contributions) + max(b[k], 0)
      zn = sum(min(c, 0) for c in contributions) + min(b[k], 0)
      for j, c in enumerate(contributions):  # no contribution of a sign: that share is dropped
        out[j] += (alpha * _share(max(c, 0), zp) - beta * _share(min(c, 0), zn)) * r[k]
  return out


def _numpy_lrp(x, params, labels, rule):
  """LRP of a Dense-ReLU-Dense net in float64, sample by sample."""
  (w0, b0), (w1, b1) = (
    (np.asarray(params[n]['kernel'], np.float64), np.asarray(params[n]['bias'], np.float64))
    for n in ('dense0', 'head')
  )
  maps = {'head': [], 'dense0': [], 'input': []}
  for x_n, label in zip(np.asarray(x, np.float64), labels, strict=True):
    a1 = np.maximum(x_n @ w0 + b0, 0)
    z2 = a1 @ w1 + b1
    r2 = np.where(np.arange(len(z2)) == label, z2, 0.0)
    r1 = _numpy_lrp_layer(a1, w1, b1, r2, rule)  # = the relevance of dense0's outputs (ReLU)
    for key, r in zip(maps, (r2, r1, _numpy_lrp_layer(x_n, w0, b0, r1, rule)), strict=True):
      maps[key].append(r)
  return {k: np.stack(v) for k, v in maps.items()}


@pytest.mark.parametrize('rule, target', [('epsilon', 'labels'), ('alphabeta', 3)])
def test_rules_match_numpy_reference(rule, target):
  model = build_model(vision_config('mlp', hidden=(6,)), 4)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 5)).astype(np.float32)  # signed inputs
  params = _init(model, x)['params']
  params = {
    'dense0': {**params['dense0'], 'bias': rng.normal(0, 0.3, 6).astype(np.float32)},
    'head': {**params['head'], 'bias': rng.normal(0, 0.3, 4).astype(np.float32)},
  }
  if target == 'labels':
    # True labels rather than the predicted class, with negative logits: the sign in the
    # epsilon rule matters only where z < 0, and in a ReLU net that is only at the output.
    logits = _logits(model)({'params': params}, x)
    target = np.asarray(logits.argmin(-1))
    assert (logits.min(-1) < 0).sum() >= 2
  kwargs = dict(rule=rule, epsilon=0.25, alpha=2.0, beta=1.0, target=target)
  maps = lrp.lrp_relevance_maps(model, {'params': params}, x, **kwargs)
  expected = _numpy_lrp(x, params, np.broadcast_to(target, (3,)), rule)
  for key, want in expected.items():
    np.testing.assert_allclose(maps[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
  scores = lrp.lrp_relevance(model, {'params': params}, x, **kwargs)
  np.testing.assert_allclose(scores['dense0'], expected['dense0'].sum(0), rtol=1e-5, atol=1e-6)


def test_alpha1_beta0_relevance_is_non_negative_for_non_negative_inputs(vgg_bn):
  model, variables, x = vgg_bn
  assert (_target_logit(model, variables, x) > 0).all()  # positive relevance at the output
  for key, relevance in lrp.lrp_relevance_maps(model, variables, x, rule='alphabeta').items():
    assert relevance.min() >= 0, key
  assert lrp.lrp_relevance_maps(model, variables, x, rule='z')['input'].min() < 0  # not vacuous


@pytest.mark.parametrize('alpha, beta', [(1.0, 0.0), (2.0, 1.0)])
@pytest.mark.parametrize('name, overrides', NETS)
def test_alphabeta_rule_conserves_relevance_without_biases(name, overrides, alpha, beta):
  # Where an output has no negative contribution its beta share is dropped (standard LRP), so
  # the layers are wide enough that every relevant output has contributions of both signs.
  model, variables, x = _model(name, **overrides)
  variables = _zero_biases(variables)
  logit = _target_logit(model, variables, x)
  maps = lrp.lrp_relevance_maps(model, variables, x, rule='alphabeta', alpha=alpha, beta=beta)
  for key, relevance in maps.items():
    np.testing.assert_allclose(_totals(relevance), logit, rtol=1e-4, err_msg=key)


@pytest.mark.parametrize('use_bias', [False, True])
def test_folded_batch_norm_computes_conv_then_batch_norm(use_bias):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = nn.Conv(4, (3, 3), strides=2, use_bias=use_bias)
  conv_params = dict(_init(conv, x)['params'])
  if use_bias:
    conv_params['bias'] = rng.normal(size=4).astype(np.float32)
  bn_params = {'scale': rng.uniform(0.5, 1.5, 4), 'bias': rng.normal(size=4)}
  bn_stats = {'mean': rng.normal(size=4), 'var': rng.uniform(0.1, 1.0, 4)}
  bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3)
  y = conv.apply({'params': conv_params}, x)
  expected = bn.apply({'params': bn_params, 'batch_stats': bn_stats}, y)
  kernel, bias = lrp.fold_batch_norm(
    conv_params['kernel'], conv_params.get('bias'), bn_params, bn_stats, 1e-3
  )
  folded = nn.Conv(4, (3, 3), strides=2).apply({'params': {'kernel': kernel, 'bias': bias}}, x)
  np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)


def test_relevance_of_a_batch_norm_vgg_equals_that_of_the_folded_vgg(vgg_bn):
  # The alpha-beta rule depends on the signs of the (folded) weights, so this fails unless LRP
  # folds each BatchNorm into its conv rather than treating it as a layer of its own.
  model, variables, x = vgg_bn
  plain, _, _ = _model('vgg', **VGG, batch_norm=False)
  params = {'head': variables['params']['head']}
  for i in range(2):
    bn = variables['params'][f'bn{i}'], variables['batch_stats'][f'bn{i}']
    kernel, bias = lrp.fold_batch_norm(variables['params'][f'conv{i}']['kernel'], None, *bn, 1e-5)
    params[f'conv{i}'] = {'kernel': kernel, 'bias': bias}
  np.testing.assert_allclose(
    _logits(plain)({'params': params}, x), _logits(model)(variables, x), rtol=1e-5, atol=1e-5
  )
  got = lrp.lrp_relevance_maps(model, variables, x, rule='composite')
  want = lrp.lrp_relevance_maps(plain, {'params': params}, x, rule='composite')
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('rule', ['z', 'alphabeta'])
@pytest.mark.parametrize('name, overrides', NETS)
def test_dead_units_have_exactly_zero_relevance(name, overrides, rule):
  model, variables, x = _model(name, **overrides)
  params = dict(variables['params'])
  layer = 'dense0' if name == 'mlp' else 'conv1'
  kernel = params[layer]['kernel'].copy()
  kernel[..., 3] = 0  # with its bias 0, unit 3 is always 0
  params[layer] = {'kernel': kernel, 'bias': np.zeros_like(params[layer]['bias'])}
  beta = 1.0 if rule == 'alphabeta' else 0.0
  scores = lrp.lrp_relevance(model, {'params': params}, x, rule=rule, alpha=1.0 + beta, beta=beta)
  assert scores[layer][3] == 0
  assert (scores[layer] != 0).sum() > 1
  assert all(np.isfinite(v).all() for v in scores.values())  # 0 / 0 handled


def test_scores_sum_maps_over_samples_and_positions_from_the_target_logit(vgg_bn):
  model, variables, x = vgg_bn
  maps = lrp.lrp_relevance_maps(model, variables, x, rule='composite')
  scores = lrp.lrp_relevance(model, variables, x, rule='composite')
  assert scores.keys() == {'conv0', 'conv1', 'head'}
  assert scores['conv1'].shape == (8,)
  for key, score in scores.items():
    np.testing.assert_allclose(score, maps[key].sum(tuple(range(maps[key].ndim - 1))), rtol=1e-5)
  logits = _logits(model)(variables, x)
  want = jax.nn.one_hot(logits.argmax(-1), NUM_CLASSES) * logits
  np.testing.assert_allclose(maps['head'], want, rtol=1e-6)


def test_composite_uses_epsilon_for_dense_and_alphabeta_for_conv(vgg_bn):
  model, variables, x = vgg_bn
  composite = lrp.lrp_relevance_maps(model, variables, x, rule='composite')
  z = lrp.lrp_relevance_maps(model, variables, x, rule='z')  # = epsilon 1e-6, up to 1e-6
  alphabeta = lrp.lrp_relevance_maps(model, variables, x, rule='alphabeta')
  # The last conv's relevance comes through the dense head only; the input's through the convs.
  np.testing.assert_allclose(composite['conv1'], z['conv1'], rtol=1e-5, atol=1e-7)
  assert not np.allclose(composite['conv1'], alphabeta['conv1'])
  assert not np.allclose(composite['input'], z['input'])


def test_rejects_bad_rules_and_activations():
  model, variables, x = _model('mlp', hidden=(4,))
  with pytest.raises(ValueError, match='rule'):
    lrp.lrp_relevance(model, variables, x, rule='gamma')
  with pytest.raises(ValueError, match='alpha - beta'):
    lrp.lrp_relevance(model, variables, x, rule='alphabeta', alpha=2.0, beta=0.0)
  model, variables, x = _model('mlp', hidden=(4,), activation='gelu')
  with pytest.raises(ValueError, match='ReLU'):
    lrp.lrp_relevance(model, variables, x)
