"""LoRA as a pure transform: merge/unmerge exactness, MaskLoRA/ScaleLoRA keep the zeros, the
merged kernel is the formula on the `[in, out]` view, and merging works on a sharded model."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.sparsity import lowrank
from jaxlab.sparsity.masking import apply_masks
from tests.conftest import REPO


def _params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return {
    'embed': {'embedding': f(16, 8)},
    'block_0': {
      'attention': {'query': {'kernel': f(8, 2, 4)}, 'out': {'kernel': f(2, 4, 8)}},
      'ffn': {'wi': {'kernel': f(8, 12)}, 'wo': {'kernel': f(12, 8)}},
      'ffn_norm': {'scale': f(8)},
    },
  }


def _random_adapters(params, cfg, seed=1):
  """Adapters with every entry nonzero (b is zero at init, which would test nothing)."""
  adapters = lowrank.init_adapters(jax.random.key(0), params, cfg)
  keys = iter(jax.random.split(jax.random.key(seed), 2 * len(adapters)))
  return {
    p: {k: jax.random.normal(next(keys), v.shape) for k, v in a.items()}
    for p, a in adapters.items()
  }


def _masks(params, sparsity=0.5, seed=2):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) >= sparsity), params)


def test_adapters_attach_to_the_matching_kernels_only():
  cfg = lowrank.LoraConfig(rank=3)
  adapters = lowrank.init_adapters(jax.random.key(0), _params(), cfg)
  assert sorted(adapters) == [
    'block_0/attention/out/kernel',
    'block_0/attention/query/kernel',
    'block_0/ffn/wi/kernel',
    'block_0/ffn/wo/kernel',
  ]
  # [in, out] views: query contracts embed (8 -> 2*4), out contracts heads*kv (8 -> 8).
  assert adapters['block_0/attention/query/kernel']['a'].shape == (8, 3)
  assert adapters['block_0/attention/query/kernel']['b'].shape == (3, 8)
  assert adapters['block_0/ffn/wi/kernel']['b'].shape == (3, 12)
  assert lowrank.num_adapter_params(adapters) == 3 * ((8 + 8) * 2 + (8 + 12) + (12 + 8))


@pytest.mark.parametrize('kind', lowrank.KINDS)
def test_merge_at_init_is_the_identity_bitwise(kind):
  params = _params()
  cfg = lowrank.LoraConfig(rank=4, kind=kind)
  merged = lowrank.merge(params, lowrank.init_adapters(jax.random.key(0), params, cfg), cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged), strict=True):
    np.testing.assert_array_equal(a, b)


def test_merged_kernel_is_the_formula_on_the_matrix_view():
  params = _params()
  cfg = lowrank.LoraConfig(rank=2, alpha=6.0)
  adapters = _random_adapters(params, cfg)
  merged = lowrank.merge(params, adapters, cfg)
  a = adapters['block_0/attention/out/kernel']
  want = params['block_0']['attention']['out']['kernel'].reshape(8, 8) + 3.0 * (a['a'] @ a['b'])
  np.testing.assert_allclose(
    merged['block_0']['attention']['out']['kernel'].reshape(8, 8), want, rtol=1e-6
  )
  np.testing.assert_array_equal(merged['embed']['embedding'], params['embed']['embedding'])


def test_unmerge_inverts_merge():
  # Dyadic values: every sum is exact in float32, so the round trip is bitwise.
  params = jax.tree.map(lambda x: jnp.round(x * 8) / 8, _params())
  cfg = lowrank.LoraConfig(rank=2, alpha=2.0)
  adapters = jax.tree.map(lambda x: jnp.round(x * 4) / 4, _random_adapters(params, cfg))
  back = lowrank.unmerge(lowrank.merge(params, adapters, cfg), adapters, cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
    np.testing.assert_array_equal(a, b)
  # Arbitrary values: within one float32 rounding of the merged entry.
  params = _params()
  adapters = _random_adapters(params, cfg)
  merged = lowrank.merge(params, adapters, cfg)
  back = lowrank.unmerge(merged, adapters, cfg)
  for a, b, m in zip(*(jax.tree.leaves(t) for t in (params, back, merged)), strict=True):
    assert np.all(np.abs(np.asarray(a) - b) <= 2 * np.finfo(np.float32).eps * (np.abs(m) + 1))


@pytest.mark.parametrize('kind', ['mask', 'scale'])
def test_mask_and_scale_lora_keep_exact_sparsity(kind):
  masks = _masks(_params())
  params = apply_masks(_params(), masks)
  cfg = lowrank.LoraConfig(rank=3, kind=kind)
  merged = lowrank.merge(params, _random_adapters(params, cfg), cfg)
  adapted = set(lowrank.adapted_paths(params, cfg.pattern))
  flat_w = jax.tree_util.tree_flatten_with_path(merged)[0]
  for (path, w), m in zip(flat_w, jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0)  # every pruned entry still exactly 0
    name = '/'.join(k.key for k in path)
    if name in adapted:  # and the survivors moved
      assert np.mean(np.asarray(w)[np.asarray(m)] != 0) > 0.99
  if kind == 'mask':
    back = lowrank.unmerge(merged, _random_adapters(params, cfg), cfg, masks=masks)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match='needs the pruning masks'):
      lowrank.unmerge(merged, {}, cfg)


def test_bad_configs_are_named():
  with pytest.raises(ValueError, match='lora.rank'):
    lowrank.LoraConfig(rank=0)
  with pytest.raises(ValueError, match='lora.kind'):
    lowrank.LoraConfig(kind='dora')
  with pytest.raises(ValueError, match='lora.pattern: expected a regular'):
    lowrank.LoraConfig(pattern='(')
  with pytest.raises(ValueError, match='lora.pattern: expected to match'):
    lowrank.init_adapters(jax.random.key(0), _params(), lowrank.LoraConfig(pattern='nothing'))


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxlab.sparsity import lowrank
from tests.sparsity.test_lowrank import _params, _random_adapters
mesh = jax.make_mesh((4, 2), ('fsdp', 'model'))
params = _params()
cfg = lowrank.LoraConfig(rank=2)
adapters = _random_adapters(params, cfg)
want = lowrank.merge(params, adapters, cfg)
spec = lambda x: P('fsdp', 'model') if x.ndim == 2 and x.shape[1] % 2 == 0 else P()
sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), params)
got = jax.jit(lowrank.merge, static_argnums=2)(sharded, adapters, cfg)
assert got['block_0']['ffn']['wi']['kernel'].sharding.num_devices == 8
for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
  np.testing.assert_allclose(a, b, rtol=1e-6)
print('ok')
"""


def test_merge_on_a_sharded_model():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  out = subprocess.run(
    [sys.executable, '-c', _SHARDED], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith('ok')
