"""The Journey Matters (Jin et al., 2025): average parameter count unifies sparse and dense laws.

Dense runs and runs pruned gradually (Zhu & Gupta's cubic, global magnitude over every linear
layer's kernel) from a start to an end fraction of training, over model sizes x final
sparsities x pruning windows; the `journey` analysis (`jaxlab.scaling.journey`) fits the
Chinchilla law with the final and with the average non-zero parameter count and ranks the
windows:

  jaxlab run experiments/journey.py:tiny --workdir runs/journey    # 20 runs, ~7 min on 2 CPU cores
  jaxlab run experiments/journey.py:small --workdir runs/journey_s # 40 runs, 2 budgets: a GPU

`tiny` trains one token budget (the law is then `L = E' + A/N^α`); `small` also sweeps the
steps so `D` varies. Dense runs are the prune plugin at sparsity 0 (so N̄ = N is measured the
same way).
"""

import ml_collections

import jaxlab.scaling.journey  # noqa: F401  (registers the `journey` analysis)
import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
from jaxlab.scaling.journey import PAPER_WINDOW
from jaxlab.tasks.language_modeling import lm_config

PAPER_ID = 'journey'
TITLE = 'The Journey Matters: average parameter count unifies sparse and dense scaling laws'

SPARSITIES = (0.5, 0.75, 0.9)
WINDOWS = ((0.0, 0.5), (0.1, 0.9), (0.25, 0.5), (0.5, 1.0))  # besides the paper's 25% → 75%
WINDOW_SPARSITIES = (0.75, 0.9)  # the windows are tried at these sparsities, smallest width

SCALES = {
  # name: (widths, depth, heads, seq_len, batch, steps, step grid, lr, pruning events)
  'tiny': ((32, 64, 128), 2, 2, 64, 16, 200, (), 3e-3, 11),
  'small': ((96, 192, 384), 4, 6, 256, 32, 2000, (1000, 2000), 1e-3, 21),
}


def sweep_points(widths: tuple[int, ...]) -> tuple[str, ...]:
  """Every width dense and at each sparsity over 25% → 75%; the other windows at the smallest
  width (the cheapest; their runs share N_final with the 25% → 75% run but not N̄)."""
  points = []
  for w in widths:
    size = f'model.width={w} model.mlp_dim={4 * w}'
    points += [f'{size} plugins.prune.sparsity={s}' for s in (0.0, *SPARSITIES)]
  w = widths[0]
  for s in WINDOW_SPARSITIES:
    for start, end in WINDOWS:
      points.append(
        f'model.width={w} model.mlp_dim={4 * w} plugins.prune.sparsity={s} '
        f'plugins.prune.start_fraction={start} plugins.prune.end_fraction={end}'
      )
  return tuple(points)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/journey.py: expected one of {sorted(SCALES)}, got {arg!r}')
  widths, depth, heads, seq_len, batch, steps, step_grid, lr, events = SCALES[scale]
  c = lm_config('tiny' if scale == 'tiny' else 'small')
  mid = widths[len(widths) // 2]
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = mid, depth, heads, 4 * mid
  c.model.max_len = c.data.seq_len = seq_len
  c.data.batch_size = batch
  c.data.eval_batches = 4 if scale == 'tiny' else 16
  c.optim.lr = lr
  c.optim.warmup_steps = steps // 10
  c.train.steps = steps
  c.train.log_every = max(steps // 20, 1)
  c.train.eval_every = steps  # the final evaluation only
  c.checkpoint.every = steps
  c.plugins.prune = ml_collections.ConfigDict(
    {
      'scorer': 'magnitude',
      'granularity': 'unstructured',
      'allocator': 'global',
      'schedule': 'gradual',  # Zhu & Gupta's cubic (the paper's form is unverified here)
      'sparsity': 0.75,
      'start_fraction': PAPER_WINDOW[0],
      'end_fraction': PAPER_WINDOW[1],
      'events': events,  # pruning events over the window
      'include': r'.*kernel',  # every linear layer; the tied embedding and norms stay dense
    }
  )
  c.sweep.points = sweep_points(widths)
  if step_grid:
    c.sweep.grid = (f'train.steps={",".join(str(s) for s in step_grid)}',)
  c.sweep.analysis = 'journey'
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'The Chinchilla law with the average parameter count over training (N̄) models '
      'sparse and dense runs jointly better than with the final parameter count: '
      'leave-one-out RMSE of log loss, average / final, below 1',
      'metric': 'journey/rmse_ratio',
      'op': '<',
      'target': 1.0,
      'paper_value': 'the N̄ law "accurately models evaluation loss for both sparsely and '
      'densely pre-trained LLMs" (abstract; 80 schedules, models up to ~1B parameters); '
      '25% → 75% near-optimal',
      'scale_note': f'{scale}: byte-level LMs of widths {widths} (depth {depth}), {steps} '
      f'steps x {batch * seq_len} tokens{" and " + str(step_grid) + " steps" if step_grid else ""}'
      ' on the embedded corpus; the paper: LLaMA-style models pre-trained on billions of tokens',
    }
  )
  return c
