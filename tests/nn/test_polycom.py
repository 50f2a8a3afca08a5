"""PolyReLU, PolyNorm and the SwiGLU-matched FFN (jaxlab.nn.polycom) against direct formulas."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.polycom import (
  MatchedFFN,
  PolyNorm,
  PolyReLU,
  matched_hidden_width,
  poly_norm,
  poly_relu,
)
from jaxlab.nn.transformer import GLU, MLP, TransformerConfig, TransformerLM

X = np.linspace(-2.0, 2.0, 24, dtype=np.float32).reshape(2, 12)  # includes negatives and 0
A = np.array([0.7, -0.4, 0.25], np.float32)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def rms_normalize_np(u: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  return u / np.sqrt(np.mean(u.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps)


def test_poly_relu_value_and_gradients_match_the_formula():
  r = np.maximum(X, 0.0).astype(np.float64)
  want = 0.3 + sum(A[i - 1] * r**i for i in (1, 2, 3))
  np.testing.assert_allclose(poly_relu(X, A, 0.3), want, rtol=1e-6, atol=1e-6)
  # d/dx = Σ i a_i ReLU(x)^{i-1} on x > 0, 0 on x < 0; d/da_i = Σ ReLU(x)^i; d/da0 = N.
  gx, ga, ga0 = jax.grad(lambda x, a, a0: poly_relu(x, a, a0).sum(), argnums=(0, 1, 2))(
    jnp.asarray(X), jnp.asarray(A), 0.3
  )
  want_gx = np.where(X > 0, sum(i * A[i - 1] * r ** (i - 1) for i in (1, 2, 3)), 0.0)
  np.testing.assert_allclose(gx, want_gx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ga, [np.sum(r**i) for i in (1, 2, 3)], rtol=1e-5)
  assert float(ga0) == X.size


def test_poly_norm_value_and_gradients_match_the_formula():
  x64 = X.astype(np.float64)
  terms = [rms_normalize_np(x64**i) for i in (1, 2, 3)]
  want = sum(A[i] * terms[i] for i in range(3)) - 0.1
  np.testing.assert_allclose(poly_norm(X, A, -0.1), want, rtol=1e-5, atol=1e-6)
  # d/da_i is the sum of the normalised i-th power; d/db the element count.
  _, ga, gb = jax.grad(lambda x, a, b: poly_norm(x, a, b).sum(), argnums=(0, 1, 2))(
    jnp.asarray(X), jnp.asarray(A), -0.1
  )
  np.testing.assert_allclose(ga, [t.sum() for t in terms], rtol=1e-4, atol=1e-4)
  assert float(gb) == X.size
  # d/dx by central finite differences of the float64 formula, on a weighted sum.
  w = np.random.default_rng(0).normal(size=X.shape)

  def f_np(x):
    return np.sum(w * sum(A[i - 1] * rms_normalize_np(x**i) for i in (1, 2, 3)))

  gx = jax.grad(lambda x: jnp.sum(w * poly_norm(x, jnp.asarray(A), 0.0)))(jnp.asarray(X))
  eps, fd = 1e-5, np.zeros_like(x64)
  for idx in np.ndindex(X.shape):
    e = np.zeros_like(x64)
    e[idx] = eps
    fd[idx] = (f_np(x64 + e) - f_np(x64 - e)) / (2 * eps)
  np.testing.assert_allclose(gx, fd, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize('module, const', [(PolyReLU(), 'a0'), (PolyNorm(), 'b')])
def test_modules_initialise_as_the_paper_and_compute_the_formula(module, const):
  params = module.init(jax.random.key(0), X)['params']
  np.testing.assert_allclose(params['a'], [1 / 3] * 3)
  assert float(params[const]) == 0.0
  y = module.apply({'params': {'a': A, const: np.float32(0.2)}}, X)
  want = poly_relu(X, A, 0.2) if const == 'a0' else poly_norm(X, A, 0.2)
  np.testing.assert_allclose(y, want, rtol=1e-6)


def make_cfg(**kw) -> TransformerConfig:
  return TransformerConfig(vocab_size=64, width=16, depth=2, heads=2, mlp_dim=24, max_len=8, **kw)


@pytest.mark.parametrize('name, module', [('polyrelu', 'PolyReLU_0'), ('polynorm', 'PolyNorm_0')])
def test_registered_activation_gives_each_ffn_its_own_learnable_coefficients(name, module):
  cfg = make_cfg(activation=name)
  shapes = jax.eval_shape(TransformerLM(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  for i in range(cfg.depth):
    params = nn.unbox(shapes['params'])[f'block_{i}']['ffn'][module]
    assert set(params) == {'a', 'a0' if name == 'polyrelu' else 'b'}
  # The coefficients are trained: the FFN's output has a nonzero gradient with respect to them.
  x = jax.random.normal(jax.random.key(1), (1, 4, cfg.width))
  ffn = MLP(cfg)

  @jax.jit
  def grad_of_coefficients(x):
    params = nn.unbox(ffn.init(jax.random.key(0), x, deterministic=True)['params'])
    loss = lambda p: jnp.sum(ffn.apply({'params': p}, x, deterministic=True) ** 2)  # noqa: E731
    return jax.grad(loss)(params)[module]['a']

  assert float(jnp.abs(grad_of_coefficients(x)).sum()) > 0


def test_learnable_activation_outside_a_module_says_what_to_do():
  with pytest.raises(ValueError, match='inside a Flax module'):
    ACTIVATIONS.get('polyrelu')(jnp.ones(3))


def test_swiglu_rejects_an_odd_width():
  with pytest.raises(ValueError, match='even last axis'):
    ACTIVATIONS.get('swiglu')(jnp.ones((2, 5)))


def ffn_params(ffn_cls, cfg: TransformerConfig, shapes_only: bool = False) -> dict:
  x = jnp.ones((1, 4, cfg.width))

  def init(key):
    return ffn_cls(cfg).init(key, x, deterministic=True)

  key = jax.random.key(0)
  params = jax.eval_shape(init, key) if shapes_only else jax.jit(init)(key)
  return nn.unbox(params['params'])


def test_matched_widths_give_swiglu_parameter_counts_within_one_percent():
  swiglu = count(ffn_params(GLU, make_cfg(ffn='glu', activation='silu'), True))
  assert swiglu == 3 * 16 * 24
  for act in ('swiglu', 'relu', 'gelu', 'polyrelu', 'polynorm'):
    n = count(ffn_params(MatchedFFN, make_cfg(ffn='matched', activation=act), True))
    assert abs(n - swiglu) / swiglu <= 0.01, (act, n, swiglu)
  # A plain 2-matrix MLP of the same mlp_dim has 2/3 of the parameters: the matching matters.
  assert count(ffn_params(MLP, make_cfg(activation='relu'), True)) == 2 * 16 * 24
  assert matched_hidden_width(24, 'relu') == 36 and matched_hidden_width(24, 'swiglu') == 48


def test_matched_swiglu_is_the_gated_ffn():
  cfg_glu, cfg_m = make_cfg(ffn='glu', activation='silu'), make_cfg(activation='swiglu')
  p = ffn_params(GLU, cfg_glu)
  wi = jnp.concatenate([p['wi_gate']['kernel'], p['wi_up']['kernel']], axis=1)
  matched = {'wi': {'kernel': wi}, 'wo': p['wo']}
  x = jax.random.normal(jax.random.key(1), (2, 4, 16))
  want = GLU(cfg_glu).apply({'params': p}, x, deterministic=True)
  got = MatchedFFN(cfg_m).apply({'params': matched}, x, deterministic=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
