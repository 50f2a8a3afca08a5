"""LoRA-guided structured pruning: the LoRA forward equals the merged model, masked units equal
the cropped model, the criterion tracks the full-gradient importance without ever forming a
frozen kernel's gradient, and the schedule/allocation counts are exact."""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import spearmanr

from jaxlab.core.plugins import flat_paths
from jaxlab.core.task import build_task
from jaxlab.nn.kernels import as_matrix
from jaxlab.sparsity import lora_prune, lowrank
from tests.conftest import tiny_config

CFG = lowrank.LoraConfig(rank=8, alpha=16.0)


@pytest.fixture(scope='module')
def lm():
  # Width 32: 4 heads of 8, 64 MLP channels. Sequences of 16, so no attention-mask value is
  # shaped like a 32x32 kernel (the jaxpr test looks for kernel-shaped values).
  config = tiny_config('--config.model.heads=4', '--config.data.seq_len=16')
  task = build_task(config)
  batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(0, 0, 1)).items()}
  return config, task, batch


def _setup(task, seed):
  params = nn.unbox(task.init_params(jax.random.key(seed)))
  families = lora_prune.transformer_unit_families(params)
  adapters = lowrank.init_adapters(jax.random.key(seed + 10), params, CFG)
  noise = jax.random.key(seed + 20)
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(noise, x.shape), adapters)
  keeps = {f.name: jnp.ones(f.size, bool) for f in families}
  return params, families, adapters, keeps


def test_unit_families_of_the_tiny_lm(lm):
  _, task, _ = lm
  params, families, _, _ = _setup(task, 0)
  assert [(f.name, f.size) for f in families] == [('block_0/heads', 4), ('block_0/mlp', 64)]
  heads = families[0]
  assert [m.path.split('/')[-2] for m in heads.members] == ['query', 'key', 'value', 'out']


def test_lora_forward_equals_the_merged_model(lm):
  _, task, batch = lm
  params, families, adapters, keeps = _setup(task, 0)
  rng = jax.random.key(0)
  got = lora_prune.lora_loss(task, params, adapters, keeps, families, CFG, batch, rng, train=False)
  want, _ = task.loss(lowrank.merge(params, adapters, CFG), batch, rng, train=False)
  assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_masked_units_equal_the_cropped_model(lm):
  config, task, batch = lm
  params, families, adapters, _ = _setup(task, 1)
  keeps = {
    'block_0/heads': jnp.array([True, False, True, False]),
    'block_0/mlp': jnp.arange(64) % 3 != 0,
  }
  rng = jax.random.key(0)
  masked = lora_prune.lora_loss(
    task, params, adapters, keeps, families, CFG, batch, rng, train=False
  )
  small, fields = lora_prune.crop_units(params, adapters, CFG, families, keeps)
  assert fields == {'heads': 2, 'mlp_dim': 42, 'head_width': 8}
  small_config = copy.deepcopy(config)
  small_config.model.update(fields)
  cropped, _ = build_task(small_config).loss(small, batch, rng, train=False)
  assert float(cropped) == pytest.approx(float(masked), abs=1e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_lora_criterion_tracks_the_full_gradient_importance(lm, seed):
  """Spearman's ρ between the LoRA-guided and the full-gradient (Taylor) importance of the 64
  MLP channels. Threshold 0.5: random scores give ρ ≈ 0 with sd 1/√63 ≈ 0.13, so 0.5 is ~4 sd
  above chance (measured: 0.66–0.84 over 5 seeds)."""
  _, task, batch = lm
  params, families, adapters, keeps = _setup(task, seed)

  def loss(p, a):
    return lora_prune.lora_loss(task, p, a, keeps, families, CFG, batch, jax.random.key(0))

  g_params, g_adapters = jax.grad(loss, argnums=(0, 1))(params, adapters)
  lora = lora_prune.unit_importance(families, params, adapters, CFG, 'lora', g_adapters)
  taylor = lora_prune.unit_importance(families, params, adapters, CFG, 'taylor', None, g_params)
  assert spearmanr(lora['block_0/mlp'], taylor['block_0/mlp'])[0] > 0.5


def _kernel_shaped_values(jaxpr, kernel_shapes) -> int:
  """How many equations produce a value shaped like a frozen kernel, nested jaxprs included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += sum(tuple(v.aval.shape) in kernel_shapes for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _kernel_shaped_values(sub, kernel_shapes)
  return count


def _kernel_shapes(params, adapters) -> set:
  flat = flat_paths(params)
  shapes = set()
  for name in adapters:
    shapes.add(tuple(flat[name].shape))
    shapes.add(tuple(as_matrix(name, flat[name])[0].shape))
  return shapes


def test_lora_gradient_never_forms_a_frozen_kernel_gradient(lm):
  """The LoRA backward pass has no value shaped like any adapted kernel (nor its `[in, out]`
  view); the full-gradient (Taylor) one has them: its `∂L/∂W`."""
  _, task, batch = lm
  params, families, adapters, keeps = _setup(task, 0)
  shapes = _kernel_shapes(params, adapters)

  def loss(p, a):
    return lora_prune.lora_loss(task, p, a, keeps, families, CFG, batch, jax.random.key(0))

  lora = jax.make_jaxpr(jax.grad(loss, argnums=1))(params, adapters).jaxpr
  taylor = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, adapters).jaxpr
  assert _kernel_shaped_values(lora, shapes) == 0
  assert _kernel_shaped_values(taylor, shapes) > 0


def test_lora_step_needs_less_memory_when_weights_dominate():
  """XLA's memory analysis of the compiled steps on a model whose weights outweigh its
  activations (width 128, 2 sequences of 8 bytes), the regime of LLM fine-tuning."""
  config = tiny_config(
    '--config.model.width=128',
    '--config.model.heads=4',
    '--config.model.mlp_dim=512',
    '--config.data.batch_size=2',
    '--config.data.seq_len=8',
  )
  task = build_task(config)
  batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(0, 0, 1)).items()}
  params, families, adapters, keeps = _setup(task, 0)
  tx = optax.adam(1e-3)
  args = (params, adapters, tx.init(adapters), keeps, batch, jax.random.key(0))
  memory = {
    c: sum(
      lora_prune.step_memory_bytes(lora_prune.make_step(task, families, CFG, c, tx), *args).values()
    )
    for c in ('lora', 'taylor')
  }
  assert memory['lora'] < memory['taylor']


def test_schedule_and_unit_pruning_counts():
  assert lora_prune.cubic_sparsity(5, 100, 0.5) == 0.0  # initial warm-up
  assert lora_prune.cubic_sparsity(71, 100, 0.5) == 0.5  # final warm-up
  values = [lora_prune.cubic_sparsity(t, 100, 0.5) for t in range(101)]
  assert all(b >= a for a, b in zip(values, values[1:], strict=False))
  importance = {'a': jnp.arange(10.0), 'b': -jnp.arange(4.0)}
  keeps = {'a': jnp.ones(10, bool), 'b': jnp.ones(4, bool)}
  keeps = lora_prune.prune_units(importance, keeps, 0.3)
  np.testing.assert_array_equal(keeps['a'], np.arange(10) >= 3)
  np.testing.assert_array_equal(keeps['b'], [True, True, True, False])  # round(1.2) = 1
  # Pruned units stay pruned even when their importance recovers; at least one survives.
  keeps = lora_prune.prune_units({'a': -jnp.arange(10.0), 'b': jnp.zeros(4)}, keeps, 1.0)
  assert int(keeps['a'].sum()) == 1 and not bool(keeps['a'][:3].any())
  assert int(keeps['b'].sum()) == 1
