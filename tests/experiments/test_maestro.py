"""experiments/maestro.py and the maestro plugin: every scale loads and builds its plugin, bad
arguments name it, and a shrunk tiny run prunes ranks, removes them exactly, compares with
the dense model's SVD truncation at equal parameters and writes its report."""

from __future__ import annotations

import json

import pytest

from jaxlab.core.config import load_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import build_plugins
from jaxlab.core.task import build_task
from jaxlab.core.train import train_and_evaluate
from jaxlab.vision import vision_config
from tests.conftest import REPO

SPEC = f'{REPO}/experiments/maestro.py'
HIDDEN = (16, 8)
SHRINK = [
  '--config.model.hidden=(16, 8)',
  '--config.train.steps=40',
  '--config.train.progress=False',
  '--config.metrics.tensorboard=False',
  '--config.checkpoint.async_save=False',
  '--config.data.eval_batches=4',
  # 40 steps: Σ η_t ≈ 1, so a larger λ than the tiny scale's; shrink every 10 steps
  '--config.plugins.maestro.strength=2.0',
  '--config.plugins.maestro.prune_every=10',
  '--config.plugins.maestro.fractions=(0.5, 1.0)',
]


@pytest.mark.parametrize('arg', ['tiny', 'small'])
def test_every_scale_loads_and_builds_the_plugin(arg):
  config = load_config(f'{SPEC}:{arg}')
  assert config.report.paper == 'maestro' and config.model.name == 'factorized_mlp'
  assert config.report.claim.metric == 'maestro/svd_accuracy_ratio'
  plugin = build_plugins(config, build_task(config))['maestro']
  assert plugin.wrap_optimizer and plugin.loss_term and plugin.finalize and plugin.report


@pytest.mark.parametrize('override', ['strength=-1.0', 'prune_every=0', 'fractions=(0.0,)'])
def test_bad_arguments_name_the_plugin(override):
  config = load_config(f'{SPEC}:tiny', [f'--config.plugins.maestro.{override}'])
  with pytest.raises(ConfigError, match='plugins.maestro'):
    build_plugins(config, build_task(config))


def test_a_model_without_factorised_layers_is_rejected():
  config = load_config(f'{SPEC}:tiny')
  config.model = vision_config('mlp')
  with pytest.raises(ConfigError, match="plugins.maestro.*expected 'factorized_mlp'"):
    build_plugins(config, build_task(config))


def _dense_params(sizes):
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def test_shrunk_tiny_run_prunes_removes_exactly_and_reports(tmp_path):
  config = load_config(f'{SPEC}:tiny', SHRINK)
  final = train_and_evaluate(config, tmp_path)
  sizes = [64, *HIDDEN, 10]
  layers = ['dense0', 'dense1', 'head']
  ranks = [int(final[f'maestro/rank/{n}']) for n in layers]
  initial = [int(final[f'maestro/initial_rank/{n}']) for n in layers]
  assert initial == [16, 8, 8]  # full rank min(in, out)
  # progressive shrinking removed components, and the smaller model computes the same logits
  assert all(1 <= r <= i for r, i in zip(ranks, initial, strict=True))
  assert sum(ranks) < sum(initial)
  assert final['maestro/max_logit_diff'] <= 1e-6
  assert final['maestro/eval_accuracy'] == pytest.approx(final['eval/accuracy'], abs=1e-6)
  assert final['maestro/rank_fraction'] == pytest.approx(sum(ranks) / sum(initial))
  # parameters: (in + out)·r per layer plus biases; SVD baseline at exactly the same count
  want = sum((a + b) * r + b for a, b, r in zip(sizes[:-1], sizes[1:], ranks, strict=True))
  assert final['maestro/params'] == want == final['svd/params']
  assert final['dense/params'] == _dense_params(sizes)
  assert final['nested/1/params'] == want
  assert final['nested/1/eval_accuracy'] == pytest.approx(final['maestro/eval_accuracy'])
  assert final['nested/0.5/params'] < want or sum(ranks) == len(ranks)
  for key in ('maestro/eval_accuracy', 'svd/eval_accuracy', 'dense/eval_accuracy'):
    assert 0.0 <= final[key] <= 1.0
  assert final['maestro/svd_accuracy_ratio'] == pytest.approx(
    final['maestro/eval_accuracy'] / final['svd/eval_accuracy']
  )
  # the pruning masks kept the pruned components at zero through training (logged rank
  # fraction never increases)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  fractions = [r['maestro/rank_fraction'] for r in records if 'maestro/rank_fraction' in r]
  assert fractions and all(b <= a + 1e-9 for a, b in zip(fractions, fractions[1:], strict=False))
  report = (tmp_path / 'report.md').read_text()
  assert '## Claim' in report and 'maestro/svd_accuracy_ratio' in report
  assert '## Maestro: ranks found' in report and 'SVD-truncated to the same ranks' in report
  assert (tmp_path / 'maestro_tradeoff.png').stat().st_size > 0
