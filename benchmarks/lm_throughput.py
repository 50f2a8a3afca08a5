"""Training throughput and MFU of an LM experiment, timing the real jitted train step.

  python benchmarks/lm_throughput.py experiments/lm.py:gpu [--config.x=y ...] [--steps 20]
      [--warmup 3] [--peak-tflops N] [--json PATH]

Builds the task, optimizer (with plugins), mesh, sharded train state and jitted step with
`jaxlab.core.train.build_training` — the same call `train_and_evaluate` makes — then times
`--steps` updates after `--warmup` untimed ones, blocking on each step's outputs. The input
pipeline is excluded: one batch, already on the devices, is fed to every step.

Model FLOPs follow the PaLM convention (Chowdhery et al., 2022, appendix B): per token,
`6·N + 12·L·H·Q·T` with N the non-embedding parameters, L the depth, H·Q the width and T the
sequence length; the second term is attention's score and value matmuls, counted as if
unmasked. MFU = achieved model FLOP/s / the devices' peak. XLA's own FLOP count of the
compiled step is printed beside it as a cross-check (it also counts the LM head, the
optimizer's and the elementwise work, so it is somewhat larger).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import jaxlab.tasks  # noqa: F401  (registers the built-in tasks)
from jaxlab.core import config as config_lib
from jaxlab.core import sharding
from jaxlab.core.errors import UserError
from jaxlab.core.plugins import path_name
from jaxlab.core.train import build_training

# Dense (no structured sparsity) peak TFLOP/s per chip, from the vendors' data sheets.
# Matched in order as a substring of the lower-cased `device_kind`, so specific names come first.
#   bf16: bfloat16/float16 tensor-core (MXU) peak.
#   tf32: float32 matmuls at JAX's default precision on NVIDIA GPUs run as TensorFloat-32.
#   fp32: true float32 (non-tensor-core) peak, for `jax_default_matmul_precision='highest'`.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
  ('h100 pcie', {'bf16': 756.0, 'tf32': 378.0, 'fp32': 51.0}),
  ('h100', {'bf16': 989.0, 'tf32': 495.0, 'fp32': 67.0}),  # SXM
  ('h200', {'bf16': 989.0, 'tf32': 495.0, 'fp32': 67.0}),
  ('a100', {'bf16': 312.0, 'tf32': 156.0, 'fp32': 19.5}),
  ('tpu v4', {'bf16': 275.0}),
  ('tpu v5 lite', {'bf16': 197.0}),
  ('tpu v5e', {'bf16': 197.0}),
  ('tpu v5', {'bf16': 459.0}),  # v5p reports 'TPU v5' (or 'TPU v5p')
  ('tpu v6 lite', {'bf16': 918.0}),
  ('tpu v6e', {'bf16': 918.0}),
)


def matmul_mode(compute_dtype: str, platform: str) -> str | None:
  """Which peak applies: 'bf16', 'tf32' or 'fp32'; None where no table entry is meaningful.

  Half-precision compute runs on the tensor cores / MXU. Float32 matmuls at JAX's default
  precision run as TF32 on NVIDIA GPUs (Ampere and newer) and as one bfloat16 pass on TPU; with
  `jax_default_matmul_precision='highest'` they are true float32.
  """
  if platform not in ('gpu', 'tpu'):
    return None
  if compute_dtype in ('bfloat16', 'float16'):
    return 'bf16'
  precision = str(jax.config.jax_default_matmul_precision or 'default').lower()
  if precision in ('highest', 'float32', 'f32_f32_f32'):
    return 'fp32'
  if precision in ('default', 'fastest', 'bfloat16'):
    return 'tf32' if platform == 'gpu' and precision != 'bfloat16' else 'bf16'
  if precision in ('tensorfloat32', 'high') and platform == 'gpu':
    return 'tf32'
  return None


def peak_tflops(device_kind: str, mode: str | None) -> float | None:
  """Dense peak TFLOP/s of one device of `device_kind` in `mode`; None if not known."""
  if mode is None:
    return None
  kind = device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks.get(mode)
  return None


def model_flops_per_token(n_nonembed: int, depth: int, width: int, seq_len: int) -> int:
  """Training FLOPs per token, PaLM appendix B: `6·N + 12·L·H·Q·T` (forward + backward)."""
  return 6 * n_nonembed + 12 * depth * width * seq_len


def xla_flops(compiled: Any) -> float | None:
  """The 'flops' of `compiled.cost_analysis()` (one device's program); None if unavailable."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  flops = cost.get('flops') if isinstance(cost, dict) else None
  return float(flops) if flops is not None and flops >= 0 else None


def count_params(params: Any) -> tuple[int, int]:
  """`(total, embedding)` parameter counts; embeddings are the `nn.Embed` tables."""
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(leaf.shape))
    total += size
    if path_name(path).endswith('embedding'):
      embedding += size
  return total, embedding


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(
    prog='lm_throughput',
    description=__doc__.split('\n\n')[0],
    epilog='Any --config.<field>=<value> arguments override the experiment config.',
  )
  p.add_argument('config', help='experiments/<id>.py[:arg]')
  p.add_argument('--steps', type=int, default=20, help='timed steps (default 20)')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first (default 3)')
  p.add_argument(
    '--peak-tflops',
    type=float,
    default=None,
    help='peak TFLOP/s of ONE device, overriding the built-in table',
  )
  p.add_argument('--json', type=pathlib.Path, default=None, help='also write the numbers here')
  args, extra = p.parse_known_args(argv)
  if args.steps < 1 or args.warmup < 0:
    p.error(f'expected --steps >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}')
  overrides, i = [], 0
  while i < len(extra):  # `--config.a=1` or `--config.a 1`
    arg = extra[i]
    if not arg.startswith('--config.'):
      p.error(f'unrecognised argument {arg!r}; expected --config.<field>=<value>')
    if '=' not in arg and i + 1 < len(extra) and not extra[i + 1].startswith('--'):
      arg, i = f'{arg}={extra[i + 1]}', i + 1
    overrides.append(arg)
    i += 1
  return args, overrides


