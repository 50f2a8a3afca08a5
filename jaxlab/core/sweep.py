"""Sweeps: every point of a grid (and/or a list) over config fields, each in its own sub-workdir.

  jaxlab sweep experiments/lm.py:tiny --grid model.width=64,128 --grid optim.lr=1e-3,3e-3 \
      --workdir runs/sweep
  jaxlab run experiments/journey.py:tiny --workdir runs/journey   # a config with a `sweep` section

A config's `sweep.grid` (`'field=v1,v2'`: the Cartesian product) and `sweep.points`
(`'field=v field=v'`: an explicit list, crossed with the grid) name the points; `--grid` and
`--point` on the command line add to them. Each point is the config with its values applied as
`--config.field=value` overrides (so typed and validated like any override), and every point
config is loaded before the first point trains.

Points run one after another, each sharded over all devices like any run; with
`sweep.vectorize = K > 1`, up to K unfinished points that differ only in
`jaxlab.core.vectorized.VECTOR_FIELDS` (seed, lr, weight decay, init scale) train together as one
vmapped program with a leading `replica` axis. A finished point (its `final_metrics.json` exists)
is skipped; an interrupted one (or group) resumes from its checkpoint; a point whose training
turns non-finite is recorded as such and the sweep goes on.

Results: `results.csv` and `results.jsonl` (one row per point: its fields, parameters,
non-embedding parameters, tokens, FLOPs, final train and eval loss, wall time, and whatever the
plugins report), `sweep.png`, then the analysis named by `sweep.analysis` (law fits, recipe
comparisons: `ANALYSES`), and `report.md`: the table, the analysis' sections and plots, and the
experiment's claim, checked against the analysis' numbers when it names one of them, else per
point (or relative to a baseline point when `report.claim.baseline` names one).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import ReportPart
from jaxlab.core.registry import Registry
from jaxlab.core.report import plot_curves, write_sweep_report

log = logging.getLogger(__name__)

Grid = list[tuple[str, list[str]]]
Point = dict[str, str]


class AnalysisResult(NamedTuple):
  """What an analysis adds to the sweep's `report.md`: headline numbers (the experiment's
  `report.claim` is checked against these) and markdown sections and PNGs."""

  metrics: dict[str, float]
  part: ReportPart


# (rows, sweep workdir, the experiment's config) -> result. A row is one finished point: its
# name ('point'), its directory ('point_dir'), its field values (strings, keyed by field) and
# its final metrics. An analysis may train further runs (e.g. a distilled student) in
# sub-directories of the workdir, skipping those that already finished.
Analysis = Callable[[list[dict], pathlib.Path, ml_collections.ConfigDict], AnalysisResult]
ANALYSES: Registry[Analysis] = Registry('sweep analysis')


def parse_grid(specs: Sequence[str]) -> Grid:
  """`['model.width=64,128', ...]` -> `[('model.width', ['64', '128']), ...]`."""
  grid = []
  for spec in specs:
    field, sep, values = spec.partition('=')
    if not sep or not field or not values:
      raise ConfigError(f'sweep grid: expected field=v1,v2,..., got {spec!r}')
    grid.append((field.removeprefix('config.'), values.split(',')))
  return grid


def parse_point(spec: str) -> Point:
  """`'model.width=64 optim.lr=1e-3'` -> `{'model.width': '64', 'optim.lr': '1e-3'}`."""
  point = {}
  for item in spec.split():
    field, sep, value = item.partition('=')
    if not sep or not field or not value:
      raise ConfigError(f'sweep point: expected field=value field=value ..., got {spec!r}')
    point[field.removeprefix('config.')] = value
  if not point:
    raise ConfigError(f'sweep point: expected at least one field=value, got {spec!r}')
  return point


def grid_points(grid: Grid) -> list[Point]:
  """The Cartesian product of the grid, in order (last field varies fastest)."""
  fields = [f for f, _ in grid]
  return [
    dict(zip(fields, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))
  ]


def sweep_points(grid_specs: Sequence[str], point_specs: Sequence[str]) -> list[Point]:
  """Each listed point crossed with each grid point (either may be empty, not both)."""
  listed = [parse_point(p) for p in point_specs] or [{}]
  grid = grid_points(parse_grid(grid_specs)) if grid_specs else [{}]
  points = []
  for a in listed:
    for b in grid:
      both = sorted(set(a) & set(b))
      if both:
        raise ConfigError(f'sweep: {both[0]} is set by both a listed point and the grid')
      points.append({**a, **b})
  names = [point_name(p) for p in points]
  duplicate = next((n for n in names if names.count(n) > 1), None)
  if duplicate:
    raise ConfigError(f'sweep: the point {duplicate!r} appears twice')
  return points


def point_name(point: Point) -> str:
  name = ','.join(f'{k}={v}' for k, v in point.items())
  return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', name) or 'default'


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` names sweep points (`jaxlab run` then runs the sweep)."""
  return bool(config.sweep.grid or config.sweep.points)


