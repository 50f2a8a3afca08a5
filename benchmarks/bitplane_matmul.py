"""Bipolar-INT bit-plane matmul vs `jnp.dot` in f32, bf16 and int8, on LLM-shaped matrices.

  python benchmarks/bitplane_matmul.py [--shapes 32x1024x1024,32x1024x4096]
      [--formats W1A2,W1A4,W2A4,W4A8] [--methods int8,xnor] [--repeats 5] [--json PATH]
  python benchmarks/bitplane_matmul.py --gpu     # LLM shapes (4096, 11008), int8 + pallas

For each `MxKxN` shape (`M` tokens, a `K×N` weight) the baselines are `jnp.dot` of float32
matrices, of bfloat16 matrices, and of int8 matrices with int32 accumulation; each
`W{b}A{a}` format then runs `jaxlab.quant.bipolar.matmul_prepared` with the weight's planes
prepared once (the paper's offline preprocessing) and the activation's planes made per call.
Every function is jitted, run once to compile, then timed (`block_until_ready`, best of
`--repeats`). Printed: ms per matmul, and the ratios (baseline time / bit-plane time, > 1 =
faster) against each baseline measured in the same run; the bit-plane result is checked equal to
the int64 integer product. The paper's 2.4× over CUTLASS comes from bit-level tensor-core MMA;
XLA on a CPU has no such unit, and the `pallas` method (packed XOR/popcount, interpreted on
CPU) is for GPUs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.quant.bipolar import METHODS, matmul_prepared, prepare_weight

CPU_SHAPES = '32x1024x1024,32x1024x4096'
GPU_SHAPES = '16x4096x4096,256x4096x4096,256x4096x11008,2048x4096x4096'


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
  shapes = []
  for item in text.split(','):
    dims = item.lower().split('x')
    if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
      raise ValueError(f'--shapes: expected MxKxN items like 32x1024x1024, got {item!r}')
    shapes.append(tuple(int(d) for d in dims))
  return shapes


def parse_formats(text: str) -> list[tuple[int, int]]:
  formats = []
  for item in text.split(','):
    w, _, a = item.upper().removeprefix('W').partition('A')
    if not (w.isdigit() and a.isdigit() and 1 <= int(w) <= 8 and 1 <= int(a) <= 8):
      raise ValueError(f'--formats: expected items like W4A8 (1-8 bits each), got {item!r}')
    formats.append((int(w), int(a)))
  return formats


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def bipolar_ints(key: jax.Array, shape: tuple[int, int], bits: int) -> jax.Array:
  return 2 * jax.random.randint(key, shape, 0, 2**bits) - (2**bits - 1)


def bench_shape(shape, formats, methods, repeats: int) -> list[dict]:
  m, k, n = shape
  ka, kw = jax.random.split(jax.random.key(0))
  af, wf = jax.random.normal(ka, (m, k)), jax.random.normal(kw, (k, n))
  dot = jax.jit(jnp.dot)
  int_dot = jax.jit(lambda a, w: jax.lax.dot(a, w, preferred_element_type=jnp.int32))
  base = {
    'f32': best_seconds(dot, af, wf, repeats=repeats),
    'bf16': best_seconds(dot, af.astype(jnp.bfloat16), wf.astype(jnp.bfloat16), repeats=repeats),
    'int8': best_seconds(int_dot, af.astype(jnp.int8), wf.astype(jnp.int8), repeats=repeats),
  }
  rows = [
    dict(shape=list(shape), format=name, method='jnp.dot', ms=1e3 * t) for name, t in base.items()
  ]
  for w_bits, a_bits in formats:
    a, w = bipolar_ints(ka, (m, k), a_bits), bipolar_ints(kw, (k, n), w_bits)
    reference = np.asarray(a, np.int64) @ np.asarray(w, np.int64)
    for method in methods:
      prepared = prepare_weight(w, w_bits, method)
      fn = jax.jit(
        lambda a, p, method=method, a_bits=a_bits, w_bits=w_bits: matmul_prepared(
          a, p, a_bits, w_bits, method
        )
      )
      t = best_seconds(fn, a, prepared, repeats=repeats)
      exact = bool(np.array_equal(np.asarray(fn(a, prepared), np.int64), reference))
      row = dict(shape=list(shape), format=f'W{w_bits}A{a_bits}', method=method, ms=1e3 * t)
      row.update({f'x_{name}': bt / t for name, bt in base.items()}, exact=exact)
      rows.append(row)
  return rows


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shapes', default='')
  parser.add_argument('--formats', default='W1A2,W1A4,W2A4,W4A8')
  parser.add_argument('--methods', default='')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--gpu', action='store_true', help='LLM shapes, methods int8 + pallas')
  parser.add_argument('--json', default='')
  args = parser.parse_args(argv)
  shapes = parse_shapes(args.shapes or (GPU_SHAPES if args.gpu else CPU_SHAPES))
  formats = parse_formats(args.formats)
  methods = (args.methods or ('int8,pallas' if args.gpu else 'int8,xnor')).split(',')
  if any(meth not in METHODS for meth in methods):
    raise ValueError(f'--methods: expected items of {METHODS}, got {args.methods!r}')
  if args.repeats < 1:
    raise ValueError(f'--repeats: expected a positive int, got {args.repeats}')
  device = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
  print(f'bit-plane matmul on {device}, best of {args.repeats}')
  print(
    f'{"M×K×N":>18} {"format":>7} {"method":>8} {"ms":>10} {"×f32":>7} {"×bf16":>7} '
    f'{"×int8":>7} exact'
  )
  rows = []
  for shape in shapes:
    for r in bench_shape(shape, formats, methods, args.repeats):
      rows.append(r)
      ratios = ' '.join(
        f'{r[f"x_{b}"]:7.3f}' if f'x_{b}' in r else f'{"":>7}' for b in ('f32', 'bf16', 'int8')
      )
      exact = '' if 'exact' not in r else ('yes' if r['exact'] else 'NO')
      print(
        f'{"x".join(map(str, r["shape"])):>18} {r["format"]:>7} {r["method"]:>8} '
        f'{r["ms"]:10.3f} {ratios} {exact}'
      )
  out = {'device': device, 'repeats': args.repeats, 'rows': rows}
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + '\n')
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
