"""The `journey` sweep analysis: does the average parameter count unify sparse and dense laws?

Jin et al. (2025), "The Journey Matters: Average Parameter Count over Pre-training Unifies
Sparse and Dense Scaling Laws" (ICLR 2025, arXiv:2501.12486): sparse pre-training prunes a
dense model gradually between a start and an end fraction of training; the Chinchilla law
`L = E + A/N^α + B/D^β` fits sparse and dense runs jointly when `N` is the average parameter
count over pre-training,

  N̄ = (1/S) Σ_s N_s    (N_s: non-zero parameters after update s),

rather than the final (deployed) count. Pruning from 25% to 75% of training was near-optimal
among their 80 schedules (abstract). Their pruned and counted parameters are the linear layers'
("Non-zero Linear Parameters", "Average Linear Parameters During Training" on the authors'
Hugging Face model cards `tjingrant/sparsellm-1b-*`); here: every kernel, with the tied
embedding and the norm scales never pruned and left out of `N` (non-embedding counts, Kaplan
et al., 2020).

Over a sweep's finished points the analysis
1. reads, per run, `N_final` (non-zero non-embedding parameters at the end), `N̄` (the prune
   plugin's exact `sparsity/avg_params` less the embedding), `D = train/items` and the eval
   loss, and checks `N̄` against the schedule's closed form
   (`jaxlab.sparsity.schedules.average_param_count`);
2. fits the Chinchilla form with `N = N_final` and with `N = N̄` on the same runs
   (`jaxlab.scaling.laws.compare_laws`: in-sample and leave-one-out RMSE of log loss). With one
   token budget `D` is constant, `B/D^β` is a constant absorbed into `E` and the fit is the
   one-variable `L = E' + A/N^α`; the grid of starts is then cut to one `(β, b)` (the others
   only move the constant);
3. ranks the pruning windows by final loss per (model, tokens, sparsity), to see whether
   25% → 75% is near-optimal among those tried.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from jaxlab.core.config import config_from_json
from jaxlab.core.plugins import ReportPart
from jaxlab.core.sweep import ANALYSES, AnalysisResult
from jaxlab.core.task import build_task
from jaxlab.scaling.laws import INIT_GRID, compare_laws, predict
from jaxlab.scaling.plots import plot_fit_vs_observed
from jaxlab.sparsity import schedules
from jaxlab.sparsity.groups import unstructured_families
from jaxlab.sparsity.plugin import make_schedule

PAPER_WINDOW = (0.25, 0.75)  # Jin et al.: prune from 25% to 75% of training (abstract)
LAWS = ('final', 'average')


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished point in the law's terms (non-embedding parameter counts)."""

  point: str
  n_dense: float  # non-embedding parameters of the unpruned model
  n_final: float  # non-zero non-embedding parameters at the end
  n_bar: float  # their average over the updates (measured)
  n_bar_closed: float  # the same from the schedule's closed form (nan if the config is missing)
  tokens: float
  loss: float
  sparsity: float
  window: tuple[float, float]

  @property
  def label(self) -> str:
    if self.sparsity == 0.0:
      return 'dense'
    return f'{self.sparsity:g} @ {self.window[0]:g}→{self.window[1]:g}'


# The prune plugin's defaults of the schedule fields the analysis reads.
SCHEDULE_DEFAULTS = {'start': 0, 'end': 0, 'start_fraction': -1.0, 'end_fraction': -1.0}


def _prune_value(row: Mapping[str, Any], config: ml_collections.ConfigDict, key: str) -> Any:
  """The point's `plugins.prune.<key>`: the row's (a swept field) or the experiment's."""
  field = f'plugins.prune.{key}'
  if row.get(field) not in (None, ''):
    return row[field]
  return config.plugins.prune.get(key, SCHEDULE_DEFAULTS.get(key))


def _window(prune: Mapping[str, Any], steps: int) -> tuple[float, float]:
  """The pruning window as fractions of training (given directly or as steps)."""
  if float(prune['start_fraction']) >= 0.0:
    start = float(prune['start_fraction'])
    end = float(prune['end_fraction'])
    return start, start if end < 0.0 else end
  return int(prune['start']) / steps, int(prune['end']) / steps


