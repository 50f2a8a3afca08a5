"""`config.plugins.prune` end to end on digits: SNIP at initialisation reaches the exact sparsity
in the saved checkpoint; gradual channel pruning's cropped model is the masked model; an
interrupted and resumed run equals the uninterrupted one (the masks are optimizer state);
bad arguments are config errors before training."""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
from jaxlab.core import metrics as metrics_lib
from jaxlab.core.config import base_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.train import init_and_step_rngs, train_and_evaluate
from jaxlab.tasks.classification import ClassificationTask
from jaxlab.vision import vision_config
from tests.conftest import finalized_steps

HALF = 12  # the interrupted run stops here; the full run is 2 * HALF steps
# Gradual channel pruning with events at 4, 8, 12, 16, 20: on both sides of the interruption.
CHANNEL = {
  'scorer': 'magnitude',
  'granularity': 'channel',
  'schedule': 'gradual',
  'sparsity': 0.5,
  'start': 4,
  'end': 20,
  'every': 4,
}
SNIP = {'scorer': 'snip', 'granularity': 'unstructured', 'sparsity': 0.8}


def _config(prune: dict, model: ml_collections.ConfigDict, steps: int = 2 * HALF):
  c = base_config()
  c.task.name = 'classification'
  c.data.source = 'digits'
  c.data.batch_size = 32
  c.data.eval_batches = 100  # the whole 90-image test split
  c.model = model
  c.optim.lr = 3e-2
  c.optim.warmup_steps = 2
  c.optim.schedule = 'constant'  # so a HALF-step run is the first half of the full run
  c.train.steps = steps
  c.train.log_every = 4
  c.train.eval_every = 1000
  c.train.progress = False
  c.checkpoint.every = 1000  # only the final save of each invocation
  c.checkpoint.async_save = False
  c.metrics.tensorboard = False
  c.plugins.prune = ml_collections.ConfigDict(prune)
  return c


MLP = vision_config('mlp', hidden=(16, 16))
VGG = vision_config('vgg', channels=(8, 8), pool_after=(0,))


def _load_state(workdir: pathlib.Path) -> dict:
  step = finalized_steps(workdir)[-1]
  restored = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')
  return jax.tree.map(np.asarray, restored)


def _masks(state: dict) -> dict:
  """The masks inside the saved optimizer state (a MaskedState saved as a plain tree)."""
  found = []

  def visit(node):
    if isinstance(node, dict):
      if 'masks' in node and 'param_steps' in node:
        found.append(node['masks'])
      for v in node.values():
        visit(v)
    elif isinstance(node, list | tuple):
      for v in node:
        visit(v)

  visit(state['opt_state'])
  (masks,) = found
  return masks


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope='module')
def snip_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('snip')
  return workdir, train_and_evaluate(_config(SNIP, MLP, steps=HALF), workdir)


@pytest.fixture(scope='module')
def channel_run(tmp_path_factory):
  """The uninterrupted 2 * HALF-step gradual channel run: `(workdir, final metrics)`."""
  workdir = tmp_path_factory.mktemp('channel')
  return workdir, train_and_evaluate(_config(CHANNEL, VGG), workdir)


def test_snip_at_init_reaches_the_exact_sparsity(snip_run):
  workdir, final = snip_run
  state = _load_state(workdir)
  params, masks = _leaves(state['params']), _leaves(_masks(state))
  total = sum(p.size for p in params)
  zeros = sum(int((p == 0).sum()) for p in params)
  assert final['sparsity/total_params'] == total == final['params/count']
  assert final['sparsity/nonzero_params'] == total - zeros
  assert final['sparsity/final_fraction'] == pytest.approx(zeros / total, abs=1e-12)
  # Every masked entry is zero; the masks cover 80% of the kernels and none of the biases.
  for p, m in zip(params, masks, strict=True):
    assert np.all(p[~m] == 0.0)
  layers, layer_masks = state['params'], _masks(state)
  n = sum(v['kernel'].size for v in layers.values())
  masked = sum(int((~m).sum()) for m in masks)
  assert sum(int((~v['kernel']).sum()) for v in layer_masks.values()) == round(0.8 * n) == masked
  assert all(v['bias'].all() for v in layer_masks.values())
  for name, v in layers.items():
    # No kept kernel entry is zero; a zero bias belongs to a unit whose inputs were all
    # pruned (its pre-activation is 0 and ReLU passes it no gradient), so it never moves.
    np.testing.assert_array_equal(v['kernel'] == 0, ~layer_masks[name]['kernel'])
    dead = (~layer_masks[name]['kernel']).all(axis=0)
    assert np.all(dead[v['bias'] == 0]), name
  # Pruned at step 0: every step counted the same unmasked parameters.
  assert final['sparsity/avg_params'] == pytest.approx(total - masked, rel=1e-7)
  assert final['flops/sparse'] < 0.3 * final['flops/dense']
  assert 'crop/params' not in final  # no physical crop for unstructured sparsity


