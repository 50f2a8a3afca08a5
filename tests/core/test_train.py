"""The train loop: it learns, it is deterministic, and methods plug in without editing it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import metrics as metrics_lib
from jaxlab.core.config import load_config
from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.core.train import train_and_evaluate
from tests.conftest import LM, load_params, tiny_config


def _leaves_equal(a, b) -> bool:
  return all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_tiny_lm_learns_english(tmp_path):
  """`lm.py:tiny` as shipped: validation bits/byte far below the 8.0 of a uniform byte model."""
  config = load_config(f'{LM}:tiny', ['--config.train.progress=False'])
  final = train_and_evaluate(config, tmp_path)
  assert final['eval/bits_per_byte'] < 4.0, final
  report = (tmp_path / 'report.md').read_text()
  assert '**held**' in report and 'eval/bits_per_byte' in report


def test_same_seed_same_params_different_seed_different(tmp_path):
  a, b, c = (tmp_path / n for n in 'abc')
  train_and_evaluate(tiny_config(), a)
  train_and_evaluate(tiny_config(), b)
  train_and_evaluate(tiny_config('--config.seed=1'), c)
  assert _leaves_equal(load_params(a), load_params(b))
  assert not _leaves_equal(load_params(a), load_params(c))


def test_grad_accumulation_equals_one_big_batch(tmp_path):
  """Mean of micro-batch gradients == gradient of the batch mean (equal micro-batch sizes)."""
  one, acc = tmp_path / 'one', tmp_path / 'acc'
  train_and_evaluate(tiny_config('--config.train.steps=3'), one)
  train_and_evaluate(
    tiny_config('--config.train.steps=3', '--config.optim.grad_accum_steps=4'), acc
  )
  for x, y in zip(
    jax.tree.leaves(load_params(one)), jax.tree.leaves(load_params(acc)), strict=True
  ):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_freeze_plugin_keeps_matching_params_exactly(tmp_path):
  """Same init (same seed), 2 vs 10 steps: frozen leaves are identical, the others moved."""
  runs = {}
  for steps in (2, 10):
    config = tiny_config(f'--config.train.steps={steps}')
    config.plugins.unlock()
    config.plugins.freeze = {'pattern': r'embed/.*|block_0/ffn/.*'}
    train_and_evaluate(config, tmp_path / str(steps))
    runs[steps] = load_params(tmp_path / str(steps))
  short, long = runs[2], runs[10]
  np.testing.assert_array_equal(short['embed']['embedding'], long['embed']['embedding'])
  np.testing.assert_array_equal(
    short['block_0']['ffn']['wi']['kernel'], long['block_0']['ffn']['wi']['kernel']
  )
  assert not np.allclose(
    short['block_0']['attention']['query']['kernel'],
    long['block_0']['attention']['query']['kernel'],
  )


def test_z_loss_plugin_adds_its_term(tmp_path):
  config = tiny_config('--config.train.steps=2')
  config.plugins.unlock()
  config.plugins.z_loss = {'coeff': 1e-2}
  train_and_evaluate(config, tmp_path)
  first = metrics_lib.read_jsonl(tmp_path / 'metrics.jsonl')[0]
  # At init logits are small, so log Z ~ log(vocab=259) and the term ~ coeff * log(259)^2.
  assert first['train/z_loss_loss'] == pytest.approx(1e-2 * np.log(259) ** 2, rel=0.05)
  assert first['train/loss'] > first['train/z_loss_loss']


@PLUGINS.register('test_report_hook')
def _report_hook_plugin() -> Plugin:
  """Adds a final metric, then a report section built from it."""

  def report(workdir, final):
    return ReportPart([f'## Hook\n\nsteps twice: {2 * final["train/steps"]}'], [])

  return Plugin(finalize=lambda task, state, batches: {'hook/value': 7.0}, report=report)


def test_plugin_report_hook_adds_a_section(tmp_path):
  config = tiny_config('--config.train.steps=2')
  config.plugins.unlock()
  config.plugins.test_report_hook = {}
  final = train_and_evaluate(config, tmp_path)
  assert final['hook/value'] == 7.0
  report = (tmp_path / 'report.md').read_text()
  assert '## Hook\n\nsteps twice: 4' in report
  assert report.index('## Hook') < report.index('## Final metrics')


@PLUGINS.register('test_nan_grad_in_final_norm')
def _nan_grad_plugin() -> Plugin:
  """A finite loss term whose gradient is NaN for `final_norm/scale` only (0 * d sqrt(0))."""

  def term(params, batch, outputs):
    return 0.0 * jnp.sum(jnp.sqrt(params['final_norm']['scale'] - 1.0))

  return Plugin(loss_term=term)


def test_nonfinite_guard_names_step_and_leaf(tmp_path):
  config = tiny_config()
  config.plugins.unlock()
  config.plugins.test_nan_grad_in_final_norm = {}
  with pytest.raises(metrics_lib.NonFiniteError, match='step 1') as e:
    train_and_evaluate(config, tmp_path)
  assert e.value.leaf == 'final_norm/scale'
  assert not any(p.name.isdigit() for p in (tmp_path / 'checkpoints').iterdir())


def test_synthetic_task_trains(tmp_path):
  config = tiny_config(
    '--config.data.source=synthetic',
    '--config.data.synthetic=copy',
    '--config.data.vocab_size=16',
    '--config.train.steps=4',
  )
  final = train_and_evaluate(config, tmp_path)
  assert np.isfinite(final['eval/loss']) and 0.0 <= final['eval/accuracy'] <= 1.0
  assert 'eval/bits_per_byte' not in final  # not byte-level text


def test_user_text_and_token_files(tmp_path):
  text = tmp_path / 'book.txt'
  text.write_text('It was the best of times, it was the worst of times. ' * 200)
  final = train_and_evaluate(
    tiny_config(
      '--config.data.source=text', f'--config.data.path={text}', '--config.train.steps=2'
    ),
    tmp_path / 'text',
  )
  assert np.isfinite(final['eval/bits_per_byte'])
  tokens = tmp_path / 'tokens.npy'
  np.save(tokens, np.random.default_rng(0).integers(0, 1000, 20_000).astype(np.uint16))
  final = train_and_evaluate(
    tiny_config(
      '--config.data.source=tokens',
      f'--config.data.path={tokens}',
      '--config.data.vocab_size=1000',
      '--config.train.steps=2',
    ),
    tmp_path / 'tok',
  )
  assert np.isfinite(final['eval/loss'])
