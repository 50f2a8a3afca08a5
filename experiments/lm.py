"""Baseline decoder-only transformer LM on the embedded CPython corpus (byte-level).

  jaxlab run experiments/lm.py:tiny --workdir runs/lm           # ~1 min on one CPU core
  jaxlab run experiments/lm.py:small --workdir runs/lm_small    # ~10 M params, a few CPU-minutes
  jaxlab run experiments/lm.py:gpu --workdir runs/lm_gpu        # ~128 M params, bf16, one GPU

Point it at a real corpus with `--config.data.source=tokens --config.data.path=train.bin
--config.data.vocab_size=50304` (a nanoGPT-style uint16 token file) or
`--config.data.source=text --config.data.path=book.txt`.
"""

import ml_collections

from jaxlab.tasks.language_modeling import LM_SCALES, lm_config

PAPER_ID = 'lm'
TITLE = 'Baseline transformer language model (the foundation every LM paper builds on)'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in LM_SCALES:
    raise ValueError(f'experiments/lm.py: expected a scale in {sorted(LM_SCALES)}, got {arg!r}')
  c = lm_config(scale)
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