def test_snip_scored_the_initial_weights_on_the_first_batch(snip_run):
  # Recomputed here: |w * dL/dw| of the weights the run started from, on its first batch.
  workdir, _ = snip_run
  config = _config(SNIP, MLP, steps=HALF)
  task = ClassificationTask(config)
  init_rng, _ = init_and_step_rngs(config.seed)
  params = jax.jit(task.init_params)(init_rng)
  batch = next(task.train_iterator(config.seed, 0, 1))

  def loss(p):
    logits = task.model.apply({'params': p}, batch['inputs'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean()

  grads = jax.jit(jax.grad(loss))(params)
  layer_masks = _masks(_load_state(workdir))
  pruned, kept = [], []
  for name, m in layer_masks.items():
    score = np.abs(np.asarray(grads[name]['kernel']) * np.asarray(params[name]['kernel']))
    pruned.append(score[~m['kernel']])
    kept.append(score[m['kernel']])
  pruned, kept = np.concatenate(pruned), np.concatenate(kept)
  assert pruned.size == round(0.8 * (pruned.size + kept.size))
  # One global threshold (up to float rounding between the two gradient computations).
  assert pruned.max() <= kept.min() * (1 + 1e-5)


def test_channel_pruning_crops_to_the_masked_model(channel_run):
  workdir, final = channel_run
  assert final['crop/max_logit_diff'] <= 1e-5
  assert final['crop/params'] == final['sparsity/nonzero_params']
  assert final['crop/eval_accuracy'] == pytest.approx(final['eval/accuracy'], abs=1e-6)
  assert final['crop/flops'] == pytest.approx(final['flops/sparse'], rel=1e-9)
  assert final['crop/groups_total'] == 16 and final['crop/groups_kept'] == 8
  state = _load_state(workdir)
  params = _leaves(state['params'])
  assert final['sparsity/nonzero_params'] == sum(int(np.count_nonzero(p)) for p in params)
  assert final['crop/params'] < final['sparsity/total_params']
  # The logged per-step parameter counts (means over equal windows) average to avg_params.
  records = metrics_lib.read_jsonl(workdir / 'metrics.jsonl')
  logged = [r['sparsity/params'] for r in records if 'sparsity/params' in r]
  assert len(logged) == 2 * HALF // 4
  assert final['sparsity/avg_params'] == pytest.approx(np.mean(logged), rel=1e-6)
  assert logged[0] > logged[-1]  # the pruning was gradual


def test_interrupted_and_resumed_equals_uninterrupted(channel_run, tmp_path):
  workdir = tmp_path / 'resumed'
  train_and_evaluate(_config(CHANNEL, VGG, steps=HALF), workdir)
  assert finalized_steps(workdir) == [HALF]
  half = _masks(_load_state(workdir))
  final = train_and_evaluate(_config(CHANNEL, VGG), workdir)
  assert final['train/steps'] == 2 * HALF

  want, got = _load_state(channel_run[0]), _load_state(workdir)
  assert int(got['step']) == 2 * HALF
  want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, a), b in zip(want_leaves, jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # The run was cut between pruning events: the second half pruned further from the saved masks.
  n_half = sum(int(m.sum()) for m in _leaves(half))
  n_end = sum(int(m.sum()) for m in _leaves(_masks(got)))
  assert n_end < n_half < sum(m.size for m in _leaves(half))
  for a, b in zip(_leaves(half), _leaves(_masks(got)), strict=True):
    assert np.all(b <= a)
  for key in ('crop/params', 'sparsity/nonzero_params', 'eval/accuracy', 'sparsity/avg_params'):
    assert final[key] == channel_run[1][key], key


@pytest.mark.parametrize(
  'change, match',
  [
    ({'scorer': 'hessian'}, r"plugins\.prune: .*expected one of .*'snip'.*got 'hessian'"),
    ({'granularity': 'row'}, r"plugins\.prune: .*granularity: expected one of .*got 'row'"),
  ],
)
def test_bad_arguments_are_config_errors_before_training(tmp_path, change, match):
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(_config({**SNIP, **change}, MLP), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize(('when', 'first_pruned'), [('init', 1), ('after', 15)])
def test_when_sets_the_pruning_step_from_the_run_length(tmp_path, when, first_pruned):
  """'after' prunes at 0.7 T (the update of step 14, logged as step 15); 'init' before step 1."""
  prune = {'scorer': 'magnitude', 'granularity': 'unstructured', 'sparsity': 0.5, 'when': when}
  config = _config(prune, MLP, steps=20)
  config.train.log_every = 1
  train_and_evaluate(config, tmp_path / 'run')
  records = metrics_lib.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  fraction = {r['step']: r['sparsity/fraction'] for r in records if 'sparsity/fraction' in r}
  pruned = [s for s, f in sorted(fraction.items()) if f > 0]
  assert pruned[0] == first_pruned and pruned == list(range(first_pruned, 21))


def test_bad_when_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match=r"when: expected one of .*got 'later'"):
    train_and_evaluate(_config({**SNIP, 'when': 'later'}, MLP), tmp_path / 'run')
