"""Quantizing a model's kernels by path rules; running it with quantized weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import quant
from jaxlab.nn.transformer import TransformerConfig, TransformerLM
from jaxlab.quant import model as qmodel

CFG = TransformerConfig(vocab_size=40, width=16, depth=1, heads=2, mlp_dim=32, max_len=8)


@pytest.fixture(scope='module')
def lm():
  model = TransformerLM(CFG)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))['params']
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 40)
  return model, params, tokens


def test_rules_select_exactly_the_matching_kernels(lm):
  _, params, _ = lm
  rules = [r'block_0/ffn/w.', r'.*/query/kernel', r'block_1/.*']
  paths = quant.kernel_paths(params, rules)  # 'block_0/ffn/w.' lacks '/kernel': no match
  assert paths == ['block_0/attention/query/kernel']
  rules[0] = r'block_0/ffn/wo/.*'
  paths = quant.kernel_paths(params, rules)
  assert paths == ['block_0/attention/query/kernel', 'block_0/ffn/wo/kernel']
  qp = quant.quantize_params(params, rules, quant.binarize)
  flat = dict(
    (qmodel.path_name(p), x)
    for p, x in jax.tree_util.tree_flatten_with_path(qp, is_leaf=quant.is_quantized)[0]
  )
  quantized = sorted(k for k, x in flat.items() if quant.is_quantized(x))
  assert quantized == paths
  original = dict(
    (qmodel.path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  )
  for name, x in flat.items():
    if name not in paths:
      assert x is original[name]
  assert isinstance(flat['block_0/attention/query/kernel'], quant.KernelView)
  assert isinstance(flat['block_0/ffn/wo/kernel'], quant.QuantizedTensor)


def test_as_matrix_contracts_the_input_axes(lm):
  _, params, _ = lm
  q = params['block_0']['attention']['query']['kernel']  # [embed, heads, kv]
  o = params['block_0']['attention']['out']['kernel']  # [heads, kv, embed]
  mq, restore = quant.as_matrix('block_0/attention/query/kernel', q)
  mo, _ = quant.as_matrix('block_0/attention/out/kernel', o)
  assert mq.shape == (16, 16) and mo.shape == (16, 16)
  x = jax.random.normal(jax.random.key(2), (3, 16))
  np.testing.assert_allclose(x @ mq, jnp.einsum('bd,dnh->bnh', x, q).reshape(3, 16), atol=1e-6)
  xo = x.reshape(3, 2, 8)
  np.testing.assert_allclose(xo.reshape(3, 16) @ mo, jnp.einsum('bnh,nhd->bd', xo, o), atol=1e-6)
  np.testing.assert_array_equal(restore(mq), q)


def test_on_the_fly_dequantization_equals_apply_with_the_dequantized_tree(lm):
  model, params, tokens = lm
  qp = quant.quantize_params(
    params, qmodel.DEFAULT_RULES, lambda w: quant.quantize(w, 3, group_size=8)
  )
  dq = quant.dequantize(qp)
  assert jax.tree_util.tree_map(jnp.shape, dq) == jax.tree_util.tree_map(jnp.shape, params)
  expected = jax.jit(model.apply)({'params': dq}, tokens)
  calls = []

  def counting(x, leaf):
    calls.append(leaf.shape)
    return qmodel.dequant_matmul(x, leaf)

  apply = jax.jit(lambda qp, x: quant.apply_quantized(model, {'params': qp}, x, matmul=counting))
  out = apply(qp, tokens)
  assert len(calls) == 6  # q, k, v, out, wi, wo, traced once
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The quantized path really is used: it differs from the float model.
  assert not np.allclose(out, jax.jit(model.apply)({'params': params}, tokens), atol=1e-4)
  # Exact account: 3-bit codes + one fp16 scale per 8 rows, over the 6 block kernels.
  assert quant.bits_per_weight(qp) == 3 + 16 / 8


def test_dense_with_bias_is_intercepted_and_unmatched_kernels_stay_float():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, name='b')(nn.relu(nn.Dense(8, name='a')(x)))

  net, x = Net(), jax.random.normal(jax.random.key(0), (4, 6))
  params = net.init(jax.random.key(1), x)['params']
  qp = quant.quantize_params(params, [r'a/kernel'], lambda w: quant.quantize(w, 4))
  assert isinstance(qp['b']['kernel'], jax.Array)
  out = jax.jit(lambda p, x: quant.apply_quantized(net, {'params': p}, x))(qp, x)
  np.testing.assert_allclose(out, net.apply({'params': quant.dequantize(qp)}, x), rtol=1e-5)


def test_bad_rules_are_rejected(lm):
  _, params, _ = lm
  with pytest.raises(ValueError, match='expected to match at least one kernel'):
    quant.quantize_params(params, [r'nothing/.*'], quant.binarize)
  with pytest.raises(ValueError, match='rules: expected regular expressions'):
    quant.kernel_paths(params, ['('])
  with pytest.raises(ValueError, match='rules: expected a non-empty sequence'):
    quant.kernel_paths(params, '.*')
