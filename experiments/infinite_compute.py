"""Pre-training under infinite compute (Kim, Kotha, Liang, Hashimoto, 2025): fixed data, compute
spent by epochs, parameters, weight decay, ensembles and distillation.

  jaxlab run experiments/infinite_compute.py:tiny --workdir runs/infinite       # CPU, minutes
  jaxlab run experiments/infinite_compute.py:small --workdir runs/infinite_small

The data is a fixed budget of the embedded corpus (`data.train_tokens`; epochs = steps x batch x
seq_len / train_tokens). The sweep's points are the recipes (the `infinite_compute` analysis,
`jaxlab.scaling.infinite_compute`, sorts them by what differs from the base config):

1. epochs: `train.steps` at the base width and the standard weight decay 0.1;
2. parameters: `model.width` (with `mlp_dim = 4 x width`) x
3. weight decay up to 32x the standard 0.1 (the paper's optimum is ~30x);
4. ensembles: the members' config with seeds 0..K-1 (vectorised: trained as one program);
5. distillation of the ensemble into one member-sized student (trained by the analysis);
plus the baseline (standard recipe) at 2x, 4x, 8x the token budget: the data-efficiency multiplier
is how much more data it needs to reach the best recipe's loss (the paper measures its baselines
at 200M-1.6B tokens and its recipes at 200M).
"""

import ml_collections

from jaxlab.scaling import infinite_compute  # noqa: F401  (registers the analysis and plugin)
from jaxlab.tasks.language_modeling import lm_config

PAPER_ID = 'infinite_compute'
TITLE = 'Pre-training under infinite compute: recipes at a fixed data budget'

SCALES = {
  'tiny': {
    'lm': 'tiny',
    'width': 64,
    'depth': 2,
    'heads': 4,
    'seq_len': 64,
    'batch': 16,
    'steps': 200,
    'lr': 3e-3,
    'warmup': 20,
    'tokens': 4096,  # 50 epochs at the base steps
    'widths': (32, 64, 128),
    'wds': (0.1, 0.8, 3.2),
    'epoch_steps': (50, 100, 400),
    'member_wd': 0.8,
    'members': 4,
    'budgets': (8192, 16384, 32768),
  },
  'small': {
    'lm': 'small',
    'width': 256,
    'depth': 4,
    'heads': 4,
    'seq_len': 128,
    'batch': 32,
    'steps': 1000,
    'lr': 1e-3,
    'warmup': 100,
    'tokens': 65536,  # 62.5 epochs at the base steps
    'widths': (128, 256, 512),
    'wds': (0.1, 0.4, 0.8, 1.6, 3.2),
    'epoch_steps': (250, 500, 2000),
    'member_wd': 0.8,
    'members': 8,
    'budgets': (131072, 262144, 524288),
  },
}


def _width(w: int) -> str:
  return f'model.width={w} model.mlp_dim={4 * w}'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(
      f'experiments/infinite_compute.py: expected a scale in {sorted(SCALES)}, got {arg!r}'
    )
  s = SCALES[scale]
  c = lm_config(s['lm'])
  c.model.width, c.model.depth, c.model.heads = s['width'], s['depth'], s['heads']
  c.model.mlp_dim, c.model.max_len = 4 * s['width'], s['seq_len']
  c.data.seq_len, c.data.batch_size, c.data.train_tokens = s['seq_len'], s['batch'], s['tokens']
  c.data.eval_batches = 8
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = s['lr'], s['warmup'], 0.1
  c.train.steps, c.train.eval_every, c.train.log_every = s['steps'], s['steps'], 20
  c.train.progress = False
  c.checkpoint.every, c.checkpoint.async_save = s['steps'], False
  c.metrics.tensorboard = False
  member = f'{_width(s["width"])} optim.weight_decay={s["member_wd"]}'
  c.sweep.points = (
    *(f'{_width(w)} optim.weight_decay={wd}' for w in s['widths'] for wd in s['wds']),
    *(f'train.steps={n}' for n in s['epoch_steps']),
    *(f'{member} seed={k}' for k in range(1, s['members'])),
    *(f'data.train_tokens={b}' for b in s['budgets']),
  )
  c.sweep.vectorize = s['members']
  c.sweep.analysis = 'infinite_compute'
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim.text = (
    'At a fixed data budget, the best recipe (regularisation, parameter and ensemble scaling) '
    'reaches a loss the standard recipe would need several times more data for'
  )
  c.report.claim.metric = 'infinite/data_efficiency'
  c.report.claim.op = '>'
  c.report.claim.target = 1.0
  c.report.claim.paper_value = (
    '5.17x less data at 200M tokens (joint recipe); a student 8x smaller than the ensemble keeps '
    '83% of the ensembling benefit'
  )
  c.report.claim.scale_note = (
    f'{scale}: byte-level LMs of {s["widths"][0]}-{s["widths"][-1]} width on {s["tokens"]} '
    f'tokens of the embedded corpus (paper: 150M-1.4B params on 200M tokens); K = '
    f"{s['members']} members (paper: up to 8); the baseline's data law fitted on "
    f'{len(s["budgets"]) + 1} budgets up to {s["budgets"][-1]} tokens'
  )
  return c
