"""The `journey` analysis on synthetic sweep rows: counts taken from the right metrics, the
average-parameter law wins on data generated from it (and loses on data generated from the
final count), windows ranked per sparsity, diverged points left out, too few points refused,
the start grid cut only when the token budget is constant."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from jaxlab.core.sweep import ANALYSES
from jaxlab.scaling import journey
from jaxlab.scaling.journey import journey_analysis, journey_runs, window_ranks
from jaxlab.scaling.laws import INIT_GRID

EMBED = 1000  # embedding parameters: in params/count, never pruned
TOKENS = 2e5
WINDOWS = ((0.25, 0.75), (0.0, 0.5), (0.5, 1.0))


def _config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      'plugins': {
        'prune': {
          'sparsity': 0.75,
          'start': 0,
          'end': 0,
          'start_fraction': 0.25,
          'end_fraction': 0.75,
        }
      }
    }
  )


def _density(s: float, window: tuple[float, float]) -> float:
  """The cubic's continuous average density (schedules.average_density's large-T limit)."""
  f0, f1 = window
  return 1 - s * (0.75 * (f1 - f0) + 1 - f1)


def _rows(law: str, noise: float = 0.002, seed: int = 0) -> list[dict]:
  """Dense and sparse points of three sizes (and three windows at the middle size), losses
  from `E + A / N^α` with N = N̄ ('average') or N_final ('final'), log-normal noise."""
  rng = np.random.default_rng(seed)
  rows = []
  for n in (4e3, 16e3, 64e3):
    for s in (0.0, 0.5, 0.75, 0.9):
      for window in WINDOWS if (n == 16e3 and s >= 0.75) else WINDOWS[:1]:
        n_final, n_bar = n * (1 - s), n * _density(s, window)
        x = n_bar if law == 'average' else n_final
        loss = (1.2 + 40.0 / x**0.45) * np.exp(rng.normal(0, noise))
        row = {
          'point': f'n={n:g},s={s},w={window}',
          'point_dir': '',
          'plugins.prune.sparsity': str(s),
          'eval/loss': float(loss),
          'params/count': n + EMBED,
          'params/non_embedding': n,
          'sparsity/nonzero_params': n_final + EMBED,
          'sparsity/avg_params': n_bar + EMBED,
          'train/items': TOKENS,
          'train/steps': 200,
        }
        if window != WINDOWS[0]:
          row['plugins.prune.start_fraction'] = str(window[0])
          row['plugins.prune.end_fraction'] = str(window[1])
        rows.append(row)
  return rows


def test_runs_read_the_counts_without_the_embedding():
  rows = _rows('average')
  runs = journey_runs(rows, _config())
  assert len(runs) == len(rows) == 16
  r = next(r for r in runs if r.n_dense == 16e3 and r.sparsity == 0.9 and r.window == (0.5, 1.0))
  assert r.n_final == pytest.approx(16e3 * 0.1)
  assert r.n_bar == pytest.approx(16e3 * _density(0.9, (0.5, 1.0)))
  assert r.tokens == TOKENS
  # A point without window fields has the config's window; dense points have N̄ = N_final = N.
  dense = [r for r in runs if r.sparsity == 0.0]
  assert all(r.window == (0.25, 0.75) and r.n_bar == r.n_final == r.n_dense for r in dense)


@pytest.fixture(scope='module')
def average_result(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('journey')
  return workdir, journey_analysis(_rows('average'), workdir, _config())


def test_average_law_wins_on_data_from_the_average_law(average_result):
  workdir, result = average_result
  m = result.metrics
  assert ANALYSES.get('journey') is journey_analysis
  assert m['journey/runs'] == 16
  assert m['journey/loo_rmse_average'] < 0.01  # the noise is 0.002 in log loss
  assert m['journey/loo_rmse_final'] > 3 * m['journey/loo_rmse_average']
  assert m['journey/rmse_ratio'] == pytest.approx(
    m['journey/loo_rmse_average'] / m['journey/loo_rmse_final']
  )
  fits = json.loads((workdir / 'journey_fits.json').read_text())
  assert fits['average']['alpha'] == pytest.approx(0.45, abs=0.1)
  assert result.part.plots == [
    workdir / 'journey_laws.png',
    workdir / 'journey_fit_vs_observed.png',
  ]
  assert all(p.stat().st_size > 10_000 for p in result.part.plots)
  text = '\n'.join(result.part.sections)
  assert 'Lower leave-one-out error: **N̄ (average)**' in text
  assert 'one-variable' in text  # one token budget


def test_windows_are_ranked_by_loss(average_result):
  _, result = average_result
  # From the N̄ law: a larger N̄ is a lower loss, so the later window (0.5 → 1.0) wins, then
  # 0.25 → 0.75 (N̄ fraction 1 − s (0.375 + 0.25)), then 0 → 0.5, at both sparsities.
  ranked = window_ranks(journey_runs(_rows('average', noise=0.0), _config()))
  assert list(ranked) == [(16e3, TOKENS, 0.75), (16e3, TOKENS, 0.9)]
  for losses in ranked.values():
    assert list(losses) == [(0.5, 1.0), (0.25, 0.75), (0.0, 0.5)]
  assert result.metrics['journey/window_25_75_rank'] == 2.0
  assert result.metrics['journey/windows_tried'] == 3.0
  assert '| 2 of 3 |' in result.part.sections[-1]


def test_final_law_wins_on_data_from_the_final_law(tmp_path):
  result = journey_analysis(_rows('final', seed=1), tmp_path, _config())
  assert result.metrics['journey/rmse_ratio'] > 2.0
  assert 'Lower leave-one-out error: **N_final**' in result.part.sections[0]


def test_diverged_points_are_left_out_and_too_few_refused(tmp_path):
  rows = _rows('average')
  rows[0]['eval/loss'] = float('nan')
  assert len(journey_runs(rows, _config())) == len(rows) - 1
  with pytest.raises(ValueError, match='at least 6 finished points'):
    journey_analysis(rows[:5], tmp_path, _config())


def test_full_start_grid_when_the_token_budget_varies(monkeypatch):
  seen = []
  monkeypatch.setattr(journey, 'compare_laws', lambda *a, init_grid, **k: seen.append(init_grid))
  runs = journey_runs(_rows('average'), _config())
  journey.fit_laws(runs)  # one budget: B/D^β is a constant, one (β, b) start
  assert len(seen[0]) == 150 and set(seen[0][:, 1]) == {0.5} and set(seen[0][:, 4]) == {0.0}
  rows = _rows('average')
  for r in rows[::2]:
    r['train/items'] = 2 * TOKENS
  journey.fit_laws(journey_runs(rows, _config()))
  assert seen[1] is INIT_GRID  # D varies: Hoffmann et al.'s whole grid
