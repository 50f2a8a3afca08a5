"""Baseline decoder-only transformer LM on the embedded CPython corpus (byte-level).

  jaxlab run experiments/lm.py:tiny --workdir runs/lm           # ~1 min on one CPU core
  jaxlab run experiments/lm.py:small --workdir runs/lm_small    # ~10 M params, a few CPU-minutes
  jaxlab run experiments/lm.py:gpu --workdir runs/lm_gpu        # ~128 M params, bf16, one GPU
  jaxlab run experiments/lm.py:isoflop --workdir runs/isoflop   # IsoFLOP sweep + Chinchilla fits

Point it at a real corpus with `--config.data.source=tokens --config.data.path=train.bin
--config.data.vocab_size=50304` (a nanoGPT-style uint16 token file) or
`--config.data.source=text --config.data.path=book.txt`.
"""

import jax
import ml_collections

from jaxlab.core.data import ByteTokenizer
from jaxlab.nn import build_model
from jaxlab.scaling.chinchilla import isoflop_points
from jaxlab.tasks.language_modeling import LM_SCALES, lm_config

PAPER_ID = 'lm'
TITLE = 'Baseline transformer language model (the foundation every LM paper builds on)'


# IsoFLOP design at tiny scale: three budgets x five widths (depth 2), ~10 CPU-minutes.
ISOFLOP_BUDGETS = (1.5e11, 4.5e11, 1.35e12)
ISOFLOP_WIDTHS = (32, 48, 64, 96, 128)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale == 'isoflop':
    return isoflop_config()
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


def isoflop_config() -> ml_collections.ConfigDict:
  """The tiny LM at five widths, each trained for the steps that spend each of three compute
  budgets (Hoffmann et al., 2022, approach 2's design), fitted by approaches 2 and 3."""
  import jaxlab.scaling.chinchilla  # noqa: F401  (registers the 'chinchilla' analysis)

  c = lm_config('tiny')

  def count_params(width: int) -> int:
    model_cfg = c.model.copy_and_resolve_references()
    model_cfg.width, model_cfg.mlp_dim = width, 4 * width
    model = build_model(model_cfg, ByteTokenizer.vocab_size)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 8), int)))
    return sum(x.size for x in jax.tree.leaves(shapes))

  tokens = c.data.batch_size * c.data.seq_len
  c.sweep.points = tuple(isoflop_points(ISOFLOP_BUDGETS, ISOFLOP_WIDTHS, count_params, tokens))
  c.sweep.analysis = 'chinchilla'
  c.report.title = f'{TITLE} — IsoFLOP sweep and scaling-law fits'
  c.report.claim.text = (
    'Chinchilla: parameters and training tokens should grow in equal proportion with compute, '
    'N_opt ∝ C^a with a ≈ 0.5'
  )
  c.report.claim.metric = 'chinchilla/abs_a_minus_half'
  c.report.claim.op = '<'
  c.report.claim.target = 0.1
  c.report.claim.paper_value = 'a = 0.46 (approach 3), 0.49 (approach 2); Hoffmann et al. Table 2'
  c.report.claim.scale_note = (
    '37 K–450 K-parameter byte-level LMs, 1.5e11–1.35e12 FLOPs on the 465 KB embedded corpus '
    '(paper: 70 M–16 B parameters, 6e18–3e21 FLOPs, MassiveText)'
  )
  return c