def closed_form_nbar(point_config: Mapping[str, Any]) -> float:
  """`N̄` (all parameters) of a point's unstructured prune schedule before training: the
  pruned kernels' exact per-update counts plus the parameters no family touches."""
  config = ml_collections.ConfigDict(point_config)
  prune = config.plugins.prune
  if prune.get('granularity', 'unstructured') != 'unstructured':
    raise ValueError(f'journey: expected unstructured pruning, got {prune.granularity!r}')
  key = json.dumps(
    [
      config.task.to_dict(),
      config.model.to_dict(),
      config.data.to_dict(),
      prune.get('include'),
      prune.get('exclude'),
    ],
    sort_keys=True,
  )
  total, prunable = _param_counts(key)
  schedule = make_schedule(
    prune.get('schedule', 'one_shot'),
    float(prune.sparsity),
    int(prune.get('start', 0)),
    int(prune.get('end', 0)),
    int(prune.get('every', 1)),
    int(prune.get('events', 1)),
    total_steps=int(config.train.steps),
    start_fraction=float(prune.get('start_fraction', -1.0)),
    end_fraction=float(prune.get('end_fraction', -1.0)),
  )
  return schedules.average_param_count(
    schedule, int(config.train.steps), prunable, total - prunable
  )


@functools.cache
def _param_counts(key: str) -> tuple[int, int]:
  """(all, prunable) parameters of the model a `closed_form_nbar` key describes."""
  task_cfg, model, data, include, exclude = json.loads(key)
  config = ml_collections.ConfigDict({'task': task_cfg, 'model': model, 'data': data})
  task = build_task(config)
  params = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.key(0))))
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  families = unstructured_families(params, include or r'.*kernel', exclude or '')
  return total, sum(f.size for f in families)


def journey_runs(rows: list[dict], config: ml_collections.ConfigDict) -> list[Run]:
  """The sweep's finished, finite points as `Run`s (diverged points are left out)."""
  runs = []
  for row in rows:
    loss = float(row.get('eval/loss', math.nan))
    if not math.isfinite(loss) or 'sparsity/avg_params' not in row:
      continue
    embed = float(row['params/count']) - float(row['params/non_embedding'])
    steps = int(row['train/steps'])
    prune = {k: _prune_value(row, config, k) for k in ('sparsity', *SCHEDULE_DEFAULTS)}
    point_config = pathlib.Path(row['point_dir']) / 'config.json' if row.get('point_dir') else None
    closed = math.nan
    if point_config is not None and point_config.is_file():
      closed = closed_form_nbar(config_from_json(point_config).to_dict()) - embed
    runs.append(
      Run(
        point=str(row['point']),
        n_dense=float(row['params/non_embedding']),
        n_final=float(row['sparsity/nonzero_params']) - embed,
        n_bar=float(row['sparsity/avg_params']) - embed,
        n_bar_closed=closed,
        tokens=float(row['train/items']),
        loss=loss,
        sparsity=float(prune['sparsity']),
        window=_window(prune, steps),
      )
    )
  return runs


def fit_laws(runs: list[Run]) -> dict[str, Any]:
  """`compare_laws` with `N = N_final` ('final') and `N = N̄` ('average') on the same runs."""
  tokens = np.array([r.tokens for r in runs])
  grid = INIT_GRID
  if np.unique(tokens).size == 1:  # B/D^β is a constant: one (β, b) start suffices
    grid = INIT_GRID[(INIT_GRID[:, 1] == 0.5) & (INIT_GRID[:, 4] == 0.0)]
  return compare_laws(
    np.array([r.loss for r in runs]),
    tokens,
    {'final': np.array([r.n_final for r in runs]), 'average': np.array([r.n_bar for r in runs])},
    init_grid=grid,
  )


