"""DHSPG (OTOv2): target group sparsity on digits, zeros stay zero, warm-up = inner optimizer,
the half-space projection and adaptive λ against a hand computation, jit, extra args."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from jaxlab.sparsity.dhspg import dhspg, group_sparsity, zero_groups
from jaxlab.sparsity.groups import (
  Family,
  Member,
  flat_arrays,
  group_matrix,
  member_slices,
  zero_invariant_families,
)
from jaxlab.vision.models import MLP, MLPConfig

TARGET, TOLERANCE = 0.5, 0.05
WARMUP, STEPS, BATCH, LR = 100, 400, 256, 0.1


class Problem(NamedTuple):
  model: MLP
  params: dict
  families: tuple[Family, ...]
  loss_fn: Callable
  grad_fn: Callable  # jitted (params, x, y) -> grads
  x: jax.Array
  y: jax.Array


@functools.cache
def _problem() -> Problem:
  """The digits (1797 8x8 images), an MLP 64-32-32-10 and its 64 zero-invariant groups."""
  images, labels = load_digits(return_X_y=True)
  x = jnp.asarray(images.reshape(-1, 8, 8, 1) / 16.0, jnp.float32)
  y = jnp.asarray(labels)
  model = MLP(MLPConfig(10, (32, 32)))
  variables = model.init(jax.random.key(0), x[:1])
  families = zero_invariant_families(lambda v, inp: model.apply(v, inp), variables, x[:1])

  def loss_fn(params, xb, yb):
    logits = model.apply({'params': params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  grad_fn = jax.jit(jax.grad(loss_fn))
  return Problem(model, variables['params'], families, loss_fn, grad_fn, x, y)


@jax.jit
def _batch(i):
  x, y = _problem().x, _problem().y
  idx = jax.random.choice(jax.random.key(i), x.shape[0], (BATCH,), replace=False)
  return x[idx], y[idx]


def _zeros(params, families):
  """All groups' zero flags side by side (traceable)."""
  return jnp.concatenate(
    [~jnp.any(group_matrix({'params': params}, f) != 0, axis=1) for f in families]
  )


@functools.cache
def _run():
  """STEPS steps of DHSPG (SGD, the official default ε = 0) in one jitted scan."""
  prob = _problem()
  tx = dhspg(LR, prob.families, TARGET, warmup_steps=WARMUP, lmbda=0.5, tolerance=TOLERANCE)

  def step(carry, i):
    params, state = carry
    xb, yb = _batch(i)
    loss, grads = jax.value_and_grad(prob.loss_fn)(params, xb, yb)
    updates, state = tx.update(grads, state, params, batch=(xb, yb), model_state={})
    params = optax.apply_updates(params, updates)
    return (params, state), (loss, _zeros(params, prob.families))

  (params, state), (losses, zeros) = jax.jit(
    lambda p: jax.lax.scan(step, (p, tx.init(p)), jnp.arange(STEPS))
  )(prob.params)
  return params, state, np.asarray(losses), np.asarray(zeros)


def test_reaches_target_group_sparsity_and_stays():
  params, _, _, zeros = _run()
  sparsity = zeros.mean(axis=1)  # after each step
  assert np.all(sparsity[:WARMUP] == 0.0)
  reached = int(np.argmax(sparsity >= TARGET))
  assert sparsity[reached] >= TARGET and reached < STEPS - 100, reached
  # Once the target is reached, penalty and projection stop: the zero set no longer changes.
  assert np.all(zeros[reached:] == zeros[reached])
  assert TARGET <= sparsity[-1] <= TARGET + TOLERANCE
  assert group_sparsity(params, _problem().families) == pytest.approx(sparsity[-1])


def test_zero_groups_stay_exactly_zero_and_are_redundant():
  params, state, _, zeros = _run()
  families = _problem().families
  after = zeros[WARMUP:]
  assert np.all(after[1:] >= after[:-1])  # a zero group is zero in every later step
  final = zero_groups(params, families)
  assert np.array_equal(np.concatenate(final), zeros[-1])
  flat = flat_arrays({'params': params})
  for f, z, red in zip(families, final, state.redundant, strict=True):
    assert not np.any(z & ~np.asarray(red)), f.name  # only redundant groups were projected
    assert z.sum() < f.size  # every family keeps at least one group
    for m in f.param_members:  # the producer's filter, its bias and the consumer's input rows
      slices = np.asarray(member_slices(flat[m.path], m, f.size))
      assert np.all(slices[z] == 0.0) and np.all(np.any(slices[~z] != 0, axis=1)), m.path


