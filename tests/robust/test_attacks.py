"""FGSM and PGD: the exact worst case of a linear model, the ball and box constraints, and
robust accuracy never above clean accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.robust import fgsm, pgd

W = jnp.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])  # two classes, 3 inputs


def linear(x):
  return x @ W.T


def margins(x):
  logits = linear(x)
  return logits[:, 0] - logits[:, 1]


X = jnp.array([[3.0, -1.0, 0.0], [2.0, 0.0, 0.5]])
Y = jnp.array([0, 0])
DIFF = np.asarray(W[0] - W[1])  # the margin's gradient


def test_fgsm_linf_reaches_the_exact_worst_case_of_a_linear_model():
  # min over ||d||_inf <= eps of m(x + d) = m(x) - eps ||w0 - w1||_1, at d = -eps sign(w0 - w1).
  adv = fgsm(linear, X, Y, 0.3, norm='linf')
  np.testing.assert_allclose(margins(adv), margins(X) - 0.3 * np.abs(DIFF).sum(), rtol=1e-6)


@pytest.mark.parametrize('attack', [fgsm, pgd])
def test_l2_attacks_reach_the_exact_worst_case_of_a_linear_model(attack):
  eps = jnp.array([0.2, 0.7])  # per-example radii
  adv = attack(linear, X, Y, eps, norm='l2')
  np.testing.assert_allclose(
    margins(adv), margins(X) - eps * np.linalg.norm(DIFF), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_pgd_stays_in_the_ball_and_the_box(norm):
  rng = np.random.default_rng(0)
  w1 = jnp.asarray(rng.normal(size=(16, 6)))
  w2 = jnp.asarray(rng.normal(size=(3, 16)))

  def net(x):
    return jnp.tanh(x @ w1.T) @ w2.T

  x = jnp.asarray(rng.uniform(size=(64, 6)))
  y = jnp.asarray(rng.integers(0, 3, size=64))
  adv = pgd(net, x, y, 0.25, norm=norm, steps=10, key=jax.random.key(1), clip=(0.0, 1.0))
  size = jnp.abs(adv - x).max(-1) if norm == 'linf' else jnp.linalg.norm(adv - x, axis=-1)
  assert float(size.max()) <= 0.25 + 1e-5
  assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  clean = float(jnp.mean(jnp.argmax(net(x), -1) == y))
  robust = float(jnp.mean(jnp.argmax(net(adv), -1) == y))
  one_step = float(jnp.mean(jnp.argmax(net(fgsm(net, x, y, 0.25, norm=norm)), -1) == y))
  assert robust <= clean and one_step <= clean
  # The loss PGD reaches is at least the clean loss.
  ce = lambda z: -jax.nn.log_softmax(net(z))[jnp.arange(64), y].sum()  # noqa: E731
  assert float(ce(adv)) >= float(ce(x))


def test_bad_arguments():
  with pytest.raises(ValueError, match='eps: expected a scalar or'):
    pgd(linear, X, Y, jnp.ones(3))
  with pytest.raises(ValueError, match='norm'):
    fgsm(linear, X, Y, 0.1, norm='l1')
  with pytest.raises(ValueError, match='steps'):
    pgd(linear, X, Y, 0.1, steps=0)