def benchmark(
  spec: str,
  overrides: Sequence[str] = (),
  *,
  steps: int = 20,
  warmup: int = 3,
  peak: float | None = None,
) -> dict[str, Any]:
  """Times the train step of experiment `spec`; returns the numbers `main` prints.

  Args:
    spec: `path/to/experiment.py[:arg]`.
    overrides: `--config.field=value` strings.
    steps: timed steps.
    warmup: untimed steps run first (after compilation).
    peak: peak TFLOP/s of one device; None looks the device up in `PEAK_TFLOPS`.

  Returns:
    A JSON-able dict of the results (None where a number does not apply).
  """
  config = config_lib.load_config(spec, overrides)
  training = build_training(config)
  task, mesh, rules, state = training.task, training.mesh, training.rules, training.state
  n_total, n_embed = count_params(state.params)
  n_nonembed = n_total - n_embed

  train_iter = task.train_iterator(config.seed, jax.process_index(), jax.process_count())
  batch = sharding.shard_batch(next(train_iter), mesh, rules)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), warnings.catch_warnings():
    # CPU cannot donate buffers; the step is still the one training runs.
    warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
    t0 = time.perf_counter()
    compiled = training.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics) if warmup else state)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
  loss = float(metrics['train/loss'])

  model_cfg = task.model.cfg
  seq_len, n_dev = config.data.seq_len, jax.device_count()
  tokens_per_step = task.items_per_batch
  step_median, step_mean = statistics.median(times), statistics.fmean(times)
  tokens_per_s = tokens_per_step / step_median
  flops_per_token = model_flops_per_token(n_nonembed, model_cfg.depth, model_cfg.width, seq_len)
  achieved = flops_per_token * tokens_per_s / 1e12  # all devices together
  head_flops_per_token = 6 * model_cfg.padded_vocab_size * model_cfg.width
  xla_device_flops = xla_flops(compiled)
  # An SPMD program's cost analysis is one device's share; every device runs one. XLA counts a
  # while loop's body once, so with gradient accumulation (a lax.scan over micro-batches) scale
  # by the trip count (this over-counts the optimizer update, a small part).
  accum = config.optim.grad_accum_steps
  xla_per_token = xla_device_flops * n_dev * accum / tokens_per_step if xla_device_flops else None

  device = jax.devices()[0]
  mode = matmul_mode(model_cfg.dtype, device.platform)
  peak_source = 'given (--peak-tflops)'
  if peak is None:
    peak = peak_tflops(device.device_kind, mode)
    peak_source = f'table ({mode})' if peak is not None else 'unknown'
  mfu = achieved / (peak * n_dev) if peak else None
  return {
    'config': spec,
    'overrides': list(overrides),
    'device_kind': device.device_kind,
    'platform': device.platform,
    'device_count': n_dev,
    'mesh': dict(mesh.shape),
    'compute_dtype': model_cfg.dtype,
    'matmul_mode': mode,
    'params_total': n_total,
    'params_nonembedding': n_nonembed,
    'batch_size': config.data.batch_size,
    'seq_len': seq_len,
    'tokens_per_step': tokens_per_step,
    'grad_accum_steps': accum,
    'warmup_steps': warmup,
    'timed_steps': steps,
    'compile_s': compile_s,
    'step_time_median_s': step_median,
    'step_time_mean_s': step_mean,
    'step_time_min_s': min(times),
    'step_time_max_s': max(times),
    'tokens_per_s': tokens_per_s,
    'model_flops_per_token': flops_per_token,
    'model_flops_per_token_6n': 6 * n_nonembed,
    'model_flops_per_token_attention': flops_per_token - 6 * n_nonembed,
    'lm_head_flops_per_token': head_flops_per_token,
    'xla_flops_per_step_per_device': xla_device_flops,
    'xla_flops_per_token': xla_per_token,
    'achieved_tflops': achieved,
    'achieved_tflops_per_device': achieved / n_dev,
    'peak_tflops_per_device': peak,
    'peak_source': peak_source,
    'mfu': mfu,
    'final_loss': loss,
  }


