"""Branch and bound over unstable ReLUs for local Lipschitz bounds (Shi et al., NeurIPS 2022,
Sec. 3.4; `bab.py`, `branching_heuristics.py` of the official code).

A domain fixes the sign of some forward pre-activations (`split = +1`: `z ≥ 0`, `σ' = 1`;
`-1`: `z ≤ 0`, `σ' = 0` or the leaky slope); splitting fixes `σ'` and removes the relaxation of
that neuron on the Jacobian graph. Each domain is bounded with CROWN-Jac (forward CROWN with the
split bounds clamped, then the backward graph) and never above its parent's bound. The
branching score is the "area" heuristic `−l_b|l_b| + u_b|u_b|` of the gradient entry multiplied
by the neuron's derivative (without the paper's coefficient factor). Domains are processed in
batches, largest bound first; a domain whose bound is at most the best value found so far is
dropped. A fully split domain has a fixed activation pattern: its bound is the exact gradient
norm of that pattern, and a linear program checks that the pattern occurs in the input box, so
when every domain is closed the result is the exact maximum over activation patterns.

Result: the maximum of the best exact value and the bounds of the domains still open at the
time budget (`timeout` seconds, `max_domains`).
"""

from __future__ import annotations

import heapq
import itertools
import time

import jax
import numpy as np
from scipy import optimize

from jaxlab.lipschitz import baselines, crown, relax
from jaxlab.lipschitz.graph import Chain


def _bound(chain: Chain, xl, xu, splits, seed, ceiling):
  """(upper bound, p-bounds, forward bounds, ranges) of one domain, or None if it is empty."""
  forward = crown.crown_forward(chain, xl, xu, splits=splits)
  if any(np.any(lb > ub) for lb, ub in forward):
    return None
  ranges = crown.jacobian_ranges(chain, forward, splits)
  value, pb = crown.jacobian_bounds(chain, ranges, seed, 'crown')
  return min(float(value), ceiling), pb, forward, ranges


def _unstable(chain: Chain, ranges, splits):
  """Mask per layer of unsplit splittable neurons whose slope is not fixed on the domain.

  Uses the slope rule, so a neuron with `l = 0 < u` counts too (its Clarke derivative at 0 is
  `[0, 1]`), which keeps the leaves consistent with patterns that occur only on `z = 0`.
  """
  return [
    (lo[:, 0, 0] != hi[:, 0, 0]) & (s == 0) & (act.act.name in relax.SPLITTABLE)
    for act, (lo, hi), s in zip(chain.acts, ranges, splits, strict=False)
  ]


def _feasible(chain: Chain, xl, xu, ranges, splits) -> bool:
  """Whether some x in the box has the domain's fixed activation pattern (an LP)."""
  a, c = np.eye(xl.size), np.zeros(xl.size)
  rows, rhs = [], []
  for k, (w, b) in enumerate(zip(chain.weights[:-1], chain.biases[:-1], strict=False)):
    a, c = w @ a, w @ c + b
    s = splits[k]
    idx = np.nonzero(s)[0]
    rows.append(-s[idx, None] * a[idx])
    rhs.append(s[idx] * c[idx])
    slope = ranges[k][0][:, 0, 0]
    a, c = slope[:, None] * a, slope * c
  a_ub, b_ub = np.concatenate(rows), np.concatenate(rhs)
  if not a_ub.size:
    return True
  res = optimize.linprog(
    np.zeros(xl.size), A_ub=a_ub, b_ub=b_ub, bounds=list(zip(xl, xu, strict=False)), method='highs'
  )
  return res.status == 0


def _pick(pb, unstable):
  """The unstable neuron with the largest area score `(−l|l| + u|u|)` of its gradient entry."""
  best, where = -np.inf, None
  for k, mask in enumerate(unstable):
    if not mask.any():
      continue
    gl, gu = pb[k + 1]
    score = np.where(mask, -gl * np.abs(gl) + gu * np.abs(gu) + 1e-12 * (k + 1), -np.inf)
    i = int(np.argmax(score))
    if score[i] > best:
      best, where = score[i], (k, i)
  return where