def window_ranks(runs: list[Run]) -> dict[tuple[float, float, float], dict]:
  """Per (dense size, tokens, sparsity) with at least two windows: `{window: loss}`, sorted."""
  groups: dict[tuple[float, float, float], dict] = {}
  for r in runs:
    if r.sparsity > 0.0:
      groups.setdefault((r.n_dense, r.tokens, r.sparsity), {})[r.window] = r.loss
  return {k: dict(sorted(v.items(), key=lambda kv: kv[1])) for k, v in groups.items() if len(v) > 1}


def _fmt(x: float) -> str:
  return 'n/a' if not math.isfinite(x) else f'{x:.4g}'


def _runs_table(runs: list[Run], laws: Mapping[str, Any]) -> str:
  head = (
    '| Point | sparsity @ window | N dense | N_final | N̄ (measured) | N̄ (closed form) | D '
    '| eval loss | pred. (final) | pred. (N̄) |\n|---|---|---|---|---|---|---|---|---|---|'
  )
  lines = [head]
  for i, r in enumerate(runs):
    preds = [float(np.exp(laws[name]['residuals'][i])) * r.loss for name in LAWS]
    lines.append(
      f'| {r.point} | {r.label} | {r.n_dense:.0f} | {r.n_final:.0f} | {r.n_bar:.1f} '
      f'| {_fmt(r.n_bar_closed)} | {r.tokens:.3g} | {r.loss:.4f} | {preds[0]:.4f} '
      f'| {preds[1]:.4f} |'
    )
  return '\n'.join(lines)


