"""The `infinite_compute` sweep analysis: which recipe wins when data is fixed and compute is not.

"Pre-training under infinite compute" (Kim, Kotha, Liang, Hashimoto, 2025) fixes the data
(200M tokens) and spends compute by (1) more epochs, (2) more parameters, (3) regularisation
(weight decay tuned up to ~30× the standard 0.1), (4) ensembles of K independently trained
members (logit averaging, `jaxlab.scaling.ensemble`) and (5) distilling the ensemble into one
member-sized student (`jaxlab.scaling.distill`). Each recipe's best loss is extrapolated with
`L(x) = A / x^B + C` (`fit_asymptote`) in parameters and in members; the data-efficiency
multiplier is the factor of data the baseline needs to reach a recipe's loss
(`data_efficiency_multiplier`).

The analysis reads each finished point's settings from its `config.json` (model.width,
optim.weight_decay, train.steps, seed, data.train_tokens) and assigns points to recipes
relative to the experiment's base config:

- epochs: points that differ from the base only in `train.steps`;
- parameters: only in `model.width` (the standard weight decay);
- regularised: in `model.width` and `optim.weight_decay` (best decay per width);
- ensemble: the largest group of points that differ from each other only in `seed`;
- data: only in `data.train_tokens` (the baseline's data scaling, for the multiplier).

The distilled student is the ensemble members' config with the next seed and the `distill`
plugin (teachers: the members), trained in `workdir/distill_student/` (skipped when finished).
The fraction of the ensembling benefit it keeps is `(L_single − L_student) / (L_single − L_K)`,
`L_single` the members' mean loss and `L_K` the K-member ensemble's.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from jaxlab.core.config import config_from_json
from jaxlab.core.plugins import ReportPart
from jaxlab.core.report import plot_curves
from jaxlab.core.sweep import ANALYSES, AnalysisResult
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from jaxlab.scaling import distill as _distill  # noqa: F401  (registers the plugin)
from jaxlab.scaling.ensemble import Ensemble, evaluate
from jaxlab.scaling.laws import data_efficiency_multiplier, fit_asymptote
from jaxlab.scaling.plots import plot_asymptote

FIELDS = ('width', 'wd', 'steps', 'seed', 'tokens')
LOSS = 'eval/loss'


class Setting(NamedTuple):
  width: int
  wd: float
  steps: int
  seed: int
  tokens: int


class Run(NamedTuple):
  setting: Setting
  loss: float
  params: float
  point_dir: pathlib.Path


def setting_of(config: ml_collections.ConfigDict) -> Setting:
  return Setting(
    int(config.model.width),
    float(config.optim.weight_decay),
    int(config.train.steps),
    int(config.seed),
    int(config.data.train_tokens),
  )


def varies_only(run: Run, base: Setting, fields: set[str]) -> bool:
  """Whether `run` agrees with `base` on every setting outside `fields`."""
  return all(getattr(run.setting, f) == getattr(base, f) for f in FIELDS if f not in fields)


def _epochs(s: Setting, config: ml_collections.ConfigDict) -> float:
  return s.steps * config.data.batch_size * config.data.seq_len / s.tokens if s.tokens else math.nan


def _fmt(x: float) -> str:
  return 'n/a' if x is None or not np.isfinite(x) else f'{x:.4g}'


def _describe(s: Setting) -> str:
  return f'width {s.width}, weight decay {s.wd:g}, {s.steps} steps, {s.tokens} tokens'


def _bold(text: str, bold: bool) -> str:
  return f'**{text}**' if bold else text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
  return '\n'.join(lines)


def _fit(x: Sequence[float], loss: Sequence[float]) -> tuple[dict[str, Any] | None, str]:
  """`(fit_asymptote(x, loss), '')`, or `(None, why not)`: fewer than 3 distinct x, or a loss
  that is not lower at the largest x than at the smallest (the recipe overfits: a decreasing
  power law with an asymptote does not describe it, the paper's point about unregularised
  scaling)."""
  if len(set(x)) < 3:
    return None, 'n/a (< 3 x)'
  order = np.argsort(x)
  if not loss[order[-1]] < loss[order[0]]:
    return None, 'n/a (loss rises with x)'
  return fit_asymptote(x, loss), ''


def _plot_fit(x, loss, fit, xkey: str, path: pathlib.Path, title: str) -> pathlib.Path:
  """The measured loss against `x` with its asymptote fit, or alone when none was fitted."""
  if fit is not None:
    return plot_asymptote(x, loss, fit, path, xlabel=xkey, title=title)
  records = [{xkey: float(a), LOSS: float(b)} for a, b in sorted(zip(x, loss, strict=True))]
  return plot_curves(records, [LOSS], path, title=f'{title} (no asymptote fitted)', xkey=xkey)


def _train_student(members: list[Run], workdir: pathlib.Path) -> dict[str, float]:
  """The distilled student (see the module docstring); resumable."""
  student_dir = workdir / 'distill_student'
  done = student_dir / 'final_metrics.json'
  if not done.exists():
    config = config_from_json(members[0].point_dir / 'config.json')
    config.seed = max(m.setting.seed for m in members) + 1
    config.plugins = ml_collections.ConfigDict(
      {'distill': {'teachers': tuple(str(m.point_dir.absolute()) for m in members)}}
    )
    config.report.title = f'Student distilled from the {len(members)}-member ensemble'
    config.report.claim.text = ''
    train_and_evaluate(config, student_dir)
  return json.loads(done.read_text())


class Part(NamedTuple):
  """One recipe's contribution: metrics, report sections and plots."""

  metrics: dict[str, float]
  sections: list[str]
  plots: list[pathlib.Path]


