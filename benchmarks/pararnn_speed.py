"""Wall time of ParaRNN (Newton + associative scan) vs `lax.scan` for the GRU and LSTM cells.

  python benchmarks/pararnn_speed.py [--T 1024,4096] [--D 64,256] [--B 4] [--cells gru,lstm]
      [--dtype float32,bfloat16] [--iterations 3] [--repeats 3] [--json PATH]

The defaults (16 grid points) take about two minutes on a 2-core CPU.

For every (cell, dtype, T, D) of the grid this times, jitted and vmapped over a batch of B
sequences:

  seq fwd        `jaxlab.nn.rnn.sequential` (`lax.scan`, O(T) work, depth T)
  par fwd        `jaxlab.nn.rnn.newton_scan` with a fixed `--iterations` Newton steps (ParaRNN
                 uses 3), each an associative scan: O(T log T) work, depth O(log T)
  fwd+bwd        `jax.grad` of the sum of all states w.r.t. the cell's parameters and the inputs
                 (BPTT through `lax.scan` vs the implicit-differentiation VJP of `newton_scan`)

Each executable is compiled once (`jit(...).lower(...).compile()`), run once untimed, then timed
`--repeats` times with `block_until_ready`; the median is reported. Columns also give the Newton
residual `max_t |h_t − f(h_{t−1}, x_t)|` of the returned states (from `NewtonInfo`, max over the
batch), `max |parallel − sequential|` of the states, the gradients' largest relative
difference (`max |g_par − g_seq| / max |g_seq|` over the parameter and input gradients; in
bf16 the input gradient is itself rounded to bf16, ~1e-3), and the memory XLA plans for each forward
and fwd+bwd executable (`compiled.memory_analysis()`: argument + output + temp bytes, less
aliased bytes); "n/a" where the backend reports none.

Cells and inputs: the GRU is `cells.gru_step` (diagonal Jacobian, state [D]); the LSTM is
`cells.lstm_step` (D independent 2×2 blocks over (c, h), state [D, 2]). Parameters follow the
layers' initialisation (recurrent diagonals and peepholes ~ U(−0.5, 0.5)); the inputs `u`
(the input projection's output, [T, 3, D]) are N(0, 1) plus the layers' memory-gate bias
(GRU b_z = −linspace(0, 3), LSTM b_f = +linspace(0, 3)). `--dtype bfloat16` stores `u` in
bfloat16 and casts it to float32 inside the jitted function, as `ParaGRU`/`ParaLSTM` do: the
recurrence itself (states, Jacobians, scans) always runs in float32, so bf16 only halves the
input's memory traffic; parallel and sequential see the same rounded inputs.

Expectations. On a CPU with a couple of cores the parallel solver is *slower* than `lax.scan`:
it does 3 Newton iterations of O(T log T) work against the scan's O(T), and there is no
parallel hardware for the O(log T) depth to pay off. ParaRNN's claim (Danieli et al., 2025:
up to 665x over sequential application on GPU; our target is >= 100x at T >= 4096 on one H100)
can only be checked on an accelerator, e.g.

  python benchmarks/pararnn_speed.py --T 1024,4096,16384,65536 --D 64,256,1024 --B 8 \\
      --cells gru,lstm --dtype float32,bfloat16 --repeats 3 --json pararnn_speed.json

No GPU was available when this script was written, so no GPU numbers have been measured yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.nn.rnn import cells
from jaxlab.nn.rnn.newton import NewtonConfig, newton_scan, sequential

CELLS = ('gru', 'lstm')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One recurrent cell: its step, Jacobian, scan structure and state shape."""

  step: Callable[..., jax.Array]
  jac: Callable[..., jax.Array]
  structure: str
  state_shape: Callable[[int], tuple[int, ...]]
  make_params: Callable[[jax.Array, int], Any]
  gate_bias: Callable[[int], jax.Array]  # [3, D], added to the N(0, 1) inputs


def _uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.uniform(key, shape, jnp.float32) - 0.5


def _gate_bias(row: int, start: float, stop: float) -> Callable[[int], jax.Array]:
  return lambda d: jnp.zeros((3, d), jnp.float32).at[row].set(jnp.linspace(start, stop, d))