def test_zero_groups_stay_zero_against_momentum():
  """A momentum buffer would move a zero group (its gradient is 0); DHSPG holds it at 0."""
  prob = _problem()
  params = _run()[0]
  zero0 = np.concatenate(zero_groups(params, prob.families))
  inner = optax.sgd(LR, momentum=0.9)
  keys = iter(jax.random.split(jax.random.key(3), 16))
  trace = jax.tree.map(lambda t: jax.random.normal(next(keys), t.shape), params)
  inner_state = (optax.TraceState(trace), *inner.init(params)[1:])
  moved = optax.apply_updates(
    params, inner.update(prob.grad_fn(params, *_batch(0)), inner_state)[0]
  )
  assert not np.any(np.concatenate(zero_groups(moved, prob.families)))  # the inner regrows them
  tx = dhspg(inner, prob.families, TARGET, warmup_steps=0, learning_rate=LR)
  state = tx.init(params)._replace(inner_state=inner_state)
  update = jax.jit(tx.update)
  for i in range(2):
    updates, state = update(prob.grad_fn(params, *_batch(i)), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(np.concatenate(zero_groups(params, prob.families)), zero0)


def test_still_learns_after_compression():
  prob = _problem()
  params, _, losses, _ = _run()
  assert losses[-20:].mean() < 0.5 * losses[:20].mean()
  assert float(prob.loss_fn(params, prob.x, prob.y)) < float(
    prob.loss_fn(prob.params, prob.x, prob.y)
  )
  accuracy = float((prob.model.apply({'params': params}, prob.x).argmax(-1) == prob.y).mean())
  assert accuracy > 0.85  # chance is 0.1


@pytest.mark.parametrize('momentum', [None, 0.9])
def test_warmup_is_the_inner_optimizer(momentum):
  prob = _problem()
  inner = optax.sgd(LR, momentum=momentum)
  if momentum is None:
    tx = dhspg(LR, prob.families, TARGET, warmup_steps=4)
  else:
    tx = dhspg(inner, prob.families, TARGET, warmup_steps=4, learning_rate=LR)
  update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
  params = prob.params
  state, inner_state = tx.init(params), inner.init(params)
  for i in range(4):
    grads = prob.grad_fn(params, *_batch(i))
    u, state = update(grads, state, params)
    v, inner_state = inner_update(grads, inner_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), u, v)
    params = optax.apply_updates(params, u)
  assert not any(np.any(r) for r in state.redundant)  # no partition yet


# Two groups (the columns of `w`, with `b`): group 0 = (3, 4, 0) has norm 5, group 1 =
# (0.06, 0.08, 0) has norm 0.1, so with K = ⌊2 · 0.5⌋ = 1 group 1 is the redundant one.
_TINY_PARAMS = {'w': jnp.array([[3.0, 0.06], [4.0, 0.08]]), 'b': jnp.zeros(2)}
_TINY_FAMILY = Family('w', 2, (Member('params/b', 0), Member('params/w', 1, 1, True)))


def _tiny_grads(p_norm):
  """Group 0: g = −x (the step grows it, cos = −1). Group 1: g = −κ x/‖x‖ + p with κ = 0.5 and
  p = (0, 0, p_norm) ⊥ x: xᵀg = −κ‖x‖ < 0, so λ is adapted."""
  w = jnp.array([[-3.0, -0.3], [-4.0, -0.4]])
  return {'w': w, 'b': jnp.array([0.0, p_norm])}


