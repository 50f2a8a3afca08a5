"""The `jaxlab` command line.

  jaxlab run CONFIG[:ARG] --workdir DIR [--config.field=value ...]
  jaxlab sweep CONFIG[:ARG] [--grid field=v1,v2 ...] [--point 'f=v f=v' ...] --workdir DIR \
      [--config.field=value ...]
  jaxlab list [--experiments DIR]

User mistakes (a bad config, a missing file) print one message and exit with status 2; a
non-finite loss exits with 1; SIGTERM/SIGINT saves a checkpoint and exits with 128 + signal.
"""

from __future__ import annotations

import argparse
import ast
import logging
import pathlib
import sys
from collections.abc import Sequence

from jaxlab.core.errors import UserError


def _split_overrides(extra: Sequence[str]) -> list[str]:
  """argparse leaves `--config.a=1` (and `--config.a 1`) unparsed; normalise to `--config.a=1`."""
  out, i = [], 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith('--config.'):
      raise UserError(f'unrecognised argument {arg!r}; expected --config.<field>=<value>')
    if '=' not in arg and i + 1 < len(extra) and not extra[i + 1].startswith('--'):
      arg, i = f'{arg}={extra[i + 1]}', i + 1
    out.append(arg)
    i += 1
  return out


def list_experiments(directory: str | pathlib.Path) -> list[tuple[str, str, str]]:
  """`(file, PAPER_ID, TITLE)` of every experiment, read without importing it."""
  rows = []
  for path in sorted(pathlib.Path(directory).glob('*.py')):
    consts = {}
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
        for target in node.targets:
          if isinstance(target, ast.Name) and target.id in ('PAPER_ID', 'TITLE'):
            consts[target.id] = node.value.value
    if 'PAPER_ID' in consts:
      rows.append((str(path), consts['PAPER_ID'], consts.get('TITLE', '')))
  return rows


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='jaxlab', description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='command', required=True)
  run = sub.add_parser('run', help='train/evaluate one config and write a report')
  run.add_argument('config', help='experiments/<id>.py[:arg]')
  run.add_argument('--workdir', required=True)
  sweep = sub.add_parser('sweep', help='run a grid/list of configs, one sub-workdir each')
  sweep.add_argument('config')
  sweep.add_argument('--grid', action='append', default=[], help='field=v1,v2,...')
  sweep.add_argument(
    '--point', action='append', default=[], help="'field=v field=v ...' (one listed point)"
  )
  sweep.add_argument('--workdir', required=True)
  ls = sub.add_parser('list', help='list experiments with their paper id and title')
  ls.add_argument('--experiments', default='experiments')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = _parser().parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    return _dispatch(args, _split_overrides(extra))
  except UserError as e:
    from jaxlab.core.train import Interrupted

    print(f'jaxlab: {e}', file=sys.stderr)
    return 128 + e.signum if isinstance(e, Interrupted) else 2
  except FloatingPointError as e:  # metrics.NonFiniteError
    print(f'jaxlab: {e}', file=sys.stderr)
    return 1


def _dispatch(args: argparse.Namespace, overrides: list[str]) -> int:
  if args.command == 'list':
    rows = list_experiments(args.experiments)
    if not rows:
      raise UserError(f'no experiments (files with PAPER_ID) in {args.experiments!r}')
    width = max(len(r[1]) for r in rows)
    for path, paper, title in rows:
      print(f'{paper:<{width}}  {title}  [{path}]')
    return 0

  import jaxlab.scaling.chinchilla  # noqa: F401  (registers the 'chinchilla' sweep analysis)
  import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
  import jaxlab.tasks  # noqa: F401  (registers the built-in tasks)
  from jaxlab.core import sharding

  sharding.maybe_initialize_distributed()
  from jaxlab.core.config import load_config
  from jaxlab.core.sweep import is_sweep, run_sweep

  config = load_config(args.config, overrides)
  if args.command == 'run' and not is_sweep(config):
    from jaxlab.core.train import train_and_evaluate

    final = train_and_evaluate(config, args.workdir)
    print(f'done: {args.workdir}/report.md')
    for key in sorted(k for k in final if k.startswith('eval/')):
      print(f'  {key} = {final[key]:.4f}')
    return 0
  grid, points = (args.grid, args.point) if args.command == 'sweep' else ((), ())
  if not (grid or points or is_sweep(config)):
    raise UserError('sweep: expected --grid or --point, or a config with sweep.grid/points')
  rows = run_sweep(args.config, grid, args.workdir, overrides, point_specs=points)
  print(
    f'done: {len(rows)} points, results in {args.workdir}/results.csv, report in '
    f'{args.workdir}/report.md'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
