"""Pruning criteria against their definitions: SNIP by finite differences, Taylor's group score,
GraSP against an explicit Hessian, SynFlow's conservation law, magnitude and random."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxlab.sparsity import SCORERS, Pruner, ScoreContext, one_shot, zero_invariant_families
from jaxlab.sparsity.groups import flat_arrays, member_slices

IN, CLASSES = 5, 3


class TinyMLP(nn.Module):
  """`x -> [Dense -> act] * len(widths) -> Dense(CLASSES)`."""

  widths: tuple[int, ...] = (4, 3)
  bias: bool = True
  act: str = 'tanh'

  @nn.compact
  def __call__(self, x):
    act = {'tanh': jnp.tanh, 'relu': nn.relu}[self.act]
    for i, w in enumerate(self.widths):
      x = act(nn.Dense(w, use_bias=self.bias, name=f'dense{i}')(x))
    return nn.Dense(CLASSES, use_bias=self.bias, name='head')(x)


def _params(model: nn.Module, dtype, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, IN))))['params']
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.8, s.shape), dtype), shapes)


def _context(model: nn.Module, params: dict, dtype, extras=None) -> ScoreContext:
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(6, IN)), dtype)
  y = jnp.asarray(rng.integers(0, CLASSES, 6))

  def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x), y).mean()

  def apply_fn(p, inputs):
    return model.apply({'params': p}, inputs)

  return ScoreContext(params, loss_fn, apply_fn, (IN,), jax.random.key(3), extras or {})


def _flat(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in flat_arrays({'params': tree}).items()}


def _score(name: str, ctx: ScoreContext) -> dict[str, np.ndarray]:
  score = SCORERS.get(name).score
  return _flat(jax.jit(lambda p: score(dataclasses.replace(ctx, params=p)))(ctx.params))


def test_snip_is_weight_times_finite_difference_gradient():
  with jax.enable_x64(True):
    model = TinyMLP()
    params = _params(model, jnp.float64)
    ctx = _context(model, params, jnp.float64)
    scores, _ = ravel_pytree(_score('snip', ctx))
    theta, unravel = ravel_pytree(params)
    loss = jax.jit(lambda t: ctx.loss_fn(unravel(t)))
    h = 1e-6
    for i in np.random.default_rng(4).choice(theta.size, 8, replace=False):
      step = np.zeros(theta.shape)
      step[i] = h
      grad = (float(loss(theta + step)) - float(loss(theta - step))) / (2 * h)
      want = abs(float(theta[i] * grad))
      assert want > 1e-6  # a nonzero sensitivity, so the comparison is a real one
      assert float(scores[i]) == pytest.approx(want, rel=1e-6), i


def test_taylor_group_score_is_the_square_of_the_summed_terms():
  model = TinyMLP()
  params = _params(model, jnp.float32)
  ctx = _context(model, params, jnp.float32)
  families = zero_invariant_families(
    lambda v, x: model.apply(v, x), {'params': params}, jnp.zeros((2, IN))
  )
  assert [f.name for f in families] == ['dense0', 'dense1']
  grads = _flat(jax.jit(jax.grad(ctx.loss_fn))(params))
  flat = _flat(params)
  for members in ('producer', 'all'):
    pruner = Pruner(families, SCORERS.get('taylor'), 'global', one_shot(0, 0.5), 1, members)
    got = jax.jit(lambda p, pruner=pruner: pruner.group_scores(dataclasses.replace(ctx, params=p)))(
      params
    )
    for f, score in zip(families, got, strict=True):
      chosen = [m for m in f.param_members if members == 'all' or m.producer]
      terms = sum(
        np.asarray(member_slices(jnp.asarray(grads[m.path] * flat[m.path]), m, f.size)).sum(1)
        for m in chosen
      )
      np.testing.assert_allclose(score, terms**2, rtol=1e-5, atol=1e-12)
      # (Σ g·w)^2, not Σ (g·w)^2: the two differ for a group of several weights.
      squares = sum(
        np.asarray(member_slices(jnp.asarray((grads[m.path] * flat[m.path]) ** 2), m, f.size)).sum(
          1
        )
        for m in chosen
      )
      assert np.abs(np.asarray(score) - squares).max() > 1e-4 * np.abs(squares).max()


def _explicit_grasp(loss_fn, params) -> dict[str, np.ndarray]:
  theta, unravel = ravel_pytree(params)
  flat_loss = lambda t: loss_fn(unravel(t))  # noqa: E731
  hessian, g = jax.jit(lambda t: (jax.hessian(flat_loss)(t), jax.grad(flat_loss)(t)))(theta)
  return _flat(unravel(theta * (hessian @ g)))


def test_grasp_is_weight_times_hessian_gradient_product():
  with jax.enable_x64(True):
    model = TinyMLP()
    params = _params(model, jnp.float64)
    ctx = _context(model, params, jnp.float64)
    got = _score('grasp', ctx)
    want = _explicit_grasp(ctx.loss_fn, params)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-14, err_msg=k)
    assert max(np.abs(v).max() for v in want.values()) > 1e-3

    # With a `grasp_loss_fn` (the plugin's temperature-scaled loss) that loss is differentiated.
    def hot_loss(p):
      return ctx.loss_fn(jax.tree.map(lambda w: w * 0.5, p))

    hot = _score('grasp', dataclasses.replace(ctx, **{'extras': {'grasp_loss_fn': hot_loss}}))
    want_hot = _explicit_grasp(hot_loss, params)
    for k in want_hot:
      np.testing.assert_allclose(hot[k], want_hot[k], rtol=1e-10, atol=1e-14, err_msg=k)
      assert np.abs(hot[k] - want[k]).max() > 1e-6


def test_synflow_conserves_flow_across_layers():
  # Tanaka et al. (2020), Theorems 1-2: for a bias-free ReLU network, the SynFlow scores of
  # every layer sum to the same total R = 1^T f(1; |w|).
  model = TinyMLP(widths=(7, 6, 5), bias=False, act='relu')
  params = _params(model, jnp.float32)
  ctx = _context(model, params, jnp.float32)
  scores = _score('synflow', ctx)
  assert set(scores) == {f'params/{k}/kernel' for k in ('dense0', 'dense1', 'dense2', 'head')}
  totals = np.array([v.sum(dtype=np.float64) for v in scores.values()])
  abs_params = jax.tree.map(jnp.abs, params)
  flow = float(jnp.sum(jax.jit(model.apply)({'params': abs_params}, jnp.ones((1, IN)))))
  np.testing.assert_allclose(totals, flow, rtol=1e-5)
  assert np.all(np.concatenate([v.ravel() for v in scores.values()]) >= 0)
  # Data-free and sign-free: flipping weights' signs changes nothing.
  signs = jax.tree.map(
    lambda w: w * jnp.where(jnp.arange(w.size) % 2, -1.0, 1.0).reshape(w.shape), params
  )
  flipped = _score('synflow', dataclasses.replace(ctx, **{'params': signs}))
  for k in scores:
    np.testing.assert_allclose(flipped[k], scores[k], rtol=1e-6, err_msg=k)


def test_synflow_flow_is_not_conserved_with_biases():
  # The conservation above is a property of the bias-free network, not of the test: biases
  # carry part of the flow, so the kernels' totals fall below R and differ between layers.
  model = TinyMLP(widths=(7, 6, 5), bias=True, act='relu')
  params = _params(model, jnp.float32)
  scores = _score('synflow', _context(model, params, jnp.float32))
  totals = np.array([scores[f'params/{k}/kernel'].sum() for k in ('dense0', 'dense1', 'head')])
  assert np.ptp(totals) > 1e-3 * totals.max()


def test_magnitude_is_absolute_value():
  model = TinyMLP()
  params = _params(model, jnp.float32)
  got = _score('magnitude', _context(model, params, jnp.float32))
  for k, v in _flat(params).items():
    np.testing.assert_array_equal(got[k], np.abs(v))


def test_random_scores_are_uniform_and_depend_on_the_key():
  model = TinyMLP(widths=(40, 30))
  params = _params(model, jnp.float32)
  ctx = _context(model, params, jnp.float32)
  score = jax.jit(lambda k: SCORERS.get('random').score(dataclasses.replace(ctx, rng=k)))
  a, again, other = (_flat(score(jax.random.key(k))) for k in (3, 3, 4))
  values = np.concatenate([v.ravel() for v in a.values()])
  assert values.min() >= 0.0 and values.max() < 1.0
  assert abs(values.mean() - 0.5) < 0.05 and values.size > 1000
  for k, v in a.items():
    assert v.shape == _flat(params)[k].shape
    np.testing.assert_array_equal(v, again[k])
    assert not np.array_equal(v, other[k]), k
  # Arrays get different streams (not one sequence repeated per leaf).
  assert not np.array_equal(a['params/dense0/bias'][:30], a['params/dense1/bias'][:30])


def test_wanda_is_weight_magnitude_times_input_norm():
  """Wanda on a Dense kernel and on an attention query `[embed, heads, kv]`: `|W_ij|·‖X_i‖`
  with the norms of the `in` rows of the kernel's matrix view; other leaves get `|w|`."""
  rng = np.random.default_rng(3)
  dense = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(6, 2, 3)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
  params = {'d': {'kernel': dense}, 'q': {'query': {'kernel': query}}, 'n': {'scale': scale}}
  x = jnp.asarray(rng.normal(size=(50, 6)), jnp.float32)
  norms = jnp.sqrt(jnp.sum(x**2, axis=0))
  ctx = ScoreContext(
    params,
    None,
    None,
    (),
    jax.random.key(0),
    extras={'input_norms': {'d/kernel': norms, 'q/query/kernel': norms}},
  )
  s = SCORERS.get('wanda').score(ctx)
  for i in range(6):
    for j in range(4):
      assert s['d']['kernel'][i, j] == pytest.approx(abs(float(dense[i, j])) * float(norms[i]))
  np.testing.assert_allclose(s['q']['query']['kernel'], jnp.abs(query) * norms[:, None, None])
  np.testing.assert_array_equal(s['n']['scale'], jnp.abs(scale))