@pytest.mark.parametrize(
  'p_norm, epsilon, lam, projected',
  [
    # λ_min = κ = 0.5, λ_max = κ + ‖p‖²/κ = 2.5; λ = clip(2 · 0.5, 0.1, 10 · 0.1) = 1.0 < 2.5.
    # x̃ = x − 0.1 (g + 1.0 · x/‖x‖) = (0.03, 0.04, −0.1); x̃ᵀx / ‖x‖² = 0.005 / 0.01 = 0.5.
    (1.0, 0.4, 1.0, False),
    (1.0, 0.6, 1.0, True),
    # ‖p‖ = 0.1: λ_max = 0.52 ≤ 1.0, so λ = (0.5 + 0.52) / 2 = 0.51;
    # x̃ = (0.0594, 0.0792, −0.01), x̃ᵀx / ‖x‖² = 0.99.
    (0.1, 0.95, 0.51, False),
    (0.1, 0.995, 0.51, True),
  ],
)
def test_half_space_projection_by_hand(p_norm, epsilon, lam, projected):
  tx = dhspg(0.1, [_TINY_FAMILY], 0.5, warmup_steps=0, lmbda=0.1, epsilon=epsilon, tolerance=0.0)
  params, grads = _TINY_PARAMS, _tiny_grads(p_norm)
  updates, state = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert [bool(r) for r in state.redundant[0]] == [False, True]
  x1 = np.array([0.06, 0.08, 0.0])
  g1 = np.array([-0.3, -0.4, p_norm])
  tilde = x1 - 0.1 * (g1 + lam * x1 / 0.1)
  assert (tilde @ x1 / 0.01 < epsilon) == projected
  expected1 = np.zeros(3) if projected else tilde
  got1 = np.array([new['w'][0, 1], new['w'][1, 1], new['b'][1]])
  np.testing.assert_allclose(got1, expected1, atol=1e-6)
  if projected:
    assert np.all(got1 == 0.0)
  # The important group takes the plain SGD step x − 0.1 g = 1.1 x.
  np.testing.assert_allclose(new['w'][:, 0], [3.3, 4.4], rtol=1e-6)
  assert group_sparsity(new, [_TINY_FAMILY]) == (0.5 if projected else 0.0)


def test_partition_keeps_a_group_per_family():
  """Family `a` has the two smallest groups, so the global top K = 2 is all of `a`; its less
  salient group stays important and the redundant set shrinks to one group."""
  families = [Family(n, 2, (Member(f'params/{n}', 1, 1, True),)) for n in ('a', 'b')]
  params = {'a': jnp.array([[0.1, 0.0], [0.0, 0.2]]), 'b': 5.0 * jnp.eye(2)}
  tx = dhspg(0.1, families, 0.5, warmup_steps=0, tolerance=0.0)
  _, state = tx.update(params, tx.init(params), params)  # g = x: cos = 1 for every group
  assert [r.tolist() for r in state.redundant] == [[True, False], [False, False]]


def test_jit_matches_eager_and_forwards_extra_args():
  prob = _problem()
  params = _run()[0]  # trained and half sparse: the next step partitions and projects

  def update_needs_batch(updates, state, params=None, *, batch, model_state):
    del params, batch, model_state  # a TypeError if dhspg did not pass them on
    return jax.tree.map(lambda g: -LR * g, updates), state

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_needs_batch)
  tx = dhspg(inner, prob.families, 0.75, warmup_steps=0, learning_rate=LR, lmbda=5.0, epsilon=0.9)
  grads, state = prob.grad_fn(params, *_batch(0)), tx.init(params)
  extra = dict(batch=_batch(0), model_state={})
  u_eager, state_eager = tx.update(grads, state, params, **extra)
  u_jit, state_jit = jax.jit(tx.update)(grads, state, params, **extra)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u_eager, u_jit)
  for a, b in zip(state_eager.redundant, state_jit.redundant, strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(state_jit.count) == 1
  assert sum(int(r.sum()) for r in state_jit.redundant) == int(64 * (0.75 + TOLERANCE))
  before = group_sparsity(params, prob.families)
  after = [group_sparsity(optax.apply_updates(params, u), prob.families) for u in (u_eager, u_jit)]
  assert after[0] == after[1] > before  # the projection zeroed more groups


def test_rejects_bad_arguments():
  prob = _problem()
  with pytest.raises(ValueError, match='learning_rate'):
    dhspg(optax.sgd(LR), prob.families, TARGET, warmup_steps=1)
  with pytest.raises(ValueError, match='learning_rate'):
    dhspg(LR, prob.families, TARGET, warmup_steps=1, learning_rate=LR)
  with pytest.raises(ValueError, match='target_group_sparsity'):
    dhspg(LR, prob.families, 1.0, warmup_steps=1)
  tx = dhspg(LR, prob.families, TARGET, warmup_steps=1)
  with pytest.raises(ValueError, match='update needs the parameters'):
    tx.update(prob.params, tx.init(prob.params))