def _laws_table(laws: Mapping[str, Any]) -> str:
  lines = [
    '| N in the law | E | A | α | B | β | RMSE log L | LOO RMSE log L |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for name in LAWS:
    f = laws[name]['fit']
    lines.append(
      f'| {"N_final" if name == "final" else "N̄ (average)"} | {f["E"]:.4g} | {f["A"]:.4g} '
      f'| {f["alpha"]:.3f} | {f["B"]:.4g} | {f["beta"]:.3f} | {laws[name]["rmse"]:.4g} '
      f'| {laws[name]["loo_rmse"]:.4g} |'
    )
  return '\n'.join(lines)


def _windows_table(ranked: Mapping[tuple[float, float, float], dict]) -> str:
  windows = sorted({w for v in ranked.values() for w in v})
  head = ' | '.join(f'{a:g}→{b:g}' for a, b in windows)
  lines = [
    f'| N dense | D | sparsity | {head} | rank of 25→75 |',
    '|---|---|---|' + '---|' * (len(windows) + 1),
  ]
  for (n, d, s), losses in sorted(ranked.items()):
    order = list(losses)
    rank = order.index(PAPER_WINDOW) + 1 if PAPER_WINDOW in losses else math.nan
    cells = ' | '.join(_fmt(losses[w]) if w in losses else '' for w in windows)
    lines.append(f'| {n:.0f} | {d:.3g} | {s:g} | {cells} | {_fmt(rank)} of {len(order)} |')
  return '\n'.join(lines)


def _law_name(name: str) -> str:
  return 'N_final' if name == 'final' else 'N̄'


def plot_laws(runs: list[Run], laws: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
  """Loss against `N_final` and against `N̄` (dense and sparse runs marked apart), each with its
  fitted law at every token budget (the paper's Fig. 1 view: on `N̄` the families line up)."""
  fig = Figure(figsize=(10, 4.2), layout='constrained')
  axes = fig.subplots(1, 2)
  loss = np.array([r.loss for r in runs])
  dense = np.array([r.sparsity == 0.0 for r in runs])
  for ax, name, key in zip(axes, LAWS, ('n_final', 'n_bar'), strict=True):
    n = np.array([getattr(r, key) for r in runs])
    ax.scatter(n[dense], loss[dense], marker='s', label='dense', zorder=3)
    ax.scatter(n[~dense], loss[~dense], marker='o', label='sparse', zorder=3)
    grid = np.geomspace(n.min() / 1.2, n.max() * 1.2, 100)
    for d in sorted({r.tokens for r in runs}):
      ax.plot(grid, predict(laws[name]['fit'], grid, d)[0], label=f'law, D={d:.3g}')
    ax.set_xscale('log')
    ax.set_xlabel(f'{_law_name(name)} (non-embedding parameters)')
    ax.set_ylabel('eval loss')
    ax.set_title(f'N = {_law_name(name)}: LOO RMSE of log L {laws[name]["loo_rmse"]:.3g}')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


@ANALYSES.register('journey')
def journey_analysis(
  rows: list[dict], workdir: pathlib.Path, config: ml_collections.ConfigDict
) -> AnalysisResult:
  """Fits both laws, ranks the windows, writes the tables and the plots (module docstring)."""
  runs = journey_runs(rows, config)
  if len(runs) < 6:
    raise ValueError(
      f'journey: expected at least 6 finished points with a prune plugin, got {len(runs)} '
      f'(of {len(rows)} rows)'
    )
  laws = fit_laws(runs)
  ranked = window_ranks(runs)
  ranks = [list(v).index(PAPER_WINDOW) + 1 for v in ranked.values() if PAPER_WINDOW in v]
  gaps = [v[PAPER_WINDOW] - min(v.values()) for v in ranked.values() if PAPER_WINDOW in v]
  closed_err = [abs(r.n_bar - r.n_bar_closed) / r.n_bar for r in runs]
  metrics = {
    'journey/runs': float(len(runs)),
    'journey/rmse_final': float(laws['final']['rmse']),
    'journey/rmse_average': float(laws['average']['rmse']),
    'journey/loo_rmse_final': float(laws['final']['loo_rmse']),
    'journey/loo_rmse_average': float(laws['average']['loo_rmse']),
    # < 1: the average-parameter law predicts held-out runs better.
    'journey/rmse_ratio': float(laws['average']['loo_rmse'] / laws['final']['loo_rmse']),
    'journey/nbar_closed_form_max_rel_error': max(closed_err) if closed_err else math.nan,
  }
  if ranks:
    metrics['journey/window_25_75_rank'] = float(np.mean(ranks))
    metrics['journey/window_25_75_worst_rank'] = float(max(ranks))
    metrics['journey/window_25_75_loss_gap'] = float(max(gaps))
    metrics['journey/windows_tried'] = float(max(len(v) for v in ranked.values()))
  loss = np.array([r.loss for r in runs])
  plots = [
    plot_laws(runs, laws, workdir / 'journey_laws.png'),
    plot_fit_vs_observed(
      loss,
      {f'N = {_law_name(n)}': loss * np.exp(laws[n]['residuals']) for n in LAWS},
      workdir / 'journey_fit_vs_observed.png',
      title='Sparse + dense runs: fitted vs observed eval loss',
    ),
  ]
  (workdir / 'journey_fits.json').write_text(
    json.dumps(
      {name: {k: v for k, v in laws[name]['fit'].items() if k != 'residuals'} for name in LAWS},
      indent=2,
    )
    + '\n'
  )
  constant_d = len({r.tokens for r in runs}) == 1
  best = 'N̄ (average)' if laws['best'] == 'average' else 'N_final'
  sections = [
    '## Sparse + dense scaling law: final vs average parameter count\n\n'
    + (
      'One token budget: `B/D^β` is a constant absorbed into `E`, so this is the one-variable '
      'law `L = E′ + A/N^α` (the reported E and B are not separately identified).\n\n'
      if constant_d
      else ''
    )
    + f'{_laws_table(laws)}\n\nLower leave-one-out error: **{best}** '
    f'(ratio average/final = {metrics["journey/rmse_ratio"]:.3f}).',
    f'## Runs\n\n{_runs_table(runs, laws)}\n\nN counts non-embedding parameters; N̄ (measured) '
    "is the prune plugin's exact running average, N̄ (closed form) the schedule's "
    f'(max relative difference {_fmt(metrics["journey/nbar_closed_form_max_rel_error"])}).',
  ]
  if ranked:
    sections.append(
      '## Pruning windows (eval loss; 1 = best)\n\n'
      f'{_windows_table(ranked)}\n\nThe paper: starting at 25% and ending at 75% of training '
      'was near-optimal among its 80 schedules. One seed per window here: the seed-to-seed '
      'spread of these losses is not measured.'
    )
  return AnalysisResult(metrics=metrics, part=ReportPart(sections=sections, plots=plots))