def _regularisation(
  reg_all: list[Run],
  reg_best: list[Run],
  fit: dict[str, Any] | None,
  base: Setting,
  workdir: pathlib.Path,
) -> Part:
  """The width x weight-decay table, the best decay at the largest width, the params plot."""
  wds = sorted({r.setting.wd for r in reg_all})
  widths = sorted({r.setting.width for r in reg_all})
  loss_of = {(r.setting.width, r.setting.wd): r.loss for r in reg_all}
  best_wd = {r.setting.width: r.setting.wd for r in reg_best}
  table = _table(
    ['width \\ weight decay', *map(str, wds)],
    [[w, *(_bold(_fmt(loss_of.get((w, d))), best_wd[w] == d) for d in wds)] for w in widths],
  )
  ratio = best_wd[widths[-1]] / base.wd
  section = (
    '## Regularisation: eval loss per width and weight decay (best in bold)\n\n'
    f'{table}\n\nAt the largest width the best weight decay is {ratio:.3g}x the standard '
    f'{base.wd:g} (paper: optimal weight decay 30x the standard 0.1).'
  )
  plots = []
  if len(reg_best) >= 2:
    x, loss = [r.params for r in reg_best], [r.loss for r in reg_best]
    title = 'regularised recipe: loss vs parameters'
    plots.append(_plot_fit(x, loss, fit, 'params', workdir / 'param_scaling.png', title))
  return Part({'infinite/best_wd_over_standard': ratio}, [section], plots)