def bab_output(
  chain: Chain,
  xl,
  xu,
  j: int,
  *,
  lower: float = 0.0,
  timeout: float = 60.0,
  batch: int = 128,
  max_domains: int = 200_000,
) -> tuple[float, dict]:
  """BaB upper bound of `L_j` for one output; returns `(bound, stats)`.

  Args:
    chain: a float64 NumPy chain (`crown.to_numpy`).
    xl, xu: the input box.
    j: output index.
    lower: a known lower bound of `L_j` (e.g. sampled); domains at or below it are dropped.
    timeout: seconds; open domains at the deadline keep their bounds.
    batch: domains split per round.
    max_domains: cap on domains visited.
  """
  seed = np.eye(chain.weights[-1].shape[0])[j]
  splits = [np.zeros(w.shape[0], np.int8) for w in chain.weights[:-1]]
  root = _bound(chain, xl, xu, splits, seed, np.inf)
  deadline, visited, leaves = time.perf_counter() + timeout, 1, 0
  best = lower
  counter = itertools.count()
  queue = [(-root[0], next(counter), splits, root)]
  while queue and time.perf_counter() < deadline and visited < max_domains:
    if -queue[0][0] <= best:
      queue = []  # nothing left can exceed the best value
      break
    popped = [heapq.heappop(queue) for _ in range(min(batch, len(queue)))]
    for item in popped:
      _, _, splits, (value, pb, forward, ranges) = item
      if value <= best:
        continue
      if time.perf_counter() >= deadline:
        heapq.heappush(queue, item)  # out of time: the domain stays open with its bound
        continue
      unstable = _unstable(chain, ranges, splits)
      if not any(m.any() for m in unstable):
        leaves += 1
        # Nothing left to split: the value is exact if every slope is fixed (then it counts only
        # if the pattern occurs), else it stays as this domain's upper bound.
        fixed = all(np.array_equal(lo, hi) and lo.shape[-1] == 1 for lo, hi in ranges)
        if not fixed or _feasible(chain, xl, xu, ranges, splits):
          best = max(best, value)
        continue
      k, i = _pick(pb, unstable)
      for sign in (1, -1):
        child = [s.copy() for s in splits]
        child[k][i] = sign
        visited += 1
        res = _bound(chain, xl, xu, child, seed, value)
        if res is not None and res[0] > best:
          heapq.heappush(queue, (-res[0], next(counter), child, res))
  open_max = max((-q[0] for q in queue), default=-np.inf)
  stats = {'domains': visited, 'leaves': leaves, 'open': len(queue), 'exact': not queue}
  return max(best, open_max), stats


def bab_bounds(
  chain: Chain,
  xl,
  xu,
  *,
  timeout: float = 60.0,
  batch: int = 128,
  lower=None,
  stats: list | None = None,
) -> np.ndarray:
  """Per-output BaB bounds, spending the time budget where `L = max_j L_j` is decided.

  An output whose root CROWN-Jac bound is at most the largest lower bound of any output cannot
  attain the maximum: it keeps its CROWN-Jac bound (sound) and BaB is not run on it. The budget
  is shared equally by the other outputs.

  Args:
    chain, xl, xu: the network and the input box.
    timeout: seconds in total.
    batch: domains split per round.
    lower: per-output lower bounds; default: sampled (2,000 samples, no PGD).
    stats: if given, receives per output `domains`, `leaves`, `open`, `skipped` and `exact`
      (every domain closed, or skipped as irrelevant to the maximum).
  """
  np_chain, xl, xu = crown.to_numpy((chain, xl, xu))
  n_out = np_chain.weights[-1].shape[0]
  if lower is None:
    key = jax.random.key(0)
    lower = baselines.sampled_lower_bound(chain, xl, xu, key, num_samples=2000, pgd_steps=0)
  lower = np.asarray(lower, np.float64)
  splits = [np.zeros(w.shape[0], np.int8) for w in np_chain.weights[:-1]]
  seeds = np.eye(n_out)
  roots = np.array([_bound(np_chain, xl, xu, splits, seeds[j], np.inf)[0] for j in range(n_out)])
  refine = roots > lower.max()
  out = roots.copy()
  for j in range(n_out):
    info = {'domains': 1, 'leaves': 0, 'open': 0, 'skipped': True, 'exact': True}
    if refine[j]:
      budget = timeout / refine.sum()
      out[j], info = bab_output(np_chain, xl, xu, j, lower=lower[j], timeout=budget, batch=batch)
      info['skipped'] = False
    if stats is not None:
      stats.append(info)
  return out
