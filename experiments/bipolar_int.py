"""Bipolar-INT (arbitrary-precision LLM acceleration on tensor cores): the LM's matmuls as ±1
bit-plane products, W{1,2,4}A{4,8}.

The byte-level LM of `experiments/lm.py` is trained in float; then the `bipolar_int` plugin
quantizes its block kernels to bipolar-INT (per-channel weights, per-token activations), runs
every quantized matmul as `Σ_ij 2^(i+j)·(X_i·W_j)` on ±1 planes (exact integer arithmetic), and
reports eval bits/byte against fp32, and the full-sequence scoring and greedy KV-cache decode
throughput against fp32 and bf16.

  jaxlab run experiments/bipolar_int.py:tiny --workdir runs/bipolar_int     # a few CPU-minutes
  jaxlab run experiments/bipolar_int.py:small --workdir runs/bipolar_small  # ~10 M params
  jaxlab run experiments/bipolar_int.py:gpu --workdir runs/bipolar_gpu      # one GPU; add
      --config.plugins.bipolar_int.method=pallas for the packed XNOR/popcount Pallas kernel
"""

import ml_collections

import jaxlab.quant.bipolar_plugin  # noqa: F401  (registers the bipolar_int plugin)
from jaxlab.tasks.language_modeling import lm_config

PAPER_ID = 'bipolar_int'
TITLE = 'Bipolar-INT: arbitrary-precision LM matmuls by ±1 bit planes'

SCALES = {
  # name: (lm scale, weight bits, activation bits, method, timing repeats, decode steps)
  'tiny': ('tiny', (1, 2, 4), (4, 8), 'int8', 20, 32),
  'small': ('small', (1, 2, 3, 4), (4, 8), 'int8', 20, 64),
  'gpu': ('gpu', (1, 2, 4), (2, 4, 8), 'int8', 20, 256),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/bipolar_int.py: expected one of {sorted(SCALES)}, got {arg!r}')
  lm_scale, weight_bits, act_bits, method, repeats, decode_steps = SCALES[scale]
  c = lm_config(lm_scale)
  c.plugins.bipolar_int = ml_collections.ConfigDict(
    {
      'weight_bits': weight_bits,
      'act_bits': act_bits,
      'method': method,
      'rules': (r'.*block_\d+/.*/kernel',),
      'timing_repeats': repeats,
      'decode_steps': decode_steps,
    }
  )
  w, a = min(weight_bits), min(act_bits)
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': f"Running the LM's matmuls as W{w}A{a} bipolar-INT bit-plane products makes "
      'inference (greedy KV-cache decoding) faster than the faster of its fp32 and bf16 '
      'versions',
      'metric': f'bipolar/w{w}a{a}/decode_speedup_vs_best_float',
      'op': '>',
      'target': 1.0,
      'paper_value': 'up to 2.4x matmul speedup over CUTLASS and up to 6.7x LLM inference '
      'speedup, with bit-level tensor-core kernels on NVIDIA GPUs (abstract)',
      'scale_note': f'{scale}: byte-level LM ({c.model.width}x{c.model.depth}), '
      f'{c.train.steps} float training steps, bipolar matmul method {method!r} in XLA '
      f'(no bit-level tensor cores), {decode_steps} decode steps after prompts of '
      f'{c.data.seq_len - decode_steps} tokens, batch {c.data.batch_size}, one seed',
    }
  )
  return c
