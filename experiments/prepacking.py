"""Prepacking (Zhao et al., 2024): prefill prompts of mixed lengths without padding waste.

  jaxlab run experiments/prepacking.py:tiny --workdir runs/prepacking     # ~1-2 CPU-minutes
  jaxlab run experiments/prepacking.py:small --workdir runs/prepacking_small
  jaxlab run experiments/prepacking.py:gpu --workdir runs/prepacking_gpu   # one GPU
  python benchmarks/prepacking.py --prompts 64 --max-len 512               # the prefill alone

Trains the byte-level LM of `experiments/lm.py` briefly, then the `prepack` plugin
(`jaxlab.inference.prepack_plugin`) draws prompts from the validation text with uniform and
long-tailed (log-normal) lengths, prefills them prepacked (first-fit-decreasing rows,
block-diagonal causal mask, restarting positions) and padded to the longest, and reports
prefill time, XLA peak memory and whether the greedy generations from the two agree.
"""

import ml_collections

import jaxlab.inference.prepack_plugin  # noqa: F401  (registers the prepack plugin)
from jaxlab.tasks.language_modeling import lm_config

PAPER_ID = 'prepacking'
TITLE = 'Prepacking: fast prefill of mixed-length prompts by bin packing'

SCALES = {
  # name: (the LM of `lm_config(name)` trained for `steps` with `warmup`, prompts, generated)
  'tiny': (150, 30, 32, 8),
  'small': (1000, 100, 64, 16),
  'gpu': (2000, 200, 256, 32),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(
      f'experiments/prepacking.py: expected a scale in {sorted(SCALES)}, got {arg!r}'
    )
  steps, warmup, prompts, gen = SCALES[scale]
  c = lm_config(scale)
  seq_len = c.data.seq_len
  c.optim.warmup_steps = warmup
  c.train.steps = steps
  c.train.eval_every = max(steps // 5, 1)
  c.checkpoint.every = max(steps // 2, 1)
  c.plugins.prepack = ml_collections.ConfigDict(
    {
      'num_prompts': prompts,
      'max_prompt_len': seq_len,
      'distributions': ('uniform', 'lognormal'),
      'gen_steps': gen,
      'repeats': 5,
      'seed': 0,
    }
  )
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'Prepacking prefills a batch of long-tailed (log-normal) prompt lengths at least '
      '3x faster than padding every prompt to the longest',
      'metric': 'prepack/lognormal/speedup',
      'op': '>=',
      'target': 3.0,
      'paper_value': 'up to ~5x faster prefill and ~7x less memory than padded prefill in '
      'Huggingface on skewed batches (paper abstract and repo); the issue asks >= 3x on GPU',
      'scale_note': f'{scale}: a {c.model.width}-wide, {c.model.depth}-layer byte LM trained '
      f'{steps} steps, '
      f'{prompts} prompts of up to {seq_len} bytes, one batch per distribution; the paper '
      'uses 1B-13B LLMs on GPU',
      'baseline': '',
    }
  )
  return c