def run_sweep(
  spec: str,
  grid_specs: Sequence[str],
  workdir: str | os.PathLike,
  overrides: Sequence[str] = (),
  train_fn: Callable[[ml_collections.ConfigDict, pathlib.Path], dict] | None = None,
  *,
  point_specs: Sequence[str] = (),
) -> list[dict]:
  """Runs every point not yet finished, then the analysis; returns one row per point.

  Args:
    spec: the experiment, `path.py[:arg]`.
    grid_specs: `'field=v1,v2'` added to the config's `sweep.grid`.
    workdir: the sweep's directory; point `p` runs in `workdir/point_name(p)`.
    overrides: `--config.field=value` applied to every point (before the point's own values).
    train_fn: trains one point config in a directory (default `train_and_evaluate`).
    point_specs: `'field=v field=v'` added to the config's `sweep.points`.
  """
  if train_fn is None:
    from jaxlab.core.train import train_and_evaluate as train_fn
  workdir = pathlib.Path(workdir)
  config = load_config(spec, overrides)
  grid_specs = [*config.sweep.grid, *grid_specs]
  points = sweep_points(grid_specs, [*config.sweep.points, *point_specs])
  if config.sweep.vectorize < 1:
    raise ConfigError(f'sweep.vectorize: expected a positive integer, got {config.sweep.vectorize}')
  analysis = (
    ANALYSES.get(config.sweep.analysis, 'sweep.analysis') if config.sweep.analysis else None
  )
  configs = [point_config(spec, overrides, p) for p in points]
  workdir.mkdir(parents=True, exist_ok=True)
  dirs = [workdir / point_name(p) for p in points]
  todo = [i for i, d in enumerate(dirs) if not (d / 'final_metrics.json').exists()]
  for group in vectorized_groups([configs[i] for i in todo], config.sweep.vectorize):
    members = [todo[j] for j in group]
    if len(members) == 1:
      _train_point(train_fn, configs[members[0]], dirs[members[0]])
    else:
      from jaxlab.core.vectorized import train_vectorized

      names = ';'.join(dirs[i].name for i in members)
      group_dir = workdir / '_vectorized' / hashlib.sha1(names.encode()).hexdigest()[:12]
      train_vectorized([configs[i] for i in members], [dirs[i] for i in members], group_dir)
    _sync_hosts(f'sweep point {members[0]}')  # host 0 wrote final_metrics.json
  fields = list(dict.fromkeys(f for p in points for f in p))
  rows = [
    {
      'point': d.name,
      'point_dir': str(d),
      # A listed point that does not set a field has the experiment's value of it.
      **{f: p.get(f, str(_field(c, f))) for f in fields},
      **json.loads((d / 'final_metrics.json').read_text()),
    }
    for p, c, d in zip(points, configs, dirs, strict=True)
  ]
  # Every host runs the analysis (it may train); host 0 writes the files.
  result = analysis(rows, workdir, config) if analysis is not None else None
  if jax.process_index() == 0:
    _write_sweep_outputs(spec, config, workdir, rows, fields, result)
  return rows


