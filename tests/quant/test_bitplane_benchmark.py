"""benchmarks/bitplane_matmul.py runs on tiny sizes, prints finite positive timings and ratios
for every method, and its bit-plane products are exact."""

from __future__ import annotations

import importlib.util
import json
import math

from tests.conftest import REPO


def _benchmark():
  spec = importlib.util.spec_from_file_location(
    'bitplane_matmul', REPO / 'benchmarks' / 'bitplane_matmul.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmark_prints_finite_ratios_and_exact_products(tmp_path, capsys):
  args = ['--shapes', '4x40x8', '--formats', 'W3A2', '--methods', 'int8,xnor,pallas']
  _benchmark().main([*args, '--repeats', '1', '--json', str(tmp_path / 'b.json')])
  lines = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
  assert [line[1:3] for line in lines] == [
    ['f32', 'jnp.dot'],
    ['bf16', 'jnp.dot'],
    ['int8', 'jnp.dot'],
    ['W3A2', 'int8'],
    ['W3A2', 'xnor'],
    ['W3A2', 'pallas'],
  ]
  for line in lines:
    numbers = [float(x) for x in line[3:] if x not in ('yes', 'NO')]
    assert len(numbers) == (1 if line[2] == 'jnp.dot' else 4)
    assert all(math.isfinite(x) and x > 0 for x in numbers)
    assert line[-1] == 'yes' or line[2] == 'jnp.dot'
  rows = json.loads((tmp_path / 'b.json').read_text())['rows']
  assert len(rows) == 6 and all(r['exact'] for r in rows[3:])
  # Each ratio is the baseline's time over this row's, from the same run.
  base = {r['format']: r['ms'] for r in rows[:3]}
  for r in rows[3:]:
    for name in ('f32', 'bf16', 'int8'):
      assert math.isclose(r[f'x_{name}'], base[name] / r['ms'], rel_tol=1e-9)
