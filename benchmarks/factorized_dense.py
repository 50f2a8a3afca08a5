"""Forward time of a rank-r factorised dense layer `(x u) vᵀ` vs the dense `x W`, same run.

  python benchmarks/factorized_dense.py [--batch 256] [--n-in 1024] [--n-out 1024]
      [--fractions 0.05,0.1,0.25,0.5] [--steps 50] [--warmup 5] [--json PATH]

What Maestro's smaller ranks buy at inference: for each rank `r = ⌈fraction · min(in, out)⌉`
the script jits the factorised layer (`jaxlab.sparsity.factorized.FactorizedDense`) and the
dense `nn.Dense` of the same shape, times the two alternately over `--steps` calls each after
`--warmup` (`block_until_ready`, medians), and prints ms/call, the FLOP ratio
`(in + out) r / (in · out)` and the measured speedup `dense / factorised`. Factorising pays
once `r < in · out / (in + out)` (half the smaller dimension for a square layer), less fixed
per-call overheads.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from jaxlab.sparsity.factorized import FactorizedDense


def time_pair(
  fns: tuple[Callable, Callable], variables: tuple, x, steps: int, warmup: int
) -> tuple[float, float]:
  """Median seconds per call of two jitted `fn(variables, x)`, timed alternately call by call,
  so both see the same machine load (the median resists the spikes of a shared machine)."""
  jitted = [jax.jit(f) for f in fns]
  for f, v in zip(jitted, variables, strict=True):
    for _ in range(max(warmup, 1)):
      jax.block_until_ready(f(v, x))
  times = ([], [])
  for _ in range(max(steps, 1)):
    for f, v, t in zip(jitted, variables, times, strict=True):
      start = time.perf_counter()
      jax.block_until_ready(f(v, x))
      t.append(time.perf_counter() - start)
  return float(np.median(times[0])), float(np.median(times[1]))


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--n-in', type=int, default=1024)
  parser.add_argument('--n-out', type=int, default=1024)
  parser.add_argument('--fractions', default='0.05,0.1,0.25,0.5')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  fractions = [float(f) for f in args.fractions.split(',')]
  if any(not 0.0 < f <= 1.0 for f in fractions):
    raise ValueError(f'--fractions: expected values in (0, 1], got {args.fractions}')
  kx, kp = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (args.batch, args.n_in))
  dense = nn.Dense(args.n_out)
  dense_vars = dense.init(kp, x)
  print(f'{args.batch}x{args.n_in} -> {args.n_out} on {jax.devices()[0].device_kind}')
  print(f'{"rank":>6} {"dense ms":>9} {"factor ms":>10} {"FLOP ratio":>11} {"speedup":>8}')
  rows = []
  for f in fractions:
    rank = max(1, math.ceil(f * min(args.n_in, args.n_out)))
    layer = FactorizedDense(args.n_out, rank)
    t_dense, t = time_pair(
      (dense.apply, layer.apply), (dense_vars, layer.init(kp, x)), x, args.steps, args.warmup
    )
    flop_ratio = (args.n_in + args.n_out) * rank / (args.n_in * args.n_out)
    rows.append(
      {
        'rank': rank,
        'dense_ms': 1e3 * t_dense,
        'ms': 1e3 * t,
        'flop_ratio': flop_ratio,
        'speedup': t_dense / t,
      }
    )
    print(f'{rank:6d} {1e3 * t_dense:9.3f} {1e3 * t:10.3f} {flop_ratio:11.3f} {t_dense / t:7.2f}x')
  result = {'rows': rows}
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