def _write_sweep_outputs(
  spec: str,
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  rows: list[dict],
  fields: list[str],
  result: AnalysisResult | None,
) -> None:
  """`results.csv`, `results.jsonl`, `sweep.png`, `analysis.json` and `report.md`."""
  write_results(rows, workdir)
  plots, sections, summary = [], [], {}
  metric = 'eval/loss'
  if len(rows) > 1 and all(metric in r for r in rows):
    plots.append(plot_sweep(rows, fields, metric, workdir / 'sweep.png'))
  if result is not None:
    summary = dict(result.metrics)
    (workdir / 'analysis.json').write_text(json.dumps(summary, indent=2, sort_keys=True) + '\n')
    sections, plots = list(result.part.sections), [*plots, *result.part.plots]
  title = config.report.title or pathlib.Path(spec.split(':')[0]).stem
  write_sweep_report(
    workdir,
    title=f'Sweep: {title}',
    rows=rows,
    fields=fields,
    claim=config.report.claim,
    plots=plots,
    sections=sections,
    summary=summary,
  )


def _sync_hosts(name: str) -> None:
  """Multi-host: every process waits here until all arrive (the sweep's workdir must be on
  storage all hosts see)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _field(config: ml_collections.ConfigDict, field: str) -> Any:
  for key in field.split('.'):
    config = config[key]
  return config


def point_config(spec: str, overrides: Sequence[str], point: Point) -> ml_collections.ConfigDict:
  """The config of one point: the experiment with the point's values as overrides, its own
  sweep section emptied (a point is a single run)."""
  config = load_config(spec, [*overrides, *(f'--config.{k}={v}' for k, v in point.items())])
  config.sweep.grid, config.sweep.points = (), ()
  return config


def vectorized_groups(configs: Sequence[ml_collections.ConfigDict], size: int) -> list[list[int]]:
  """Indices of `configs` in groups of at most `size` that can train as one vmapped program
  (equal `program_key`), in order of first appearance; `size` 1: one point per group."""
  if size == 1:
    return [[i] for i in range(len(configs))]
  from jaxlab.core.vectorized import program_key

  by_key: dict[str, list[int]] = {}
  for i, c in enumerate(configs):
    by_key.setdefault(program_key(c), []).append(i)
  groups = []
  for members in by_key.values():
    groups += [members[j : j + size] for j in range(0, len(members), size)]
  return sorted(groups)


def _train_point(train_fn: Callable, config: ml_collections.ConfigDict, point_dir: pathlib.Path):
  """Trains one point; a non-finite loss is recorded in its final metrics, not raised."""
  from jaxlab.core.metrics import NonFiniteError

  try:
    train_fn(config, point_dir)
  except NonFiniteError as e:
    log.warning('point %s diverged: %s', point_dir.name, e)
    final = {'train/nonfinite_step': e.step, 'eval/loss': math.nan}
    (point_dir / 'final_metrics.json').write_text(json.dumps(final, indent=2) + '\n')


def load_point_params(point_dir: str | os.PathLike, step: int | None = None) -> Any:
  """The parameters of a finished point (or any run directory) saved at `step` (default: its
  latest checkpoint), as host (numpy) arrays."""
  import numpy as np
  import orbax.checkpoint as ocp

  directory = pathlib.Path(point_dir).absolute() / 'checkpoints'
  if step is None:
    steps = (
      sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
      if directory.exists()
      else []
    )
    if not steps:
      raise FileNotFoundError(f'{point_dir}: expected a run directory with checkpoints/, got none')
    step = steps[-1]
  restored = ocp.StandardCheckpointer().restore(directory / str(step) / 'state')
  return jax.tree.map(np.asarray, restored['params'])


def write_results(rows: list[dict], workdir: pathlib.Path) -> None:
  """`results.csv` and `results.jsonl`: one row per point."""
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with (workdir / 'results.csv').open('w', newline='') as f:
    w = csv.DictWriter(f, columns)
    w.writeheader()
    w.writerows(rows)
  with (workdir / 'results.jsonl').open('w') as f:
    for r in rows:
      f.write(json.dumps(r, sort_keys=True) + '\n')


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