def _ensemble_and_student(
  members: list[Run], workdir: pathlib.Path
) -> tuple[np.ndarray, tuple[dict[str, Any] | None, str], Part]:
  """Ensemble loss for k = 1..K members (and its asymptote fit) and the distilled student
  (module docstring)."""
  member_config = config_from_json(members[0].point_dir / 'config.json')
  batches = build_task(member_config).eval_batches(0, 1)
  ens_loss = evaluate(Ensemble.from_runs([m.point_dir for m in members]), batches)
  k = list(range(1, len(members) + 1))
  single = float(np.mean([m.loss for m in members]))
  student = _train_student(members, workdir)[LOSS]
  retained = (single - student) / (single - float(ens_loss[-1]))
  size = members[0].params
  sections = [
    f'## Ensemble scaling (logit averaging; members: {_describe(members[0].setting)})\n\n'
    + _table(['K', 'eval loss'], [[i, _fmt(v)] for i, v in zip(k, ens_loss, strict=True)]),
    '## Distillation\n\n'
    + _table(
      ['model', 'params', 'eval loss'],
      [
        ['single member (mean)', _fmt(size), _fmt(single)],
        [f'{len(members)}-member ensemble', _fmt(len(members) * size), _fmt(ens_loss[-1])],
        ['distilled student', _fmt(size), _fmt(student)],
      ],
    )
    + f'\n\nThe student ({len(members)}x smaller than the ensemble) keeps {retained:.1%} of the '
    'ensembling benefit (L_single − L_student) / (L_single − L_K) (paper: 8x smaller, 83%).',
  ]
  fit = _fit(k, list(ens_loss))
  plot = _plot_fit(
    k,
    list(ens_loss),
    fit[0],
    'members',
    workdir / 'ensemble_scaling.png',
    'ensemble: loss vs members K',
  )
  metrics = {
    'infinite/ensemble_k': float(len(members)),
    'infinite/ensemble_loss': float(ens_loss[-1]),
    'infinite/single_loss': single,
    'infinite/student_loss': student,
    'infinite/distill_retained': retained,
  }
  return ens_loss, fit, Part(metrics, sections, [plot])


def _data_efficiency(data: list[Run], targets: dict[str, float], base: Setting) -> Part:
  """The multiplier of each target loss over the baseline's data law (>= 3 budgets)."""
  budgets = len({r.setting.tokens for r in data})
  if budgets < 3:
    return Part(
      {},
      [
        '## Data efficiency\n\nNot measured: the multiplier needs the baseline at >= 3 token '
        f'budgets (data.train_tokens); this sweep has {budgets}.'
      ],
      [],
    )
  metrics, lines = {}, []
  for key, (name, target) in targets.items():
    de = data_efficiency_multiplier(
      [r.setting.tokens for r in data], [r.loss for r in data], target, target_tokens=base.tokens
    )
    metrics[f'infinite/data_efficiency{key}'] = de['multiplier']
    lines.append(
      [name, _fmt(target), _fmt(de['tokens_needed']), _fmt(de['multiplier']), de['note'] or '-']
    )
  header = [
    'target',
    f'loss at {base.tokens} tokens',
    'baseline tokens needed',
    'multiplier',
    'note',
  ]
  section = (
    '## Data efficiency\n\nBaseline (standard recipe) per token budget: '
    + ', '.join(f'{r.setting.tokens}: {_fmt(r.loss)}' for r in data)
    + '.\n\n'
    + _table(header, lines)
    + '\n\n(paper: 5.17x for the joint recipe, 2.29x for the regularised one, at 200M tokens)'
  )
  return Part(metrics, [section], [])


