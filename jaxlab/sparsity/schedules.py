"""When to prune and how much: a schedule maps the optimizer step to (prune now?, sparsity).

All three are jittable (`step` may be a traced int32):

- `one_shot(step, s)`: reach sparsity `s` at `step` (0 = at initialisation, before the first
  update; late = after training, the remaining steps fine-tune).
- `iterative(start, end, rounds, s)`: `rounds` pruning events evenly spaced over
  `[start, end]`, each removing the same fraction of what is left, so after round `i` (1-based)
  the sparsity is `1 - (1 - s)^(i / rounds)` (iterative magnitude pruning, Han et al., 2015;
  Frankle & Carbin, 2019).
- `gradual(start, end, every, s, initial)`: the cubic schedule of Zhu & Gupta (2017, Eq. 1),
  `s_t = s + (initial - s) (1 - (t - start) / (end - start))^3`, applied every `every` steps
  from `start` to `end`.

The parameter count a schedule leaves over training (the `journey` paper's average parameter
count N̄, Jin et al., 2025): `sparsity_per_update`, `average_density` and the exact
`average_param_count` match how `masking.masked` counts, so `N̄` is known before training;
`window_steps` turns a window given as fractions of training into steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Schedule:
  """`events` pruning steps `start, start + interval, ...`; `sparsity(i)` after event `i`."""

  kind: str
  start: int
  end: int
  events: int
  target: float
  initial: float = 0.0
  every: int = 0  # steps between events; 0 = spread the events evenly over [start, end]

  def __post_init__(self):
    if not 0.0 <= self.target < 1.0:
      raise ValueError(f'sparsity: expected a value in [0, 1), got {self.target}')
    if not 0.0 <= self.initial <= self.target:
      raise ValueError(
        f'initial sparsity: expected a value in [0, {self.target}], got {self.initial}'
      )
    if self.start < 0 or self.end < self.start:
      raise ValueError(f'steps: expected 0 <= start <= end, got start={self.start} end={self.end}')
    if self.events < 1:
      raise ValueError(f'pruning events: expected at least 1, got {self.events}')

  @property
  def interval(self) -> int:
    if self.every:
      return self.every
    return max((self.end - self.start) // max(self.events - 1, 1), 1)

  def event_index(self, step: jax.Array) -> jax.Array:
    """The index of the event at `step`, or -1 if `step` is not a pruning step."""
    offset = step - self.start
    i = offset // self.interval
    hit = (offset >= 0) & (offset % self.interval == 0) & (i < self.events)
    return jnp.where(hit, i, -1)

  def sparsity(self, event: jax.Array) -> jax.Array:
    """Sparsity to reach at event `event` (0-based)."""
    frac = (event + 1) / self.events
    if self.kind == 'iterative':
      return 1.0 - (1.0 - self.target) ** frac
    if self.kind == 'gradual':
      t = event / max(self.events - 1, 1)
      return self.target + (self.initial - self.target) * (1.0 - t) ** 3
    return jnp.asarray(self.target, jnp.float32)


def one_shot(step: int, sparsity: float) -> Schedule:
  return Schedule('one_shot', step, step, 1, sparsity)


def iterative(start: int, end: int, rounds: int, sparsity: float) -> Schedule:
  if rounds > 1 and end - start < rounds - 1:
    # Otherwise the events would run on, one per step, past `end`.
    raise ValueError(
      f'iterative: {rounds} pruning rounds need end - start >= {rounds - 1} steps, got '
      f'start={start} end={end}'
    )
  return Schedule('iterative', start, end, rounds, sparsity)


def gradual(start: int, end: int, every: int, sparsity: float, initial: float = 0.0) -> Schedule:
  if every < 1:
    raise ValueError(f'every: expected a positive number of steps, got {every}')
  if end - start < every:
    # A single event would prune to `initial` only: the target would never be reached.
    raise ValueError(
      f'gradual: expected end >= start + every (at least two pruning events), got '
      f'start={start} end={end} every={every}'
    )
  return Schedule('gradual', start, end, (end - start) // every + 1, sparsity, initial, every)


def window_steps(start_fraction: float, end_fraction: float, total_steps: int) -> tuple[int, int]:
  """Pruning window `[start, end]` in steps from fractions of a `total_steps`-update run.

  `start = round(f0 T)`, `end = min(round(f1 T), T - 1)`: the last update has index `T - 1`,
  so a window ending at 100% prunes for the last time on the last update.
  """
  if not 0.0 <= start_fraction <= end_fraction <= 1.0:
    raise ValueError(
      'pruning window: expected 0 <= start_fraction <= end_fraction <= 1, got '
      f'{start_fraction}, {end_fraction}'
    )
  if total_steps < 1:
    raise ValueError(f'total_steps: expected at least 1, got {total_steps}')
  start = min(round(start_fraction * total_steps), total_steps - 1)
  return start, max(min(round(end_fraction * total_steps), total_steps - 1), start)


def sparsity_per_update(schedule: Schedule, total_steps: int) -> np.ndarray:
  """`[total_steps]` float64: the sparsity in force after update `c` (`c = 0 … T − 1`).

  `masked` prunes at the start of the update whose counter `c` is a pruning step (before the
  update is applied), then counts the unmasked parameters: update `c` sees the sparsity of
  the last event at a step `<= c`, and 0 before the first event.
  """
  steps = np.arange(total_steps)
  events = np.asarray(schedule.event_index(jnp.asarray(steps)))
  hit = events >= 0
  at_event = np.zeros(total_steps)
  at_event[hit] = np.asarray(schedule.sparsity(events[hit]), np.float64)  # a scalar broadcasts
  last = np.maximum.accumulate(np.where(hit, steps, -1))  # the latest pruning step <= c
  return np.where(last >= 0, at_event[np.maximum(last, 0)], 0.0)


def average_density(schedule: Schedule, total_steps: int) -> float:
  """`(1/T) Σ_c (1 − s_c)`: the pruned parameters' average density over the `T` updates.

  `N̄ = N_unpruned + N_prunable · average_density` up to the rounding of each event's count
  (`average_param_count` is exact). For Zhu & Gupta's cubic applied at every step of a window
  `[f0 T, f1 T]` to a final sparsity `s`, this tends (large `T`) to the closed form
  `1 − s (3/4 (f1 − f0) + 1 − f1)`, since `∫_0^1 (1 − τ)^3 dτ = 1/4`.
  """
  return float(1.0 - sparsity_per_update(schedule, total_steps).mean())


def average_param_count(
  schedule: Schedule, total_steps: int, prunable: int, unpruned: int = 0
) -> float:
  """Exact `N̄ = (1/T) Σ_c (N_unpruned + N_prunable − round(s_c N_prunable))`.

  `round(s · N_prunable)` is the number of entries the global allocator removes at sparsity
  `s` (round half to even, as `jnp.round`); `masked`'s `param_steps / count` equals this for
  unstructured pruning, as long as `min_keep` protects nothing (sparsities below
  `1 − families / N_prunable`). `s_c` is computed here in float64, in the train step in
  float32: a count can differ by one only where `s_c N_prunable` lies within about
  `1e-7 N_prunable` of a half-integer.
  """
  removed = np.round(sparsity_per_update(schedule, total_steps) * prunable)
  return float(np.mean(unpruned + prunable - removed))
