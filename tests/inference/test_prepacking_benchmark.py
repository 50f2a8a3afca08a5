"""benchmarks/prepacking.py runs on tiny sizes and prints sane numbers (so it never rots)."""

from __future__ import annotations

import importlib.util
import json
import math

from tests.conftest import REPO


def _benchmark_main():
  spec = importlib.util.spec_from_file_location(
    'prepacking_bench', REPO / 'benchmarks' / 'prepacking.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


def test_benchmark_prints_finite_positive_ratios(tmp_path, capsys):
  _benchmark_main()(
    [
      *('--prompts', '5', '--max-len', '16', '--width', '16', '--depth', '1', '--heads', '2'),
      *('--vocab', '32', '--repeats', '1', '--json', str(tmp_path / 'p.json')),
    ]
  )
  stdout = capsys.readouterr().out
  results = json.loads((tmp_path / 'p.json').read_text())['results']
  assert set(results) == {'uniform', 'lognormal'}
  for m in results.values():
    assert m['prompts'] == 5 and m['tokens'] <= m['packed_slots'] <= m['padded_slots']
    for key in ('padded_s', 'packed_s', 'speedup', 'padded_peak_bytes', 'memory_ratio'):
      assert math.isfinite(m[key]) and m[key] > 0
    assert m['max_logit_diff'] <= 1e-5
  lines = {line.split()[0]: line.split() for line in stdout.splitlines()[2:]}
  for dist in ('uniform', 'lognormal'):  # the printed ratios are the measured ones
    speedup, memory = float(lines[dist][6].rstrip('x')), float(lines[dist][9].rstrip('x'))
    assert speedup > 0 and memory > 0
    assert abs(speedup - results[dist]['speedup']) <= 0.006
    assert abs(memory - results[dist]['memory_ratio']) <= 0.006
