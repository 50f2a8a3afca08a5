"""LipSDP solve time: the new-QC chain vs the residual-ReLU LipSDP and the matrix product, and
Clarabel vs SCS, on random MaxMin MLPs.

  python benchmarks/lipsdp_solve.py [--input 64] [--widths 16,32] [--depths 2,5] [--norm l2]
      [--solvers clarabel,scs] [--seed 0]

For each (depth, width) the network is `input -> width x (depth - 1) -> 10` with Gaussian
kernels scaled by `1/sqrt(fan_in)`. Printed per network and solver: the bound and the wall time
(building + compiling + solving) of the new QC (μ free), of LipSDP on the residual-ReLU rewrite,
and the ratio of their times (ResReLU / QC, > 1 = the QC chain is faster) and of their bounds
(QC / ResReLU, < 1 = the QC is tighter), with the matrix-product bound for reference. Wide
residual LMIs are slow with Clarabel (its cost grows like side^6), so keep `--widths` small there.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxlab.lipschitz.sdp import lipsdp_info, matrix_product_bound


def ints(text: str, flag: str) -> list[int]:
  items = [t for t in text.split(',') if t]
  if not items or not all(t.isdigit() and int(t) > 0 for t in items):
    raise ValueError(f'{flag}: expected comma-separated positive integers, got {text!r}')
  return [int(t) for t in items]


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--input', type=int, default=64)
  p.add_argument('--widths', default='16,32')
  p.add_argument('--depths', default='2,5')
  p.add_argument('--outputs', type=int, default=10)
  p.add_argument('--norm', default='l2', choices=['l2', 'linf'])
  p.add_argument('--solvers', default='clarabel,scs')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  widths, depths = ints(args.widths, '--widths'), ints(args.depths, '--depths')
  if any(w % 2 for w in widths) or min(depths) < 2:
    raise ValueError(f'expected even widths and depths >= 2, got {widths} and {depths}')
  row = 0 if args.norm == 'linf' else None
  print(
    'depth width solver | MP | QC bound, s | ResReLU bound, s | time ResReLU/QC | bound QC/ResReLU'
  )
  for depth in depths:
    for width in widths:
      rng = np.random.default_rng(args.seed)
      dims = [args.input, *([width] * (depth - 1)), args.outputs]
      ws = [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(dims, dims[1:], strict=False)]
      mp = matrix_product_bound(ws, norm=args.norm, output_row=row)
      for solver in args.solvers.split(','):
        kw = {'activation': 'maxmin', 'norm': args.norm, 'solver': solver, 'output_row': row}
        qc = lipsdp_info(ws, method='qc', **kw)
        res = lipsdp_info(ws, method='residual_relu', **kw)
        print(
          f'{depth} {width} {solver} | {mp:.4g} | {qc.bound:.4g}, {qc.wall_time_s:.3g} | '
          f'{res.bound:.4g}, {res.wall_time_s:.3g} | '
          f'{res.wall_time_s / qc.wall_time_s:.3g} | {qc.bound / res.bound:.4g}',
          flush=True,
        )
  return 0


if __name__ == '__main__':
  sys.exit(main())
