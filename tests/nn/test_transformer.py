"""Properties of jaxlab.nn.transformer that fail when the model is wrong, not just when it changes.

Each test checks the model against something written independently here: a closed form, a naive
reference implementation, or an invariant (causality, relative positions, rematerialisation).
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab.core.config import DEFAULT_RULES
from jaxlab.core.errors import ConfigError
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.normalization import LayerNorm, RMSNorm
from jaxlab.nn.rope import apply_rope
from jaxlab.nn.transformer import (
  GLU,
  MLP,
  CausalSelfAttention,
  TransformerConfig,
  TransformerLM,
  build_transformer,
)

VOCAB = 50  # padded to 64 below: 14 padding ids
SEQ = 12


def make_cfg(**overrides) -> TransformerConfig:
  fields = dict(
    vocab_size=VOCAB, width=32, depth=2, heads=4, mlp_dim=64, max_len=SEQ, vocab_multiple=64
  )
  return TransformerConfig(**{**fields, **overrides})


def random_tokens(seed: int, batch: int = 2, length: int = SEQ) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def init_lm(cfg: TransformerConfig, seed: int = 0) -> tuple[TransformerLM, dict]:
  model = TransformerLM(cfg)
  params = model.init(jax.random.key(seed), jnp.zeros((1, SEQ), jnp.int32))['params']
  return model, nn.unbox(params)


@pytest.fixture(scope='module')
def lm() -> tuple[TransformerLM, dict]:
  return init_lm(make_cfg())


# ----------------------------------------------------------------------------- whole model


def test_causal_changing_token_t_changes_only_positions_from_t(lm):
  model, params = lm
  apply = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
  tokens = random_tokens(0)
  base = np.asarray(apply(tokens))
  for t in (0, 5, SEQ - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    logits = np.asarray(apply(changed))
    np.testing.assert_array_equal(logits[:, :t], base[:, :t], err_msg=f'position < {t} moved')
    real = slice(0, VOCAB)
    assert np.abs(logits[:, t:, real] - base[:, t:, real]).max() > 1e-4
    assert np.abs(logits[:, t, real] - base[:, t, real]).max() > 1e-4  # its own position too


def test_padded_vocab_logits_are_masked_so_softmax_matches_the_real_vocab(lm):
  model, params = lm
  assert model.cfg.padded_vocab_size == 64
  logits = model.apply({'params': params}, random_tokens(1))
  assert logits.shape == (2, SEQ, 64) and logits.dtype == jnp.float32
  assert jnp.all(logits[..., VOCAB:] <= -1e8)
  probs = jax.nn.softmax(logits, axis=-1)
  np.testing.assert_array_equal(probs[..., VOCAB:], 0.0)
  np.testing.assert_allclose(probs[..., :VOCAB], jax.nn.softmax(logits[..., :VOCAB]), atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
  cfg32, cfg16 = make_cfg(), make_cfg(dtype='bfloat16')
  model32, params = init_lm(cfg32)
  model16, params16 = init_lm(cfg16)
  for p32, p16 in zip(jax.tree.leaves(params), jax.tree.leaves(params16), strict=True):
    assert p16.dtype == jnp.float32
    np.testing.assert_array_equal(p32, p16)  # same init: the compute dtype does not enter it
  tokens = random_tokens(2)
  ref = np.asarray(model32.apply({'params': params}, tokens))[..., :VOCAB]
  low = np.asarray(model16.apply({'params': params}, tokens))
  assert low.dtype == np.float32  # logits are returned in float32 whatever the compute dtype
  low = low[..., :VOCAB]
  # bfloat16 keeps 8 significant bits: each rounding errs by at most 2^-9 ~ 0.2%, and a
  # 2-block model rounds a few dozen times along any path, so ~1-2% relative error is
  # expected; 5% leaves room while still catching a wrong cast (which gives O(1) errors).
  rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
  assert 0 < rel < 5e-2, rel  # > 0: the bf16 model really computed in bf16


def _loss(model: TransformerLM, params: dict, tokens: jax.Array, rng: jax.Array, train: bool):
  logits = model.apply(
    {'params': params}, tokens[:, :-1], deterministic=not train, rngs={'dropout': rng}
  )
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_remat_gives_the_same_loss_and_gradients(dropout):
  plain, params = init_lm(make_cfg(dropout=dropout))
  remat, params_remat = init_lm(make_cfg(dropout=dropout, remat=True))
  assert jax.tree.structure(params) == jax.tree.structure(params_remat)  # same names
  tokens = random_tokens(3, length=SEQ + 1)
  rng = jax.random.key(7)
  train = dropout > 0  # with dropout, the recomputed forward pass must redraw the same mask

  def loss_and_grads(model):
    fn = jax.value_and_grad(lambda p: _loss(model, p, tokens, rng, train))
    return jax.jit(fn)(params)

  loss, grads = loss_and_grads(plain)
  loss_r, grads_r = loss_and_grads(remat)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r), strict=True):
    # Recomputation may fuse differently: allow float32 rounding, relative to the leaf's scale.
    np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-5 * float(jnp.abs(g).max()))


def test_every_parameter_carries_logical_axis_names():
  specs = {}
  for kw in (dict(), dict(ffn='glu', norm='layernorm', tie_embeddings=False)):
    model = TransformerLM(make_cfg(**kw))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed['params'], is_leaf=is_box)[0]:
      name = '/'.join(k.key for k in path)
      assert is_box(leaf), f'{name} has no logical axis names'
      assert len(leaf.names) == leaf.value.ndim and None not in leaf.names, (name, leaf.names)
      specs[name] = tuple(leaf.names)
    # nn.get_partition_spec, as sharding uses it, sees the same names.
    for spec in jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: x is not None):
      assert any(axis is not None for axis in spec)
  ruled = {name for name, _ in DEFAULT_RULES}
  assert {axis for names in specs.values() for axis in names} <= ruled  # every name has a rule
  assert specs['embed/embedding'] == ('vocab', 'embed')
  assert specs['unembed/kernel'] == ('embed', 'vocab')
  assert specs['block_0/attention/query/kernel'] == ('embed', 'heads', 'kv')
  assert specs['block_0/attention/key/kernel'] == ('embed', 'heads', 'kv')
  assert specs['block_0/attention/out/kernel'] == ('heads', 'kv', 'embed')
  assert specs['block_1/ffn/wi/kernel'] == ('embed', 'mlp')
  assert specs['block_1/ffn/wi_gate/kernel'] == ('embed', 'mlp')
  assert specs['block_1/ffn/wo/kernel'] == ('mlp', 'embed')
  assert specs['block_0/mixer_norm/scale'] == ('embed',)
  assert specs['final_norm/bias'] == ('embed',)


# ----------------------------------------------------------------------------- RoPE


def test_rope_preserves_norms():
  x = jax.random.normal(jax.random.key(0), (2, 9, 3, 16))
  positions = jnp.broadcast_to(jnp.arange(100, 109), (2, 9))
  y = apply_rope(x, positions)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_position_zero_is_the_identity():
  x = jax.random.normal(jax.random.key(1), (2, 5, 3, 8))
  np.testing.assert_array_equal(apply_rope(x, jnp.zeros((2, 5), jnp.int32)), x)


def test_rope_rotates_pair_i_by_position_times_frequency_i():
  head_dim, base, pos = 8, 10000.0, 3
  half = head_dim // 2
  for i in range(half):
    x = jnp.zeros((1, 1, 1, head_dim)).at[..., i].set(1.0)  # e_i: the pair (x_i, x_{i+H/2})
    y = np.asarray(apply_rope(x, jnp.full((1, 1), pos), base))[0, 0, 0]
    angle = pos * base ** (-2 * i / head_dim)
    expected = np.zeros(head_dim)
    expected[i], expected[i + half] = math.cos(angle), math.sin(angle)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_rope_dot_product_depends_only_on_relative_offset():
  kq, kk = jax.random.split(jax.random.key(2))
  q = jax.random.normal(kq, (1, 1, 1, 16))
  k = jax.random.normal(kk, (1, 1, 1, 16))

  def score(m: int, n: int) -> float:
    rq = apply_rope(q, jnp.full((1, 1), m))
    rk = apply_rope(k, jnp.full((1, 1), n))
    return float(jnp.sum(rq * rk))

  for (m, n), shift in itertools.product([(0, 0), (3, 10), (10, 3), (7, 7)], [1, 17, 250]):
    assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=2e-4), (m, n, shift)
  assert abs(score(0, 5) - score(0, 0)) > 1e-2  # and it does depend on the offset


# ----------------------------------------------------------------------------- layers


def test_attention_matches_a_naive_reference():
  cfg = make_cfg()
  x = jax.random.normal(jax.random.key(0), (2, SEQ, cfg.width))
  positions = jnp.broadcast_to(jnp.arange(SEQ), (2, SEQ))
  attn = CausalSelfAttention(cfg)
  params = nn.unbox(attn.init(jax.random.key(1), x, positions, deterministic=True))['params']
  out = attn.apply({'params': params}, x, positions, deterministic=True)

  p = jax.tree.map(np.asarray, params)
  x64 = np.asarray(x, np.float64)
  q, k, v = (np.einsum('btd,dnh->btnh', x64, p[n]['kernel']) for n in ('query', 'key', 'value'))
  q = np.asarray(apply_rope(jnp.asarray(q, jnp.float32), positions), np.float64)
  k = np.asarray(apply_rope(jnp.asarray(k, jnp.float32), positions), np.float64)
  scores = np.einsum('bqnh,bknh->bnqk', q, k) / math.sqrt(cfg.head_dim)
  future = np.triu(np.ones((SEQ, SEQ), bool), k=1)  # key position > query position
  scores = np.where(future, -np.inf, scores)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum('bnqk,bknh->bqnh', weights, v)
  expected = np.einsum('btnh,nhd->btd', heads, p['out']['kernel'])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def _silu(z: np.ndarray) -> np.ndarray:
  return z / (1.0 + np.exp(-z))


def _gelu_tanh(z: np.ndarray) -> np.ndarray:
  return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _init_ffn(module: nn.Module, x: jax.Array) -> dict:
  params = nn.unbox(module.init(jax.random.key(4), x, deterministic=True))['params']
  # Scale the 0.02-std init up so the activation's nonlinearity is actually exercised.
  return jax.tree.map(lambda w: 20 * w, params)


def test_glu_with_silu_is_swiglu():
  cfg = make_cfg(ffn='glu', activation='silu')
  x = jax.random.normal(jax.random.key(3), (2, 5, cfg.width))
  params = _init_ffn(GLU(cfg), x)
  out = GLU(cfg).apply({'params': params}, x, deterministic=True)
  p = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
  x64 = np.asarray(x, np.float64)
  hidden = _silu(x64 @ p['wi_gate']['kernel']) * (x64 @ p['wi_up']['kernel'])
  np.testing.assert_allclose(out, hidden @ p['wo']['kernel'], rtol=1e-4, atol=1e-5)


def test_mlp_with_gelu_is_wo_gelu_wi():
  cfg = make_cfg(ffn='mlp', activation='gelu')
  x = jax.random.normal(jax.random.key(5), (2, 5, cfg.width))
  params = _init_ffn(MLP(cfg), x)
  out = MLP(cfg).apply({'params': params}, x, deterministic=True)
  p = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
  x64 = np.asarray(x, np.float64)
  expected = _gelu_tanh(x64 @ p['wi']['kernel']) @ p['wo']['kernel']  # GPT-2's tanh GELU
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_rmsnorm_closed_form():
  x = 3.0 * jax.random.normal(jax.random.key(6), (4, 7, 16)) + 1.0
  scale = jax.random.normal(jax.random.key(7), (16,))
  out = RMSNorm(eps=1e-6).apply({'params': {'scale': scale}}, x)
  x64 = np.asarray(x, np.float64)
  expected = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6) * np.asarray(scale)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  low = RMSNorm(dtype=jnp.bfloat16).apply({'params': {'scale': scale}}, x.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16  # statistics in float32, output in the compute dtype


def test_layernorm_closed_form():
  x = 3.0 * jax.random.normal(jax.random.key(8), (4, 7, 16)) + 5.0
  scale = jax.random.normal(jax.random.key(9), (16,))
  bias = jax.random.normal(jax.random.key(10), (16,))
  out = LayerNorm(eps=1e-6).apply({'params': {'scale': scale, 'bias': bias}}, x)
  x64 = np.asarray(x, np.float64)
  mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
  expected = (x64 - mean) / np.sqrt(var + 1e-6) * np.asarray(scale) + np.asarray(bias)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
  ('overrides', 'field'),
  [
    (dict(width=30, heads=4), 'model.width'),  # not divisible by heads
    (dict(width=12, heads=4), 'model.heads'),  # head_dim 3: odd, RoPE needs pairs
    (dict(ffn='moe'), 'model.ffn'),
    (dict(activation='swish2'), 'model.activation'),
    (dict(norm='batchnorm'), 'model.norm'),
    (dict(mixer='linear'), 'model.mixer'),
    (dict(dtype='float8'), 'model.dtype'),
    (dict(depth=0), 'model.depth'),
  ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
  with pytest.raises(ConfigError, match=f'^{field}:'):
    make_cfg(**overrides)


def test_from_config_rejects_unknown_fields_and_builds_known_ones():
  good = ml_collections.ConfigDict({'name': 'transformer', 'width': 64, 'heads': 2})
  model = build_transformer(good, vocab_size=VOCAB)
  assert model.cfg.width == 64 and model.cfg.heads == 2 and model.cfg.vocab_size == VOCAB
  bad = ml_collections.ConfigDict({'name': 'transformer', 'widht': 64})
  with pytest.raises(ConfigError, match='^model.widht:'):
    build_transformer(bad, vocab_size=VOCAB)


# ----------------------------------------------------------------------------- registries


@pytest.fixture
def doubled_relu():
  """A test-only activation, `2·relu`, registered under a name no real component uses."""
  name = 'test_only_doubled_relu'
  ACTIVATIONS.register(name)(lambda z: 2.0 * jax.nn.relu(z))
  yield name
  ACTIVATIONS._items.pop(name)  # Registry has no public removal; keep the registry clean


def test_registered_activation_is_usable_by_name(doubled_relu):
  cfg_new = make_cfg(activation=doubled_relu)
  cfg_relu = make_cfg(activation='relu')
  x = jax.random.normal(jax.random.key(11), (2, 5, cfg_new.width))
  params = _init_ffn(MLP(cfg_relu), x)
  new = MLP(cfg_new).apply({'params': params}, x, deterministic=True)
  relu = MLP(cfg_relu).apply({'params': params}, x, deterministic=True)
  np.testing.assert_allclose(new, 2.0 * relu, rtol=1e-6)  # the registered function ran
  model, params = init_lm(cfg_new)
  logits = model.apply({'params': params}, random_tokens(12))
  assert logits.shape == (2, SEQ, 64) and jnp.all(jnp.isfinite(logits))