def _si(x: float, unit: str) -> str:
  """`2.36e6, 'FLOP'` -> `'2.36 MFLOP'`."""
  for prefix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.3g} {prefix}{unit}'
  return f'{x:.3g} {unit}'


def format_report(r: dict[str, Any]) -> str:
  """The human-readable table `main` prints."""

  def pct(x: float) -> str:
    return f'{100 * x:.1f}%'

  ratio = (
    r['xla_flops_per_token'] / r['model_flops_per_token'] if r['xla_flops_per_token'] else None
  )
  head_share = r['lm_head_flops_per_token'] / r['model_flops_per_token']
  accum_note = (
    f'; scan body x grad_accum_steps={r["grad_accum_steps"]}' if r['grad_accum_steps'] > 1 else ''
  )
  rows = [
    ('config', ' '.join([r['config'], *r['overrides']])),
    ('devices', f'{r["device_count"]} x {r["device_kind"]} ({r["platform"]}), mesh {r["mesh"]}'),
    ('compute dtype', f'{r["compute_dtype"]} (matmul peak: {r["matmul_mode"] or "n/a"})'),
    ('params', f'{r["params_total"]:,} total, {r["params_nonembedding"]:,} non-embedding'),
    ('tokens/step', f'{r["tokens_per_step"]:,} (batch {r["batch_size"]} x seq {r["seq_len"]})'),
    ('compile', f'{r["compile_s"]:.2f} s'),
    (
      'step time',
      f'median {1e3 * r["step_time_median_s"]:.2f} ms, mean '
      f'{1e3 * r["step_time_mean_s"]:.2f} ms (min {1e3 * r["step_time_min_s"]:.2f}, '
      f'max {1e3 * r["step_time_max_s"]:.2f}; {r["timed_steps"]} steps after '
      f'{r["warmup_steps"]} warmup)',
    ),
    ('tokens/s', f'{_si(r["tokens_per_s"], "tok/s")} (from the median step)'),
    (
      'model FLOPs/token',
      f'{_si(r["model_flops_per_token"], "FLOP")} = 6·N '
      f'{_si(r["model_flops_per_token_6n"], "FLOP")} + attention '
      f'12·L·d·T {_si(r["model_flops_per_token_attention"], "FLOP")} '
      '(PaLM appendix B; N = non-embedding params)',
    ),
    (
      '  not counted',
      f'LM-head matmul 6·V·d = {_si(r["lm_head_flops_per_token"], "FLOP")} '
      f'({pct(head_share)} of the above; not in the convention)',
    ),
    (
      'XLA FLOPs/token',
      f'{_si(r["xla_flops_per_token"], "FLOP")} (cost_analysis of the '
      f'compiled step: x{ratio:.2f} the model FLOPs{accum_note})'
      if ratio
      else 'n/a',
    ),
    (
      'achieved',
      f'{r["achieved_tflops"]:.4g} TFLOP/s model FLOPs '
      f'({r["achieved_tflops_per_device"]:.4g} per device)',
    ),
    (
      'peak',
      f'{r["peak_tflops_per_device"]:g} TFLOP/s per device, {r["peak_source"]}'
      if r['peak_tflops_per_device']
      else 'n/a (no meaningful peak for this device/dtype; pass --peak-tflops)',
    ),
    ('MFU', pct(r['mfu']) if r['mfu'] is not None else 'n/a'),
    ('final loss', f'{r["final_loss"]:.4f} (sanity: finite)'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = _parse(argv)
  sharding.maybe_initialize_distributed()
  try:
    result = benchmark(
      args.config, overrides, steps=args.steps, warmup=args.warmup, peak=args.peak_tflops
    )
  except UserError as e:
    print(f'lm_throughput: {e}', file=sys.stderr)
    return 2
  if jax.process_index() == 0:
    print(format_report(result))
    if args.json is not None:
      args.json.parent.mkdir(parents=True, exist_ok=True)
      clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()
      }
      args.json.write_text(json.dumps(clean, indent=2) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
