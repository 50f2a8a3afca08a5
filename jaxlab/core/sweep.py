"""Grid sweeps: every point of a grid over config fields, each in its own sub-workdir.

  jaxlab sweep experiments/lm.py:tiny --grid model.width=64,128 --grid optim.lr=1e-3,3e-3 \
      --workdir runs/sweep

Points run one after another here (the scaling issue adds vectorised and multi-device points);
a finished point (its `final_metrics.json` exists) is skipped, an interrupted one resumes from
its checkpoint. Results go to `results.csv`, `sweep.png` and `report.md` (the experiment's claim
checked per point, or relative to a baseline point when `report.claim.baseline` names one).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import ml_collections

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.report import plot_curves, write_sweep_report

Grid = list[tuple[str, list[str]]]


def parse_grid(specs: Sequence[str]) -> Grid:
  """`['model.width=64,128', ...]` -> `[('model.width', ['64', '128']), ...]`."""
  grid = []
  for spec in specs:
    field, sep, values = spec.partition('=')
    if not sep or not field or not values:
      raise ConfigError(f'--grid: expected field=v1,v2,..., got {spec!r}')
    grid.append((field.removeprefix('config.'), values.split(',')))
  return grid


def grid_points(grid: Grid) -> list[dict[str, str]]:
  """The Cartesian product of the grid, in order (last field varies fastest)."""
  fields = [f for f, _ in grid]
  return [
    dict(zip(fields, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))
  ]


def point_name(point: dict[str, str]) -> str:
  name = ','.join(f'{k}={v}' for k, v in point.items())
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name) or 'default'


def run_sweep(
  spec: str,
  grid_specs: Sequence[str],
  workdir: str | os.PathLike,
  overrides: Sequence[str] = (),
  train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path], dict] | None = None,
) -> list[dict]:
  """Runs every grid point not yet finished; returns one result row per point.

  All point configs are loaded (and so type-checked) before the first point trains.
  """
  if train_fn is None:
    from jaxlab.core.train import train_and_evaluate as train_fn
  workdir = pathlib.Path(workdir)
  points = grid_points(parse_grid(grid_specs))
  configs = [
    load_config(spec, [*overrides, *(f'--config.{k}={v}' for k, v in p.items())]) for p in points
  ]
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for point, config in zip(points, configs, strict=True):
    point_dir = workdir / point_name(point)
    done = point_dir / 'final_metrics.json'  # written by a run that finished
    if not done.exists():
      train_fn(config, point_dir)
    rows.append({'point': point_name(point), **point, **json.loads(done.read_text())})
  _write_csv(rows, workdir / 'results.csv')
  fields = [f for f, _ in parse_grid(grid_specs)]
  plots = []
  metric = 'eval/loss'
  if len(points) > 1 and all(metric in r for r in rows):
    plots.append(plot_sweep(rows, fields, metric, workdir / 'sweep.png'))
  title = configs[0].report.title or pathlib.Path(spec.split(':')[0]).stem
  write_sweep_report(
    workdir,
    title=f'Sweep: {title}',
    rows=rows,
    fields=fields,
    claim=configs[0].report.claim,
    plots=plots,
  )
  return rows


def plot_sweep(
  rows: list[dict], fields: list[str], metric: str, path: pathlib.Path
) -> pathlib.Path:
  """`metric` against the first grid field, one line per combination of the other fields."""
  x, others = fields[0], fields[1:]
  records, labels = [], []
  for r in rows:
    label = ','.join(f'{f}={r[f]}' for f in others) or metric
    labels.append(label)
    value = r[x]
    try:
      value = float(value)
    except ValueError:  # a categorical field (e.g. model.ffn) stays a string
      pass
    records.append({x: value, label: r[metric]})
  return plot_curves(
    records, list(dict.fromkeys(labels)), path, title=f'{metric} over the sweep', xkey=x
  )


def _write_csv(rows: list[dict], path: pathlib.Path) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with path.open('w', newline='') as f:
    w = csv.DictWriter(f, columns)
    w.writeheader()
    w.writerows(rows)
