"""Prefill time and memory, prepacked vs padded to the longest prompt, on the same prompts.

Time: the median wall time of the compiled prefill over `repeats` calls (after the first,
which compiles), `block_until_ready`. Memory: XLA's analysis of the compiled prefill,
`compiled.memory_analysis()`: arguments + outputs + temporaries − aliased bytes, the peak the
program needs (the parameters are among the arguments and the per-prompt caches are the
outputs, the same size in both), and the temporaries alone (activations, attention scores:
where padding costs memory).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxlab.inference.decode import generate
from jaxlab.inference.packing import (
  bucket,
  count_buckets,
  next_power_of_two,
  pack_batch,
  pad_batch,
  power_of_two_buckets,
)
from jaxlab.inference.prefill import prefill_packed, prefill_padded

DISTRIBUTIONS = ('uniform', 'lognormal')


def sample_lengths(kind: str, num: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
  """Prompt lengths in `[1, max_len]`: `'uniform'`, or `'lognormal'` (long-tailed: median
  `max_len / 8`, `sigma = 1`, clipped), the skewed batches where padding wastes most."""
  if kind == 'uniform':
    return rng.integers(1, max_len + 1, size=num)
  if kind == 'lognormal':
    raw = rng.lognormal(np.log(max_len / 8), 1.0, size=num)
    return np.clip(np.round(raw), 1, max_len).astype(np.int64)
  raise ValueError(f'sample_lengths: expected kind in {DISTRIBUTIONS}, got {kind!r}')


def timed(fn: Callable, *args: Any, repeats: int) -> tuple[float, int, int, Any]:
  """(median seconds per call, peak and temporary bytes by XLA's memory analysis, outputs) of
  jitted `fn`.

  The first call compiles (and warms up); `fn.lower(*args).compile()` then finds that
  executable in JAX's cache, so the memory analysis costs no second compilation.
  """
  out = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  mem = fn.lower(*args).compile().memory_analysis()
  peak = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )
  return statistics.median(times), int(peak), int(mem.temp_size_in_bytes), out


def compare_prefill(
  model: nn.Module,
  params: Any,
  prompts: Sequence[np.ndarray],
  *,
  gen_steps: int = 0,
  repeats: int = 5,
  min_bucket: int = 16,
) -> dict[str, float]:
  """Prefills `prompts` prepacked and padded; returns times, memory and their agreement.

  Both use the same buckets: row length / padded width = the longest prompt rounded up to a
  power of two, the counts of rows and prompts rounded up to `count_buckets`; both fill caches
  of `longest + gen_steps` slots (rounded up to a power of two). With `gen_steps > 0` both
  prefills are continued by `gen_steps` greedy tokens and `generations_agree` is the fraction
  of prompts whose tokens are identical.
  """
  lengths = np.array([np.asarray(p).size for p in prompts])
  longest = int(lengths.max())
  lens = power_of_two_buckets(next_power_of_two(max(longest, min_bucket)), min_bucket)
  counts = count_buckets(len(prompts))
  width = bucket(longest, lens)
  cache_len = next_power_of_two(longest + gen_steps)
  packed = pack_batch(prompts, width, row_buckets=counts, prompt_buckets=counts)
  padded = pad_batch(prompts, len_buckets=lens, prompt_buckets=counts)
  t_pack, m_pack, tmp_pack, (l_pack, c_pack) = timed(
    prefill_packed, model, params, packed, cache_len, repeats=repeats
  )
  t_pad, m_pad, tmp_pad, (l_pad, c_pad) = timed(
    prefill_padded, model, params, padded, cache_len, repeats=repeats
  )
  n = len(prompts)
  cache_diff = max(
    float(np.max(np.abs(np.asarray(a[:n], np.float32) - np.asarray(b[:n], np.float32))))
    for a, b in zip(jax.tree.leaves(c_pack), jax.tree.leaves(c_pad), strict=True)
  )
  logit_diff = float(np.max(np.abs(np.asarray(l_pack[:n]) - np.asarray(l_pad[:n]))))
  out = {
    'prompts': float(n),
    'tokens': float(lengths.sum()),
    'longest': float(longest),
    'padded_slots': float(padded.tokens.size),
    'packed_slots': float(packed.tokens.size),
    'rows': float(packed.tokens.shape[0]),
    'padded_s': t_pad,
    'packed_s': t_pack,
    'speedup': t_pad / t_pack,
    'padded_peak_bytes': float(m_pad),
    'packed_peak_bytes': float(m_pack),
    'memory_ratio': m_pad / m_pack,
    'padded_temp_bytes': float(tmp_pad),
    'packed_temp_bytes': float(tmp_pack),
    'temp_ratio': tmp_pad / max(tmp_pack, 1),
    'max_logit_diff': logit_diff,
    'max_cache_diff': cache_diff,
  }
  if gen_steps > 0:
    key = jax.random.key(0)
    gen = [
      np.asarray(generate(model, params, c, lg, b.lengths, key, steps=gen_steps))[:n]
      for c, lg, b in ((c_pack, l_pack, packed), (c_pad, l_pad, padded))
    ]
    out['generations_agree'] = float(np.mean(np.all(gen[0] == gen[1], axis=1)))
  return out
