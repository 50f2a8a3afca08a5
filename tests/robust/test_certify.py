"""Certified radii: closed forms, and PGD inside the radius never flips a certified point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.lipschitz.sdp import lipsdp, network_fn
from jaxlab.robust import certified_accuracy, certified_radius, pgd


def test_radius_closed_forms():
  logits = jnp.array([[3.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
  np.testing.assert_allclose(certified_radius(logits, 2.0), [2.0 / (2 * np.sqrt(2)), 0.0])
  np.testing.assert_allclose(certified_radius(logits, 2.0, norm='linf'), [0.5, 0.0])
  # Per-output bounds: min_j (f_y - f_j) / (L_y + L_j) = min(2 / 3, 3 / 4).
  per = certified_radius(logits, jnp.array([1.0, 2.0, 3.0]), norm='linf')
  np.testing.assert_allclose(per[0], 2.0 / 3.0, rtol=1e-6)


def test_radius_is_exact_for_a_two_class_linear_model():
  # f = W x with rows w0, w1: distance to the boundary is (f0 - f1) / ||w0 - w1||, and with the
  # per-output bounds ||w_j|| the radius is (f0 - f1) / (||w0|| + ||w1||) <= it.
  w = np.array([[1.0, 2.0], [-1.0, 0.5]])
  x = np.array([[2.0, 1.0]])
  logits = jnp.asarray(x @ w.T)
  exact = float((logits[0, 0] - logits[0, 1]) / np.linalg.norm(w[0] - w[1]))
  per = jnp.asarray(np.linalg.norm(w, axis=1))
  r = float(certified_radius(logits, per)[0])
  assert r == pytest.approx(float((logits[0, 0] - logits[0, 1]) / per.sum()))
  assert r <= exact
  assert float(certified_radius(logits, np.linalg.norm(w, 2))[0]) <= exact


def small_net(seed: int = 0):
  rng = np.random.default_rng(seed)
  ws = [rng.normal(size=(12, 8)) / np.sqrt(8), rng.normal(size=(12, 12)) / np.sqrt(12)]
  ws.append(rng.normal(size=(4, 12)) / np.sqrt(12))
  f = network_fn(ws, 'maxmin')
  x = jnp.asarray(rng.normal(size=(128, 8)), jnp.float32)
  return ws, jax.vmap(f), x


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_pgd_inside_the_certified_radius_never_flips(norm):
  ws, apply_fn, x = small_net()
  bound = lipsdp(ws, activation='maxmin', norm=norm)
  logits = apply_fn(x)
  labels = jnp.argmax(logits, -1)
  radius = certified_radius(logits, bound, norm=norm)
  assert float(radius.min()) > 0
  adv = pgd(apply_fn, x, labels, 0.999 * radius, norm=norm, steps=15, key=jax.random.key(0))
  assert bool(jnp.all(jnp.argmax(apply_fn(adv), -1) == labels))
  # The attack is not toothless: at 10x the radius it flips most points.
  adv = pgd(apply_fn, x, labels, 10 * radius, norm=norm, steps=10)
  assert float(jnp.mean(jnp.argmax(apply_fn(adv), -1) != labels)) > 0.5


def test_certified_accuracy_is_below_clean_accuracy():
  ws, apply_fn, x = small_net(1)
  logits = apply_fn(x)
  labels = jnp.where(jnp.arange(128) % 3 == 0, 0, jnp.argmax(logits, -1))  # some wrong
  clean = float(jnp.mean(jnp.argmax(logits, -1) == labels))
  bound = lipsdp(ws, activation='maxmin')
  accs = [certified_accuracy(logits, labels, bound, eps) for eps in (0.0, 0.05, 0.2, 1.0)]
  assert accs[0] <= clean and all(a >= b for a, b in zip(accs, accs[1:], strict=False))
  assert accs[-1] < clean
  mask = jnp.arange(128) < 64
  half = certified_accuracy(logits[:64], labels[:64], bound, 0.05)
  assert certified_accuracy(logits, labels, bound, 0.05, mask=mask) == pytest.approx(half)


@pytest.mark.parametrize(
  'args,match',
  [
    ((jnp.zeros((2, 3)), 0.0), 'lipschitz: expected a positive'),
    ((jnp.zeros((2, 3)), jnp.ones(2)), r'lipschitz: expected a positive scalar or \[3\]'),
    ((jnp.zeros((3,)), 1.0), 'logits: expected'),
  ],
)
def test_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    certified_radius(*args)
  with pytest.raises(ValueError, match='norm'):
    certified_radius(jnp.zeros((2, 3)), 1.0, norm='l1')
