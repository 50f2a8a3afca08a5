"""Models trained per hour: K small models as one vectorised program vs K runs one after
another, same run.

  python benchmarks/sweep_throughput.py [--k 8] [--steps 50] [--json PATH]
      [--config.model.width=64 ...]

Both sides train the same K points of `experiments/lm.py:tiny` (seeds 0..K-1 and learning rates
spread over 3x, overridable with `--config.*`) through the code a sweep uses: sequentially,
`train_and_evaluate` once per point (each compiles its own step, as separate runs do);
vectorised, `train_vectorized` on all K (one compile, a leading `replica` axis sharded over the
devices). Wall times include compilation, evaluation, checkpoints and reports: what a
researcher waits for. Prints seconds, models per hour and the ratio, and the largest relative
difference of the final eval losses (the two must train the same models).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

import jaxlab.tasks  # noqa: F401  (registers the built-in tasks)
from jaxlab.core.sweep import point_config
from jaxlab.core.train import train_and_evaluate
from jaxlab.core.vectorized import train_vectorized

REPO = pathlib.Path(__file__).resolve().parents[1]
QUIET = [
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
]


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--k', type=int, default=8, help='models (points) to train')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--spec', default=f'{REPO}/experiments/lm.py:tiny')
  parser.add_argument('--json', default='')
  args, overrides = parser.parse_known_args(argv)
  overrides = [
    *QUIET,
    f'--config.train.steps={args.steps}',
    f'--config.checkpoint.every={args.steps}',
    f'--config.train.eval_every={args.steps}',
    f'--config.train.log_every={max(args.steps // 5, 1)}',
    f'--config.optim.warmup_steps={max(args.steps // 10, 1)}',
    *overrides,
  ]
  lrs = np.geomspace(1e-3, 3e-3, args.k)
  points = [{'seed': str(i), 'optim.lr': f'{lr:.6g}'} for i, lr in enumerate(lrs)]
  configs = [point_config(args.spec, overrides, p) for p in points]

  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    t0 = time.perf_counter()
    sequential = [train_and_evaluate(c, root / f'seq{i}') for i, c in enumerate(configs)]
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    vectorised = train_vectorized(configs, [root / f'vec{i}' for i in range(args.k)], root / 'g')
    t_vec = time.perf_counter() - t0

  diff = max(
    abs(a['eval/loss'] - b['eval/loss']) / abs(a['eval/loss'])
    for a, b in zip(sequential, vectorised, strict=True)
  )
  c = configs[0]
  result = {
    'device': jax.devices()[0].device_kind,
    'devices': jax.device_count(),
    'k': args.k,
    'steps': args.steps,
    'params': sequential[0]['params/count'],
    'tokens_per_step': c.data.batch_size * c.data.seq_len,
    'sequential_s': t_seq,
    'vectorized_s': t_vec,
    'sequential_models_per_hour': 3600 * args.k / t_seq,
    'vectorized_models_per_hour': 3600 * args.k / t_vec,
    'speedup': t_seq / t_vec,
    'max_rel_eval_loss_diff': diff,
  }
  print(
    f'{result["device"]} x{result["devices"]}: {args.k} models of {result["params"]:,} params, '
    f'{args.steps} steps of {result["tokens_per_step"]} tokens'
  )
  print(f'{"":12}{"seconds":>10}{"models/hour":>14}')
  print(f'{"sequential":12}{t_seq:10.1f}{result["sequential_models_per_hour"]:14.0f}')
  print(f'{"vectorised":12}{t_vec:10.1f}{result["vectorized_models_per_hour"]:14.0f}')
  print(f'speedup (sequential / vectorised): {result["speedup"]:.2f}x')
  print(f'max relative difference of final eval losses: {diff:.2e}')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
