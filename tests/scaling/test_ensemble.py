"""jaxlab.scaling.ensemble: combinations against numpy references, and ensembles of real tiny
runs: one member reproduces its own eval loss, order does not matter, Jensen's bound holds."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from scipy.special import log_softmax

from jaxlab.core.config import config_from_json
from jaxlab.core.task import build_task
from jaxlab.scaling import ensemble as ens
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def run(tiny_runs):
  """One trained 6-step run (the members below add freshly initialised models)."""
  return tiny_runs[0]


@pytest.fixture(scope='module')
def members(run):
  """`(configs, params)`: the trained run, two initialisations of its model (seeds 1, 2) and an
  initialisation of a wider model, in that order."""
  config, params = ens.load_run(run)
  wide = tiny_config('--config.model.width=48', '--config.model.heads=3')
  configs, all_params = [config], [params]
  for c, seed in [(config, 1), (config, 2), (wide, 3)]:
    configs.append(c)
    all_params.append(nn.meta.unbox(jax.jit(build_task(c).init_params)(jax.random.key(seed))))
  return configs, all_params


@pytest.fixture(scope='module')
def own_losses(members, batches):
  """Each of the first three members' eval loss alone."""
  configs, params = members
  return [ens.evaluate(ens.Ensemble([configs[i]], [params[i]]), batches)[0] for i in range(3)]


@pytest.fixture(scope='module')
def batches(run):
  return build_task(config_from_json(run / 'config.json')).eval_batches(0, 1)


@pytest.mark.parametrize('combine', ens.COMBINES)
def test_combine_matches_numpy(combine):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 2, 5, 7)).astype(np.float32) * 3
  got = np.asarray(ens.combine_logits(z, combine, temperature=2.0))
  if combine == 'logits':
    want = (z / 2.0).mean(0)
  else:
    want = np.log(np.exp(log_softmax(z / 2.0, axis=-1)).mean(0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Each prefix of the members equals the combination of that prefix.
  prefixes = np.asarray(ens.prefix_logits(z, combine))
  for k in range(1, 4):
    want_k = np.asarray(ens.combine_logits(z[:k], combine))
    np.testing.assert_allclose(
      log_softmax(prefixes[k - 1], axis=-1), log_softmax(want_k, axis=-1), atol=1e-5
    )


def test_bad_combine_is_a_clear_error():
  with pytest.raises(ValueError, match='combine: expected one of'):
    ens.combine_logits(np.zeros((1, 2, 3)), 'median')


def test_token_loss_is_the_masked_mean_cross_entropy():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(2, 4, 6)).astype(np.float32)
  y = rng.integers(0, 6, size=(2, 4))
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
  ce = -np.take_along_axis(log_softmax(z, axis=-1), y[..., None], -1)[..., 0]
  np.testing.assert_allclose(ens.token_loss(z, y, mask), (ce * mask).sum() / 6, rtol=1e-6)


def test_one_member_reproduces_its_own_eval_loss(run, batches):
  own = json.loads((run / 'final_metrics.json').read_text())['eval/loss']
  losses = ens.evaluate(ens.Ensemble.from_runs([run]), batches)
  assert losses.shape == (1,)
  np.testing.assert_allclose(losses[0], own, rtol=1e-5)


@pytest.mark.parametrize('combine', ens.COMBINES)
def test_order_does_not_matter_and_jensen_bounds_the_loss(members, batches, own_losses, combine):
  configs, params = (x[:3] for x in members)
  forward = ens.evaluate(ens.Ensemble(configs, params), batches, combine)
  backward = ens.evaluate(ens.Ensemble(configs[::-1], params[::-1]), batches, combine)
  np.testing.assert_allclose(forward[-1], backward[-1], rtol=1e-6)
  # Per token the ensemble's log loss is at most the members' mean (convexity of LSE / -log),
  # so it holds for the batch means too; strict here as the members differ.
  assert forward[-1] < np.mean(own_losses)
  assert forward[1] < np.mean(own_losses[:2])


def test_members_of_different_widths_keep_their_order(members, batches):
  configs, params = members
  order = [0, 3, 1]  # groups: width 32 (members 0 and 2 here) and width 48 (member 1)
  together = ens.Ensemble([configs[i] for i in order], [params[i] for i in order])
  got = np.asarray(jax.jit(together.member_logits)(batches[0]))
  for k, i in enumerate(order):
    alone = ens.Ensemble([configs[i]], [params[i]]).member_logits
    np.testing.assert_allclose(got[k], np.asarray(jax.jit(alone)(batches[0]))[0], atol=1e-5)


def test_an_unfinished_run_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='expected a finished run'):
    ens.load_run(tmp_path)
