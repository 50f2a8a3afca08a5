"""Prefill time and peak memory, prepacked vs padded to the longest prompt, same run.

  python benchmarks/prepacking.py [--prompts 64] [--max-len 512] [--width 512] [--depth 8]
      [--heads 8] [--dtype float32] [--dists uniform,lognormal] [--repeats 5] [--json PATH]

A randomly initialised transformer LM (prefill cost does not depend on the weights) prefills
one batch of random-token prompts per length distribution (`jaxlab.inference.measure`): uniform
in `[1, max_len]` and log-normal (long-tailed: median `max_len / 8`). Prepacked, the prompts go
into rows of the longest prompt's length by first-fit decreasing with a block-diagonal causal
mask; padded, each prompt gets its own row padded to the longest. Both produce each prompt's
last-token logits and a per-prompt KV cache. The script prints ms per prefill, XLA's peak
bytes (`compiled.memory_analysis()`: arguments + outputs + temporaries) and the ratio of the
temporaries alone, the token slots each computes, and the ratios padded / prepacked; the
logits of the two must agree (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.inference.measure import DISTRIBUTIONS, compare_prefill, sample_lengths
from jaxlab.nn import TransformerConfig, TransformerLM


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--prompts', type=int, default=64)
  parser.add_argument('--max-len', type=int, default=512)
  parser.add_argument('--width', type=int, default=512)
  parser.add_argument('--depth', type=int, default=8)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--vocab', type=int, default=32000)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--dists', default=','.join(DISTRIBUTIONS))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  dists = args.dists.split(',')
  for d in dists:
    if d not in DISTRIBUTIONS:
      parser.error(f'--dists: expected names in {DISTRIBUTIONS}, got {d!r}')

  cfg = TransformerConfig(
    vocab_size=args.vocab,
    width=args.width,
    depth=args.depth,
    heads=args.heads,
    mlp_dim=4 * args.width,
    max_len=args.max_len,
    dtype=args.dtype,
  )
  model = TransformerLM(cfg)
  params = jax.jit(model.init)(jax.random.key(args.seed), jnp.zeros((1, 8), jnp.int32))['params']
  rng = np.random.default_rng(args.seed)
  device = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
  print(
    f'prefill on {device}: width {args.width}, depth {args.depth}, heads {args.heads}, '
    f'{args.dtype}, {args.prompts} prompts of up to {args.max_len} tokens'
  )
  header = ('lengths', 'tokens', 'pad slots', 'pack slots', 'pad ms', 'pack ms', 'speedup')
  header += ('pad MB', 'pack MB', 'mem ratio', 'temp ratio', 'max|dlogit|')
  print(''.join(f'{h:>12}' for h in header))
  rows = {}
  for d in dists:
    lengths = sample_lengths(d, args.prompts, args.max_len, rng)
    prompts = [rng.integers(0, args.vocab, n).astype(np.int32) for n in lengths]
    m = compare_prefill(model, params, prompts, repeats=args.repeats)
    rows[d] = m
    cells = (
      f'{m["tokens"]:.0f}',
      f'{m["padded_slots"]:.0f}',
      f'{m["packed_slots"]:.0f}',
      f'{1e3 * m["padded_s"]:.2f}',
      f'{1e3 * m["packed_s"]:.2f}',
      f'{m["speedup"]:.2f}x',
      f'{1e-6 * m["padded_peak_bytes"]:.1f}',
      f'{1e-6 * m["packed_peak_bytes"]:.1f}',
      f'{m["memory_ratio"]:.2f}x',
      f'{m["temp_ratio"]:.2f}x',
      f'{m["max_logit_diff"]:.1e}',
    )
    print(f'{d:>12}' + ''.join(f'{c:>12}' for c in cells))
  out = {'device': device, 'args': vars(args), 'results': rows}
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + '\n')
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
