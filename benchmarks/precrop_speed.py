"""Train-step time of a PreCropped (channel-cropped, dense) CNN vs the same budget as an
unstructured PaI mask on the full-width network, and vs the dense full network.

  python benchmarks/precrop_speed.py [experiments/precropping.py:tiny] [--steps 20] [--warmup 3]
      [--config.plugins.prune.sparsity=0.9 ...] [--json PATH]

Three train steps, each built by the train loop's own `build_training` from the experiment
(all three under the same mask wrapper, so its overhead cancels in the ratios):

  dense     the full-width model, no pruning
  masked    `granularity=unstructured`: the PaI method's masks in the optimizer state; the
            kernels stay full size, so the step does the dense work plus the masking
  cropped   `granularity=channel`: the PreCropping channel masks found at step 0 are cropped
            away (`jaxlab.sparsity.crop`), and the narrower dense model is trained

Each step is compiled, run `--warmup` times, then timed over `--steps` steps
(`block_until_ready`); the script prints ms/step, parameters and contraction FLOPs per example,
and the speedups `masked / cropped` and `dense / cropped`. On accelerators without sparse
kernels (and on CPU) an unstructured mask saves no time; the cropped model saves what its
FLOPs say, minus fixed overheads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import numpy as np

import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
import jaxlab.tasks  # noqa: F401  (registers the classification task)
from jaxlab.core import sharding
from jaxlab.core.config import load_config
from jaxlab.core.train import Training, build_training
from jaxlab.sparsity.crop import crop, cropped_model_config
from jaxlab.sparsity.flops import contraction_flops
from jaxlab.sparsity.masking import alive_groups, apply_masks, find_masked_state
from jaxlab.sparsity.plugin import model_families


def time_steps(training: Training, batch: dict, steps: int, warmup: int) -> tuple[float, object]:
  """Mean seconds per step over `steps` timed steps (after `warmup`), and the final state."""
  state = training.state
  with jax.set_mesh(training.mesh), nn.logical_axis_rules(training.rules):
    batch = sharding.shard_batch(batch, training.mesh, training.rules)
    for _ in range(warmup):
      state, _ = training.train_step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, _ = training.train_step(state, batch)
    jax.block_until_ready(state)
  return (time.perf_counter() - start) / max(steps, 1), state


def describe(training: Training, state) -> tuple[int, float]:
  params = jax.device_get(state.params)
  variables = {'params': params, **jax.device_get(state.model_state)}
  x = training.task.example_inputs(1)
  fwd = lambda v, x: training.task.forward(v, x, train=False)  # noqa: E731
  count = sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(params))
  return count, contraction_flops(fwd, variables, x, sparse=True)


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('spec', nargs='?', default='experiments/precropping.py:tiny')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--json', default='')
  args, overrides = parser.parse_known_args(argv)
  common = [*overrides, '--config.train.progress=False', '--config.metrics.tensorboard=False']

  def training_for(model=None, **prune) -> Training:
    config = load_config(args.spec, common)
    config.plugins.prune.update(prune)
    if model is not None:
      config.model = model
    return build_training(config)

  dense = training_for(sparsity=0.0)
  batch = next(dense.task.train_iterator(0, 0, 1))
  results = {}
  t, state = time_steps(dense, batch, args.steps, args.warmup)
  results['dense'] = (t, *describe(dense, state))

  masked = training_for(granularity='unstructured')
  t, state = time_steps(masked, batch, args.steps, args.warmup)
  results['masked'] = (t, *describe(masked, state))

  channel = training_for(granularity='channel')
  _, state = time_steps(channel, batch, 0, 1)  # step 0 computes the PreCropping masks
  families = model_families(channel.task, 'channel', r'.*kernel', '')
  ms = find_masked_state(state.opt_state)
  keeps = {
    f.name: np.asarray(k) for f, k in zip(families, alive_groups(families, ms.masks), strict=True)
  }
  variables = jax.device_get({'params': apply_masks(state.params, ms.masks), **state.model_state})
  small_cfg = cropped_model_config(channel.task.model_config, crop(variables, families, keeps))
  cropped = training_for(model=small_cfg, sparsity=0.0)
  t, state = time_steps(cropped, batch, args.steps, args.warmup)
  results['cropped'] = (t, *describe(cropped, state))

  print(f'{args.spec} on {jax.devices()[0].device_kind} ({jax.default_backend()})')
  print(f'{"":8} {"ms/step":>9} {"nonzero params":>15} {"FLOPs/example":>14}')
  for name, (t, n, flops) in results.items():
    print(f'{name:8} {1e3 * t:9.2f} {n:15d} {flops:14.0f}')
  speedups = {
    'masked_over_cropped': results['masked'][0] / results['cropped'][0],
    'dense_over_cropped': results['dense'][0] / results['cropped'][0],
  }
  print(
    f'speedup of the cropped step: {speedups["masked_over_cropped"]:.2f}x vs masked, '
    f'{speedups["dense_over_cropped"]:.2f}x vs dense'
  )
  out = {
    'device': jax.devices()[0].device_kind,
    'cropped_model': small_cfg.to_dict(),
    **{
      f'{k}_{q}': v
      for k, r in results.items()
      for q, v in zip(('s_per_step', 'params', 'flops'), r, strict=True)
    },
    **speedups,
  }
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=2, default=str) + '\n')
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