@ANALYSES.register('infinite_compute')
def infinite_compute_analysis(
  rows: list[dict], workdir: pathlib.Path, config: ml_collections.ConfigDict
) -> AnalysisResult:
  """Per-recipe best losses, asymptote fits, ensemble scaling, distillation and data efficiency
  (module docstring); metrics are keyed `infinite/...`."""
  workdir = pathlib.Path(workdir)
  runs = []
  for r in rows:
    if not np.isfinite(r.get(LOSS, math.nan)):  # a diverged point has no loss to compare
      continue
    point_dir = pathlib.Path(r['point_dir'])
    setting = setting_of(config_from_json(point_dir / 'config.json'))
    runs.append(Run(setting, float(r[LOSS]), float(r['params/count']), point_dir))
  base = setting_of(config)

  def varying(*fields: str) -> list[Run]:
    return [r for r in runs if varies_only(r, base, set(fields))]

  # (1) epochs, (2) parameters at the standard weight decay, (3) the best decay per width.
  epochs = sorted(varying('steps'), key=lambda r: r.setting.steps)
  params = sorted(varying('width'), key=lambda r: r.params)
  reg_all = varying('width', 'wd')
  widths = {r.setting.width for r in reg_all}
  reg_best = sorted(
    (min((r for r in reg_all if r.setting.width == w), key=lambda r: r.loss) for w in widths),
    key=lambda r: r.params,
  )
  fit_reg = _fit([r.params for r in reg_best], [r.loss for r in reg_best])
  # (name, what varies, its runs, (asymptote fit or None, why not))
  recipes = [
    ('epochs', 'train.steps', epochs, (None, 'n/a (not fitted)')),
    (
      'parameters',
      f'model.width (wd {base.wd:g})',
      params,
      _fit([r.params for r in params], [r.loss for r in params]),
    ),
    ('regularised', 'model.width x optim.weight_decay', reg_best, fit_reg),
  ]
  parts = [_regularisation(reg_all, reg_best, fit_reg[0], base, workdir)] if reg_all else []
  best = {name: min((r.loss for r in rs), default=math.nan) for name, _, rs, _ in recipes}

  # (4) ensembles: the largest group of points differing only in seed; (5) its student.
  groups: dict[Setting, list[Run]] = {}
  for r in runs:
    groups.setdefault(r.setting._replace(seed=0), []).append(r)
  members = sorted(max(groups.values(), key=len, default=[]), key=lambda r: r.setting.seed)
  if len(members) >= 2:
    ens_loss, fit_ens, part = _ensemble_and_student(members, workdir)
    parts.append(part)
    recipes.append(('ensemble', f'members (K = 1..{len(members)})', members, fit_ens))
    best['ensemble'] = float(ens_loss[-1])

  metrics = {f'infinite/{n}_best_loss': v for n, v in best.items() if np.isfinite(v)}
  for name, _, _, (fit, _) in recipes:
    if fit is not None:
      metrics[f'infinite/{name}_asymptote'] = fit['C']
  finite = {n: v for n, v in best.items() if np.isfinite(v)}
  standard = min((finite[n] for n in ('epochs', 'parameters') if n in finite), default=math.nan)
  reg, ens = best['regularised'], best.get('ensemble', math.nan)
  if all(np.isfinite([standard, reg, ens])):
    metrics['infinite/order_held'] = float(reg < standard and ens < reg)
  summary = (
    '## Recipes at a fixed data budget\n\n'
    + _table(
      ['recipe', 'varies', 'points', 'best eval loss', 'asymptote C of A/x^B + C'],
      [
        [name, what, len(rs), _fmt(best[name]), _fmt(fit['C']) if fit else why]
        for name, what, rs, (fit, why) in recipes
      ],
    )
    + '\n\nPaper: the regularised recipe beats epochs and parameters at the standard weight '
    'decay, and ensembles beat the regularised recipe; '
    + (
      f'held here: {bool(metrics["infinite/order_held"])}.'
      if 'infinite/order_held' in metrics
      else 'not measured (a recipe has no points).'
    )
  )
  if epochs:
    epoch_rows = [[r.setting.steps, _fmt(_epochs(r.setting, config)), _fmt(r.loss)] for r in epochs]
    parts.append(
      Part(
        {},
        [
          '## Epochs (standard weight decay)\n\n'
          + _table(['train.steps', 'epochs', 'eval loss'], epoch_rows)
        ],
        [],
      )
    )

  # Data efficiency: the baseline's loss over token budgets against the best recipes.
  targets = {}
  if finite:
    targets[''] = ('best recipe', min(finite.values()))
  if 'regularised' in finite:
    targets['_regularised'] = ('regularised', finite['regularised'])
  data = sorted(varying('tokens'), key=lambda r: r.setting.tokens)
  parts.append(_data_efficiency(data, targets, base))

  for part in parts:
    metrics.update(part.metrics)
  sections = [summary, *(s for part in parts for s in part.sections)]
  plots = [p for part in parts for p in part.plots]
  return AnalysisResult(metrics=metrics, part=ReportPart(sections=sections, plots=plots))
