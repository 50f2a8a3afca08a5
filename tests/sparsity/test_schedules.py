"""Schedules: when pruning fires and to which sparsity (one-shot, iterative, Zhu & Gupta's cubic),
argument checks, and the same answers for traced steps under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.sparsity import gradual, iterative, one_shot

STEPS = np.arange(120)


def _events(schedule) -> dict[int, float]:
  """`{step: sparsity}` for the steps in STEPS where `schedule` prunes (host-side ints)."""
  out = {}
  for step in STEPS:
    event = int(schedule.event_index(int(step)))
    if event >= 0:
      out[int(step)] = float(schedule.sparsity(event))
  return out


@pytest.mark.parametrize('step', [0, 7])
def test_one_shot_fires_once(step):
  events = _events(one_shot(step, 0.7))
  assert list(events) == [step]
  assert events[step] == pytest.approx(0.7)


def test_iterative_rounds_remove_the_same_fraction_of_what_is_left():
  s, rounds = 0.9, 4
  events = _events(iterative(10, 40, rounds, s))
  assert list(events) == [10, 20, 30, 40]  # exactly R events, evenly spaced, the last at end
  want = [1 - (1 - s) ** (i / rounds) for i in range(1, rounds + 1)]
  np.testing.assert_allclose(list(events.values()), want, rtol=1e-6)
  assert list(events.values())[-1] == pytest.approx(s)
  # Each round keeps the same fraction of the previous density.
  density = 1 - np.array([0.0, *events.values()])
  np.testing.assert_allclose(density[1:] / density[:-1], (1 - s) ** (1 / rounds), rtol=1e-6)
  # Spacing rounded down when end - start is not a multiple of rounds - 1; never past end.
  assert list(_events(iterative(0, 10, 4, s))) == [0, 3, 6, 9]
  assert list(_events(iterative(3, 3, 1, s))) == [3]


def _zhu_gupta(t, start, end, s_f, s_i):
  """Zhu & Gupta (2017), Eq. 1: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3."""
  return s_f + (s_i - s_f) * (1 - (t - start) / (end - start)) ** 3


@pytest.mark.parametrize('initial', [0.0, 0.2])
def test_gradual_follows_the_cubic(initial):
  start, end, every, s = 10, 50, 5, 0.8
  events = _events(gradual(start, end, every, s, initial))
  assert list(events) == list(range(start, end + 1, every))
  assert events[start] == pytest.approx(initial, abs=1e-7)
  assert events[end] == pytest.approx(s, rel=1e-6)
  mid = (start + end) // 2
  assert events[mid] == pytest.approx(s + (initial - s) / 8, rel=1e-6)  # (1 - 1/2)^3 = 1/8
  for t, value in events.items():
    assert value == pytest.approx(_zhu_gupta(t, start, end, s, initial), rel=1e-6, abs=1e-7), t
  values = list(events.values())
  assert all(b > a for a, b in zip(values, values[1:], strict=False))  # increasing
  # Steps between grid points are not pruning steps.
  assert all(t % every == 0 for t in events)


@pytest.mark.parametrize(
  'make, match',
  [
    (lambda: one_shot(0, 1.0), 'sparsity: expected a value in'),
    (lambda: one_shot(0, -0.1), 'sparsity: expected a value in'),
    (lambda: one_shot(-1, 0.5), 'steps: expected 0 <= start <= end'),
    (lambda: iterative(10, 5, 1, 0.5), 'steps: expected 0 <= start <= end'),
    (lambda: iterative(0, 10, 0, 0.5), 'pruning events: expected at least 1'),
    (lambda: iterative(5, 5, 3, 0.5), '3 pruning rounds need end - start >= 2'),
    (lambda: gradual(0, 10, 0, 0.5), 'every: expected a positive number'),
    (lambda: gradual(0, 10, 2, 0.5, initial=0.6), 'initial sparsity: expected a value in'),
    (lambda: gradual(0, 0, 1, 0.5), 'at least two pruning events'),
    (lambda: gradual(0, 4, 5, 0.5), 'at least two pruning events'),
  ],
)
def test_bad_arguments_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize(
  'schedule',
  [one_shot(7, 0.6), iterative(5, 65, 4, 0.9), gradual(10, 50, 5, 0.8, 0.1)],
  ids=['one_shot', 'iterative', 'gradual'],
)
def test_traced_steps_under_jit(schedule):
  @jax.jit
  def at(step):
    event = schedule.event_index(step)
    return event, jnp.where(event >= 0, schedule.sparsity(jnp.maximum(event, 0)), -1.0)

  events, values = jax.vmap(at)(jnp.asarray(STEPS, jnp.int32))
  events, values = np.asarray(events), np.asarray(values)
  want = _events(schedule)
  assert list(STEPS[events >= 0]) == list(want)
  np.testing.assert_allclose(values[events >= 0], list(want.values()), rtol=1e-6, atol=1e-7)
  assert np.all(values[events < 0] == -1.0)
  assert events.dtype == np.int32