CELL_SPECS = {
  'gru': Cell(
    step=cells.gru_step,
    jac=cells.gru_jacobian,
    structure='diag',
    state_shape=lambda d: (d,),
    make_params=lambda key, d: cells.GRUParams(a=_uniform(key, (3, d))),
    gate_bias=_gate_bias(0, 0.0, -3.0),
  ),
  'lstm': Cell(
    step=cells.lstm_step,
    jac=cells.lstm_jacobian,
    structure='block',
    state_shape=lambda d: (d, 2),
    make_params=lambda key, d: cells.LSTMParams(
      a=_uniform(key, (3, d)), p=_uniform(jax.random.fold_in(key, 1), (2, d))
    ),
    gate_bias=_gate_bias(0, 0.0, 3.0),
  ),
}


def make_functions(cell: Cell, d: int, newton: NewtonConfig) -> dict[str, Callable[..., Any]]:
  """The four functions timed, each `(params, u[B, T, 3, D]) -> ...` (not yet jitted)."""
  h0 = jnp.zeros(cell.state_shape(d), jnp.float32)

  def seq_one(params, u):
    return sequential(cell.step, params, u.astype(jnp.float32), h0)

  def par_one(params, u):
    return newton_scan(
      cell.step, cell.jac, cell.structure, params, u.astype(jnp.float32), h0, newton
    )

  def seq_fwd(params, u):
    return jax.vmap(seq_one, in_axes=(None, 0))(params, u)

  def par_fwd(params, u):
    states, info = jax.vmap(par_one, in_axes=(None, 0))(params, u)
    return states, jnp.max(info.residual)

  def seq_loss(params, u):
    return jnp.sum(seq_fwd(params, u))

  def par_loss(params, u):
    return jnp.sum(par_fwd(params, u)[0])

  return {
    'seq_fwd': seq_fwd,
    'par_fwd': par_fwd,
    'seq_bwd': jax.grad(seq_loss, argnums=(0, 1)),
    'par_bwd': jax.grad(par_loss, argnums=(0, 1)),
  }


