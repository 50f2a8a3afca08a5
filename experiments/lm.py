"""Baseline decoder-only transformer LM on the embedded CPython corpus (byte-level).

  jaxlab run experiments/lm.py:tiny --workdir runs/lm           # ~1 min on one CPU core
  jaxlab run experiments/lm.py:small --workdir runs/lm_small    # ~10 M params, a few CPU-minutes
  jaxlab run experiments/lm.py:gpu --workdir runs/lm_gpu        # ~128 M params, bf16, one GPU

Point it at a real corpus with `--config.data.source=tokens --config.data.path=train.bin
--config.data.vocab_size=50304` (a nanoGPT-style uint16 token file) or
`--config.data.source=text --config.data.path=book.txt`.
"""

import ml_collections

from jaxlab.core.config import base_config
from jaxlab.nn import transformer_config

PAPER_ID = 'lm'
TITLE = 'Baseline transformer language model (the foundation every LM paper builds on)'

SCALES = {
  # name: (width, depth, heads, mlp_dim, seq_len, batch, steps, lr, warmup, dtype)
  'tiny': (128, 2, 4, 512, 128, 16, 300, 3e-3, 30, 'float32'),
  'small': (384, 6, 6, 1536, 256, 32, 2000, 1e-3, 200, 'float32'),
  'gpu': (768, 18, 12, 3072, 1024, 64, 5000, 6e-4, 500, 'bfloat16'),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/lm.py: expected a scale in {sorted(SCALES)}, got {arg!r}')
  width, depth, heads, mlp, seq_len, batch, steps, lr, warmup, dtype = SCALES[scale]
  c = base_config()
  c.model = transformer_config(
    width=width, depth=depth, heads=heads, mlp_dim=mlp, max_len=seq_len, dtype=dtype
  )
  c.data.seq_len = seq_len
  c.data.batch_size = batch
  c.optim.lr = lr
  c.optim.warmup_steps = warmup
  c.train.steps = steps
  c.train.eval_every = max(steps // 5, 1)
  c.checkpoint.every = max(steps // 4, 1)
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim.text = (
    'A byte-level transformer learns English text: validation bits/byte '
    'far below the 8.0 of a uniform byte model'
  )
  c.report.claim.metric = 'eval/bits_per_byte'
  c.report.claim.op = '<'
  c.report.claim.target = 4.0 if scale == 'tiny' else 2.5
  c.report.claim.paper_value = 'n/a (sanity baseline, not a paper)'
  c.report.claim.scale_note = f'{scale} scale on the ~465 KB embedded corpus'
  return c
