"""Series-informed activation, augmented shortcut (jaxlab.nn.pangu) and the feature-collapse
diagnostics (jaxlab.nn.diagnostics), against direct formulas and the baseline block."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core.errors import ConfigError
from jaxlab.nn.diagnostics import collapse_metrics, diversity, effective_rank
from jaxlab.nn.normalization import RMSNorm
from jaxlab.nn.pangu import AugmentedBlock, SeriesActivation, series_activation
from jaxlab.nn.transformer import (
  MLP,
  AttentionInputs,
  CausalSelfAttention,
  PreNormBlock,
  TransformerConfig,
  TransformerLM,
)

X = np.linspace(-3.0, 3.0, 30, dtype=np.float32).reshape(3, 10)


def make_cfg(**kw) -> TransformerConfig:
  fields = dict(vocab_size=64, width=16, depth=2, heads=2, mlp_dim=32, max_len=8, aug_rank=4)
  return TransformerConfig(**{**fields, **kw})


@pytest.mark.parametrize('base', ['gelu', 'relu'])
def test_one_term_with_unit_scale_is_the_base_activation(base):
  fn = {'gelu': jax.nn.gelu, 'relu': jax.nn.relu}[base]
  got = series_activation(X, base, jnp.ones(1), jnp.zeros(1))
  np.testing.assert_array_equal(got, fn(X))
  module = SeriesActivation(base, terms=1)  # a = 1/1, b = 0 at initialisation
  params = module.init(jax.random.key(0), X)
  np.testing.assert_array_equal(module.apply(params, X), fn(X))


def test_series_is_the_weighted_sum_of_shifted_copies():
  a, b = np.array([0.6, -0.2, 1.5]), np.array([-0.5, 0.1, 0.7])
  want = sum(a[i] * np.maximum(X + b[i], 0.0) for i in range(3))
  np.testing.assert_allclose(series_activation(X, 'relu', a, b), want, rtol=1e-6, atol=1e-6)
  params = SeriesActivation('relu', terms=2).init(jax.random.key(0), X)['params']
  np.testing.assert_allclose(params['a'], [0.5, 0.5])
  np.testing.assert_allclose(params['b'], [-0.5, 0.5])  # distinct shifts: the copies differ


def block_params(block_cls, cfg, x, positions):
  init = jax.jit(block_cls(cfg).init, static_argnums=3)
  return nn.unbox(init(jax.random.key(0), x, positions, True)['params'])


def test_zero_initialised_augmented_block_is_the_prenorm_block_exactly():
  cfg = make_cfg(block='augmented', aug_shortcuts=2)
  x = jax.random.normal(jax.random.key(1), (2, 8, 16))
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
  params = block_params(AugmentedBlock, cfg, x, positions)
  base = {k: v for k, v in params.items() if k != 'shortcut'}
  assert set(params['shortcut']) == {'down', 'up'}
  assert params['shortcut']['down'].shape == (2, 16, 4)
  assert not np.any(params['shortcut']['up'])
  up = jax.random.normal(jax.random.key(2), params['shortcut']['up'].shape)
  trained = {**params, 'shortcut': {'down': params['shortcut']['down'], 'up': up}}

  @jax.jit
  def outputs(x):
    baseline = PreNormBlock(cfg).apply({'params': base}, x, positions, True)
    at_init = AugmentedBlock(cfg).apply({'params': params}, x, positions, True)
    # A trained branch adds Σ_i gelu(z Θ_i) Θ'_i on the normalised input z. Reference from the
    # block's parts: x1 = x + attention(z) + branch(z), then x1 + ffn(norm(x1)).
    z = RMSNorm().apply({'params': params['mixer_norm']}, x)
    attention = CausalSelfAttention(cfg).apply(
      {'params': params['attention']}, z, positions, deterministic=True
    )
    branch = sum(jax.nn.gelu(z @ params['shortcut']['down'][i]) @ up[i] for i in range(2))
    x1 = x + attention + branch
    ffn_in = RMSNorm().apply({'params': params['ffn_norm']}, x1)
    want = x1 + MLP(cfg).apply({'params': params['ffn']}, ffn_in, deterministic=True)
    got = AugmentedBlock(cfg).apply({'params': trained}, x, positions, True)
    return baseline, at_init, want, got

  baseline, at_init, want, got = outputs(x)
  np.testing.assert_array_equal(at_init, baseline)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lm_with_both_parts_counts_exactly_the_added_parameters():
  tokens = jnp.zeros((1, 8), jnp.int32)

  def n_params(**kw):
    shapes = jax.eval_shape(TransformerLM(make_cfg(**kw)).init, jax.random.key(0), tokens)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes['params'])))

  base = n_params()
  both = n_params(block='augmented', activation='series_gelu', aug_shortcuts=1)
  # per layer: one branch of 2·d·r weights, and n=2 scales + 2 shifts
  assert both - base == 2 * (2 * 16 * 4 + 4)


@pytest.mark.parametrize('field, value', [('aug_rank', 0), ('aug_shortcuts', -1)])
def test_bad_shortcut_fields_are_config_errors(field, value):
  with pytest.raises(ConfigError, match=f'model.{field}'):
    make_cfg(**{field: value})


def test_effective_rank_and_diversity_closed_forms():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(40, 6)))  # 6 equal singular values
  assert float(effective_rank(q)) == pytest.approx(6.0, rel=1e-5)
  rank_one = np.outer(rng.normal(size=40), rng.normal(size=6))
  assert float(effective_rank(rank_one)) == pytest.approx(1.0, abs=1e-3)
  same_rows = np.tile(rng.normal(size=(1, 6)), (40, 1))
  assert float(diversity(same_rows)) == pytest.approx(0.0, abs=1e-6)
  centred = q - q.mean(0)
  assert float(diversity(centred)) == pytest.approx(1.0, rel=1e-6)


def test_collapse_metrics_cover_embedding_and_every_block():
  cfg = make_cfg(depth=3)
  model = TransformerLM(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 64)
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  m = collapse_metrics(model, variables, tokens)
  assert sorted(k for k in m if k.startswith('collapse/erank_') and k[15:].isdigit()) == [
    f'collapse/erank_{i}' for i in range(4)
  ]
  emb = nn.unbox(variables['params'])['embed']['embedding'][tokens].reshape(-1, 16)
  assert m['collapse/erank_0'] == pytest.approx(float(effective_rank(emb)), rel=1e-6)
  assert m['collapse/erank_last'] == m['collapse/erank_3']
  assert all(1.0 <= m[f'collapse/erank_{i}'] <= 16.0 for i in range(4))


def test_augmented_block_takes_the_inference_inputs_like_the_prenorm_block():
  cfg = make_cfg(block='augmented', activation='series_gelu', depth=1)
  model = TransformerLM(cfg)
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 64)
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))

  @jax.jit
  def both(tokens):
    variables = model.init(jax.random.key(0), tokens)
    plain = model.apply(variables, tokens)
    return plain, model.apply(variables, tokens, attn=AttentionInputs(positions))

  plain, with_attn = both(tokens)
  np.testing.assert_allclose(with_attn, plain, rtol=1e-6, atol=1e-6)