def memory_bytes(compiled: Any) -> int | None:
  """Argument + output + temp bytes XLA planned for `compiled` (None if not reported)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001  (backends without the analysis raise various errors)
    return None
  if m is None:
    return None
  total = (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )
  return int(total)


def time_compiled(compiled: Any, args: tuple[Any, ...], repeats: int) -> tuple[float, Any]:
  """Median wall time in ms over `repeats` calls, after one untimed call; and the last output."""
  out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), out


def bench_one(
  cell_name: str, dtype: str, t: int, d: int, b: int, iterations: int, repeats: int, seed: int
) -> dict[str, Any]:
  """Times one grid point; returns one table row."""
  cell = CELL_SPECS[cell_name]
  k_params, k_u = jax.random.split(jax.random.fold_in(jax.random.key(seed), t * 7919 + d))
  params = cell.make_params(k_params, d)
  u = (jax.random.normal(k_u, (b, t, 3, d), jnp.float32) + cell.gate_bias(d)).astype(DTYPES[dtype])
  fns = make_functions(cell, d, NewtonConfig(iterations=iterations))
  row: dict[str, Any] = {'cell': cell_name, 'dtype': dtype, 'T': t, 'D': d, 'B': b}
  outputs = {}
  for name, fn in fns.items():
    compiled = jax.jit(fn).lower(params, u).compile()
    row[f'{name}_ms'], outputs[name] = time_compiled(compiled, (params, u), repeats)
    row[f'{name}_mem'] = memory_bytes(compiled)
    del compiled
  seq_states = outputs['seq_fwd']
  par_states, residual = outputs['par_fwd']
  row['residual'] = float(residual)
  row['max_abs_diff'] = float(jnp.max(jnp.abs(par_states - seq_states)))

  def rel_diff(par: jax.Array, seq: jax.Array) -> jax.Array:
    par, seq = par.astype(jnp.float32), seq.astype(jnp.float32)
    return jnp.max(jnp.abs(par - seq)) / jnp.maximum(jnp.max(jnp.abs(seq)), 1e-30)

  grad_diff = jax.tree.map(rel_diff, outputs['par_bwd'], outputs['seq_bwd'])
  row['grad_rel_diff'] = float(max(jax.tree.leaves(grad_diff)))
  row['speedup_fwd'] = row['seq_fwd_ms'] / row['par_fwd_ms']
  row['speedup_bwd'] = row['seq_bwd_ms'] / row['par_bwd_ms']
  return row


def _mib(n: int | None) -> str:
  return 'n/a' if n is None else f'{n / 2**20:.1f}'


COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
  ('cell', '<', lambda r: r['cell']),
  ('dtype', '<', lambda r: r['dtype']),
  ('T', '>', lambda r: str(r['T'])),
  ('D', '>', lambda r: str(r['D'])),
  ('B', '>', lambda r: str(r['B'])),
  ('seq fwd ms', '>', lambda r: f'{r["seq_fwd_ms"]:.2f}'),
  ('par fwd ms', '>', lambda r: f'{r["par_fwd_ms"]:.2f}'),
  ('speedup fwd', '>', lambda r: f'{r["speedup_fwd"]:.2f}x'),
  ('seq f+b ms', '>', lambda r: f'{r["seq_bwd_ms"]:.2f}'),
  ('par f+b ms', '>', lambda r: f'{r["par_bwd_ms"]:.2f}'),
  ('speedup f+b', '>', lambda r: f'{r["speedup_bwd"]:.2f}x'),
  ('residual', '>', lambda r: f'{r["residual"]:.1e}'),
  ('|par-seq|', '>', lambda r: f'{r["max_abs_diff"]:.1e}'),
  ('grad rel', '>', lambda r: f'{r["grad_rel_diff"]:.1e}'),
  ('seq fwd MiB', '>', lambda r: _mib(r['seq_fwd_mem'])),
  ('par fwd MiB', '>', lambda r: _mib(r['par_fwd_mem'])),
  ('seq f+b MiB', '>', lambda r: _mib(r['seq_bwd_mem'])),
  ('par f+b MiB', '>', lambda r: _mib(r['par_bwd_mem'])),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """The aligned text table `main` prints."""
  cells_ = [[fmt(r) for _, _, fmt in COLUMNS] for r in rows]
  widths = [
    max([len(name)] + [len(c[i]) for c in cells_]) for i, (name, _, _) in enumerate(COLUMNS)
  ]

  def line(values: Sequence[str]) -> str:
    return '  '.join(
      f'{v:{align}{w}}' for v, (_, align, _), w in zip(values, COLUMNS, widths, strict=True)
    )

  header = line([name for name, _, _ in COLUMNS])
  return '\n'.join([header, '-' * len(header), *(line(c) for c in cells_)])


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(',') if x]


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
  def parse(text: str) -> list[str]:
    names = [x for x in text.split(',') if x]
    bad = [x for x in names if x not in choices]
    if bad or not names:
      raise argparse.ArgumentTypeError(f'expected a comma-separated subset of {list(choices)}')
    return names

  return parse


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description='ParaRNN (Newton + associative scan) vs lax.scan wall time.',
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument('--T', type=_ints, default=[1024, 4096], help='sequence lengths')
  p.add_argument('--D', type=_ints, default=[64, 256], help='state widths')
  p.add_argument('--B', type=int, default=4, help='batch (vmapped sequences)')
  p.add_argument('--cells', type=_names(CELLS), default=list(CELLS), help='cells')
  p.add_argument('--dtype', type=_names(tuple(DTYPES)), default=list(DTYPES), help='input dtypes')
  p.add_argument('--iterations', type=int, default=3, help='Newton iterations (ParaRNN: 3)')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per executable (median)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json', type=pathlib.Path, default=None, help='also write the rows here')
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  if args.iterations < 1 or args.repeats < 1 or args.B < 1:
    print('pararnn_speed: --iterations, --repeats and --B must be >= 1', file=sys.stderr)
    return 2
  device = jax.devices()[0]
  print(
    f'jax {jax.__version__}; {jax.device_count()} x {device.device_kind} ({device.platform}); '
    f'{args.iterations} Newton iterations; median of {args.repeats}'
  )
  rows = []
  for cell in args.cells:
    for dtype in args.dtype:
      for t in args.T:
        for d in args.D:
          row = bench_one(cell, dtype, t, d, args.B, args.iterations, args.repeats, args.seed)
          rows.append(row)
          print(f'  done {cell} {dtype} T={t} D={d}', file=sys.stderr, flush=True)
  print(format_table(rows))
  if args.json is not None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {
      'jax': jax.__version__,
      'device': device.device_kind,
      'platform': device.platform,
      'devices': jax.device_count(),
      'iterations': args.iterations,
      'repeats': args.repeats,
    }
    args.json.write_text(json.dumps({'meta': meta, 'rows': rows}, indent=2) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
