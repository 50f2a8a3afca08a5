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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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
