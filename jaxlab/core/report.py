"""A run's report: curves as PNGs and `report.md` checking the paper's claim against our numbers.

Plots use `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot state), so reports can
be written from any thread or host without a display.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
import pathlib
from collections.abc import Mapping, Sequence

import ml_collections
from matplotlib.figure import Figure

from jaxlab.core.errors import ConfigError

_OPS = {'<': operator.lt, '<=': operator.le, '>': operator.gt, '>=': operator.ge}
_MARKER_MAX_POINTS = 30  # Curves this short (e.g. eval every N steps) get a marker per point.


def plot_curves(
  records: Sequence[Mapping[str, float]],
  keys: Sequence[str],
  path: str | os.PathLike,
  *,
  title: str = '',
  xkey: str = 'step',
  logy: bool = False,
) -> pathlib.Path:
  """Plots one line per key against `xkey` and saves the figure as a PNG.

  Args:
    records: metric records, e.g. from `metrics.read_jsonl`; a record lacking a key is skipped
      for that key's line (train loss every step, eval loss every 100 steps).
    keys: the metrics to plot; keys that appear in no record are left out.
    path: where to write the PNG; parent folders are created.
    title: the figure title.
    xkey: the record field for the x axis.
    logy: use a logarithmic y axis.

  Returns:
    `path`, as a `pathlib.Path`.

  Raises:
    ValueError: if none of `keys` appears in `records`.
  """
  lines = {}
  for key in keys:
    points = [(r[xkey], r[key]) for r in records if key in r and xkey in r]
    if points:
      lines[key] = tuple(zip(*points, strict=True))
  if not lines:
    raise ValueError(f'none of the keys {list(keys)} appear (with {xkey!r}) in the records')
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = fig.add_subplot()
  for key, (xs, ys) in lines.items():
    marker = 'o' if len(xs) <= _MARKER_MAX_POINTS else None
    ax.plot(xs, ys, label=key, marker=marker, markersize=3)
  ax.set_xlabel(xkey)
  ax.set_title(title)
  if logy:
    ax.set_yscale('log')
  ax.grid(True, alpha=0.3)
  ax.legend()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


@dataclasses.dataclass(frozen=True)
class ClaimCheck:
  """A paper's claim, our measurement of it, and whether it held.

  Attributes:
    text: the paper's claim in words.
    metric: the metric compared, e.g. 'eval/bits_per_byte'.
    op: one of '<', '<=', '>', '>='; the claim holds when `measured op target`.
    target: the threshold our measurement is compared against.
    paper_value: the paper's number, as the paper reports it (free text, may be '').
    scale_note: how our scale differs from the paper's.
    measured: our value of `metric` (divided by the baseline's when `baseline` is set); None
      when it was not measured.
    held: whether the claim held; None when the metric was not measured.
    baseline: '' for an absolute claim; else the sweep point (`field=value`) whose `metric`
      the measurement is divided by (e.g. "ParaGRU's bits/byte within 10% of attention's").
  """

  text: str
  metric: str
  op: str
  target: float
  paper_value: str
  scale_note: str
  measured: float | None
  held: bool | None
  baseline: str = ''

  @property
  def verdict(self) -> str:
    """'held', 'did NOT hold' or 'not measured'."""
    if self.held is None:
      return 'not measured'
    return 'held' if self.held else 'did NOT hold'


def check_claim(
  claim: Mapping | ml_collections.ConfigDict,
  metrics: Mapping[str, float],
  baseline_metrics: Mapping[str, float] | None = None,
) -> ClaimCheck | None:
  """Compares an experiment's claim with the run's final metrics.

  Args:
    claim: the experiment's `claim` config: `text`, `metric`, `op`, `target`, `paper_value`,
      `scale_note`, and `baseline` ('' or a sweep point `field=value` for a relative claim).
    metrics: the run's final metrics. A NaN measurement does not hold.
    baseline_metrics: the baseline point's final metrics, for a relative claim; without them
      a relative claim is "not measured" (a single run cannot check it; the sweep report does).

  Returns:
    The check, or None when `claim.text` is empty (the experiment declares no claim).

  Raises:
    ConfigError: (a ValueError) when `claim.op` is not one of '<', '<=', '>', '>='.
  """
  if not claim.get('text'):
    return None
  op = claim['op']
  if op not in _OPS:
    raise ConfigError(f'claim.op must be one of {list(_OPS)}, got {op!r}')
  baseline = claim.get('baseline', '')
  measured = metrics.get(claim['metric'])
  if baseline:
    base = None if baseline_metrics is None else baseline_metrics.get(claim['metric'])
    measured = None if measured is None or base is None else float(measured) / float(base)
  measured = None if measured is None else float(measured)
  return ClaimCheck(
    text=claim['text'],
    metric=claim['metric'],
    op=op,
    target=float(claim['target']),
    paper_value=claim['paper_value'],
    scale_note=claim['scale_note'],
    measured=measured,
    held=None if measured is None else bool(_OPS[op](measured, float(claim['target']))),
    baseline=baseline,
  )


def write_report(
  workdir: str | os.PathLike,
  *,
  title: str,
  config: ml_collections.ConfigDict,
  final_metrics: Mapping[str, float],
  plots: Sequence[str | os.PathLike] = (),
  claim: ClaimCheck | None = None,
  notes: Sequence[str] = (),
  sections: Sequence[str] = (),
) -> pathlib.Path:
  """Writes `workdir/report.md`: claim verdict, sections, final metrics, plots, config, notes.

  Args:
    workdir: the run's folder.
    title: the report's heading.
    config: the run's resolved config.
    final_metrics: metric name -> final value.
    plots: PNG files (as on disk: absolute or relative to the current folder), linked relative
      to `workdir`.
    claim: the claim check, or None when the experiment declares no claim.
    notes: free-text remarks, one bullet each.
    sections: markdown sections (each starting with a `## ` heading, e.g. a method's table of
      results), placed after the claim.

  Returns:
    The path of `report.md`.
  """
  workdir = pathlib.Path(workdir)
  parts = [f'# {title}', _claim_section(claim), *sections, _metrics_section(final_metrics)]
  if plots:
    links = [
      f'![{pathlib.Path(p).stem}]({pathlib.Path(os.path.relpath(p, workdir)).as_posix()})'
      for p in plots
    ]
    parts.append('## Plots\n\n' + '\n\n'.join(links))
  parts.append(f'## Config\n\n```json\n{config.to_json_best_effort(indent=2)}\n```')
  if notes:
    parts.append('## Notes\n\n' + '\n'.join(f'- {note}' for note in notes))
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / 'report.md'
  path.write_text('\n\n'.join(parts) + '\n', encoding='utf-8')
  return path


def _claim_section(claim: ClaimCheck | None) -> str:
  if claim is None:
    return '## Claim\n\nThis experiment declares no claim.'
  return '## Claim\n\n' + _claim_table([claim]) + _claim_footer(claim)


def _claim_quantity(claim: ClaimCheck) -> str:
  if claim.baseline:
    return f'{claim.metric} / {claim.metric}[{claim.baseline}]'
  return claim.metric


def _claim_table(claims: Sequence[ClaimCheck], labels: Sequence[str] = ()) -> str:
  rows = []
  for i, claim in enumerate(claims):
    measured = 'not measured' if claim.measured is None else _format_number(claim.measured)
    quantity = _claim_quantity(claim)
    row = [
      claim.text,
      claim.paper_value,
      f'{quantity} = {measured}',
      f'{quantity} {claim.op} {_format_number(claim.target)}',
      claim.scale_note,
      f'**{claim.verdict}**',
    ]
    rows.append([labels[i], *row] if labels else row)
  header = ["Paper's claim", "Paper's value", 'Our measurement', 'Target', 'Scale difference']
  header = [*header, 'Held?']
  return _table(['Point', *header] if labels else header, rows)


def _claim_footer(claim: ClaimCheck) -> str:
  if claim.baseline and claim.measured is None:
    return (
      f"\n\nThis claim is relative to the sweep point `{claim.baseline}`: the sweep's "
      'report.md checks it.'
    )
  return f'\n\nThe claim {claim.verdict}.'


def write_sweep_report(
  workdir: str | os.PathLike,
  *,
  title: str,
  rows: Sequence[Mapping],
  fields: Sequence[str],
  claim: Mapping | ml_collections.ConfigDict,
  plots: Sequence[str | os.PathLike] = (),
  sections: Sequence[str] = (),
  summary: Mapping[str, float] | None = None,
) -> pathlib.Path:
  """`workdir/report.md` for a sweep: one row per point, the analysis' `sections`, and the claim.

  The claim is checked once against `summary` (the analysis' numbers) when its metric is one of
  them; otherwise per point, and a relative claim (`claim.baseline = 'field=value'`) compares
  every other point with the baseline point that has the same values of the other fields.
  """
  workdir = pathlib.Path(workdir)
  metrics = sorted({k for r in rows for k in r if '/' in k or k == 'wall_time_s'})
  table = _table(
    ['Point', *metrics],
    [[r['point'], *(_format_number(r[m]) if m in r else '' for m in metrics)] for r in rows],
  )
  parts = [f'# {title}', f'## Points ({", ".join(fields)})\n\n{table}', *sections]
  checks = []
  if summary and claim.get('metric') in summary:
    checks = [('analysis', check_claim(claim, summary))]
  elif claim.get('baseline'):
    # Each point is compared with the baseline point that agrees on every other grid field.
    field, _, value = claim['baseline'].partition('=')
    others = [f for f in fields if f != field]
    for r in rows:
      if str(r.get(field)) == value:
        continue
      base = next(
        (
          b
          for b in rows
          if str(b.get(field)) == value and all(str(b.get(f)) == str(r.get(f)) for f in others)
        ),
        None,
      )
      checks.append((r['point'], check_claim(claim, r, base)))
  else:
    checks = [(r['point'], check_claim(claim, r)) for r in rows]
  checks = [(p, c) for p, c in checks if c is not None]
  if checks:
    parts.append('## Claim\n\n' + _claim_table([c for _, c in checks], [p for p, _ in checks]))
  if plots:
    links = [f'![{pathlib.Path(p).stem}]({pathlib.Path(p).name})' for p in plots]
    parts.append('## Plots\n\n' + '\n\n'.join(links))
  path = workdir / 'report.md'
  path.write_text('\n\n'.join(parts) + '\n', encoding='utf-8')
  return path


def _metrics_section(metrics: Mapping[str, float]) -> str:
  rows = [[name, _format_number(metrics[name])] for name in sorted(metrics)]
  return '## Final metrics\n\n' + _table(['Metric', 'Value'], rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [header, ['---'] * len(header), *rows]
  return '\n'.join('| ' + ' | '.join(_cell(c) for c in line) + ' |' for line in lines)


def _cell(text: str) -> str:
  return ' '.join(str(text).split()).replace('|', r'\|')


def _format_number(value: float) -> str:
  """Integers (also integral floats such as a logged step count) as ints, else 4 digits."""
  if isinstance(value, numbers.Integral):
    return str(int(value))
  value = float(value)
  if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
    return str(int(value))
  return f'{value:.4g}'
