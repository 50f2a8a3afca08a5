"""Allocators: exact counts, a global threshold, per-family fractions, min_keep against layer
collapse, given densities, N:M blocks, and deterministic ties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.sparsity import ALLOCATORS, Family, Member, nm_keep, unstructured_families

SIZES = (5, 8, 13)


def _scores(seed: int = 0, sizes=SIZES) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.normal(size=n).astype(np.float32) for n in sizes]


def _families(sizes=SIZES) -> list[Family]:
  return [
    Family(f'f{i}', n, (Member(f'params/f{i}/kernel', -1, 1, True),)) for i, n in enumerate(sizes)
  ]


def _allocate(name: str, scores, sparsity, **kwargs) -> list[np.ndarray]:
  # Under jit with a traced sparsity, as the masked optimizer calls it.
  fn = jax.jit(lambda s, sp: ALLOCATORS.get(name)(s, sp, **kwargs))
  out = fn([jnp.asarray(s) for s in scores], jnp.float32(sparsity))
  for keep, s in zip(out, scores, strict=True):
    assert keep.dtype == jnp.bool_ and keep.shape == s.shape
  return [np.asarray(k) for k in out]


@pytest.mark.parametrize('sparsity', [0.0, 0.3, 0.5, 0.77, 0.9])
def test_global_removes_exactly_and_thresholds_globally(sparsity):
  scores = _scores()
  keeps = _allocate('global', scores, sparsity, min_keep=0)
  total = sum(SIZES)
  removed = total - sum(int(k.sum()) for k in keeps)
  assert removed == round(sparsity * total)
  flat_s, flat_k = np.concatenate(scores), np.concatenate(keeps)
  if 0 < removed < total:
    assert flat_s[flat_k].min() >= flat_s[~flat_k].max()


def test_global_threshold_except_the_protected_best_of_each_family():
  scores = _scores(1)
  scores[0] = scores[0] - 10.0  # family 0 is worse than everything else
  keeps = _allocate('global', scores, 0.6, min_keep=1)
  total = sum(SIZES)
  assert total - sum(int(k.sum()) for k in keeps) == round(0.6 * total)
  # Family 0 keeps its best group only (without min_keep it would vanish entirely).
  assert keeps[0].sum() == 1 and keeps[0][np.argmax(scores[0])]
  unprotected = [(s, k) for i, (s, k) in enumerate(zip(scores, keeps, strict=True)) if i > 0]
  kept = np.concatenate([s[k] for s, k in unprotected])
  gone = np.concatenate([s[~k] for s, k in unprotected])
  assert kept.min() >= gone.max()
  without = _allocate('global', scores, 0.6, min_keep=0)
  assert without[0].sum() == 0  # the layer collapse min_keep prevents


@pytest.mark.parametrize('min_keep', [1, 2, 3])
def test_min_keep_prevents_layer_collapse(min_keep):
  scores = _scores(2)
  scores[1] = scores[1] - 100.0
  for name in ('global', 'uniform'):
    keeps = _allocate(name, scores, 0.95, min_keep=min_keep)
    for keep, s in zip(keeps, scores, strict=True):
      assert keep.sum() >= min_keep, name
      assert s[keep].min() >= s[~keep].max(), name  # the survivors are the family's best
    assert keeps[1].sum() == min_keep, name
  # Global removes as many as it may: all but the protected min_keep best of each family.
  keeps = _allocate('global', scores, 0.95, min_keep=min_keep)
  assert sum(int(k.sum()) for k in keeps) == len(SIZES) * min_keep


@pytest.mark.parametrize('sparsity', [0.2, 0.5, 0.7])
def test_uniform_removes_the_same_fraction_of_every_family(sparsity):
  scores = _scores(3)
  keeps = _allocate('uniform', scores, sparsity, min_keep=1)
  for keep, s in zip(keeps, scores, strict=True):
    assert (~keep).sum() == min(round(sparsity * s.size), s.size - 1)
    assert s[keep].min() >= s[~keep].max()


def test_ratio_keeps_the_given_densities():
  scores = _scores(4)
  families = _families()
  densities = {'f0': 0.4, 'f1': 0.25, 'f2': 0.01}
  keeps = _allocate('ratio', scores, 0.9, families=families, densities=densities, min_keep=1)
  # f2: round(0.13) = 0 -> min_keep = 1. The sparsity argument plays no part.
  assert [int(k.sum()) for k in keeps] == [2, 2, 1]
  for keep, s in zip(keeps, scores, strict=True):
    assert s[keep].min() >= s[~keep].max()
  with pytest.raises(ValueError, match=r"no density given for families \['f2'\]"):
    ALLOCATORS.get('ratio')(scores, 0.5, families=families, densities={'f0': 1.0, 'f1': 1.0})


def _assert_nm(keep: np.ndarray, scores: np.ndarray, n: int, m: int) -> None:
  """`keep`/`scores` as `[rows, cols]` matrices with blocks of `m` rows down every column."""
  blocks_k = keep.reshape(-1, m, keep.shape[1])
  blocks_s = scores.reshape(-1, m, scores.shape[1])
  np.testing.assert_array_equal(blocks_k.sum(1), n)
  kept = np.where(blocks_k, blocks_s, np.inf).min(1)
  gone = np.where(blocks_k, -np.inf, blocks_s).max(1)
  assert np.all(kept >= gone)


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (3, 8)])
def test_nm_keep_exactly_n_of_every_m(n, m):
  scores = np.random.default_rng(5).normal(size=(16, 6)).astype(np.float32)
  keep = np.asarray(nm_keep(jnp.asarray(scores), n, m, axis=0))
  _assert_nm(keep, scores, n, m)
  # Along the other axis: blocks of m consecutive columns in every row.
  keep_t = np.asarray(nm_keep(jnp.asarray(scores.T), n, m, axis=-1))
  np.testing.assert_array_equal(keep_t, keep.T)
  with pytest.raises(ValueError, match='not a multiple of'):
    nm_keep(jnp.asarray(scores[:6]), n, m, axis=0)


def test_nm_allocator_on_kernels():
  rng = np.random.default_rng(6)
  params = {
    'conv': {'kernel': np.zeros((3, 3, 4, 5), np.float32)},  # 36 inputs per output
    'dense': {'kernel': np.zeros((8, 3), np.float32)},
  }
  families = unstructured_families(params)
  shapes = {f'params/{k}/kernel': v['kernel'].shape for k, v in params.items()}
  scores = [rng.normal(size=f.size).astype(np.float32) for f in families]
  keeps = _allocate('nm', scores, 0.123, families=families, shapes=shapes, n=2, m=4)
  for keep, s, f in zip(keeps, scores, families, strict=True):
    shape = shapes[f.members[0].path]
    # The keep vector is the kernel's entries in order: as [H*W*in, out], 2 of every 4 inputs.
    _assert_nm(keep.reshape(-1, shape[-1]), s.reshape(-1, shape[-1]), 2, 4)
    assert keep.mean() == 0.5
  bad = {'dense': {'kernel': np.zeros((6, 3), np.float32)}}
  bad_families = unstructured_families(bad)
  with pytest.raises(ValueError, match='6 inputs per output, not a multiple of 4'):
    ALLOCATORS.get('nm')(
      [jnp.zeros(18)], 0.5, families=bad_families, shapes={'params/dense/kernel': (6, 3)}
    )
  with pytest.raises(ValueError, match='needs unstructured families'):
    ALLOCATORS.get('nm')([jnp.zeros(5)], 0.5, families=_families((5,)), shapes={})


def test_ties_are_broken_by_position():
  scores = [np.zeros(n, np.float32) for n in SIZES]
  # Global: the first-listed groups go first; with min_keep=1 each family's first is protected.
  keeps = _allocate('global', scores, 0.5, min_keep=0)
  flat = np.concatenate(keeps)
  np.testing.assert_array_equal(flat, np.arange(flat.size) >= 13)
  keeps = _allocate('global', scores, 0.5, min_keep=1)
  flat = np.concatenate(keeps)
  firsts = np.cumsum((0, *SIZES[:-1]))
  want = np.zeros(flat.size, bool)
  want[firsts] = True
  want[np.flatnonzero(~want)[13:]] = True  # the 13 removed: the first unprotected, in order
  np.testing.assert_array_equal(flat, want)
  # Uniform: within each family, the earliest go first.
  keeps = _allocate('uniform', scores, 0.5, min_keep=1)
  for keep, n in zip(keeps, SIZES, strict=True):
    np.testing.assert_array_equal(keep, np.arange(n) >= round(0.5 * n))
  # N:M: the first n of a block of equal scores are kept.
  keep = np.asarray(nm_keep(jnp.zeros((8, 2)), 2, 4, axis=0))
  np.testing.assert_array_equal(keep[:, 0], [1, 1, 0, 0, 1, 1, 0, 0])
  # Deterministic: the same answer every time.
  again = _allocate('global', scores, 0.5, min_keep=1)
  np.testing.assert_array_equal(np.concatenate(again), want)


@pytest.mark.parametrize('sparsity', [0.25, 0.5, 0.75])
def test_per_output_removes_the_same_count_from_every_output(sparsity):
  rng = np.random.default_rng(7)
  params = {
    'dense': {'kernel': np.zeros((8, 3), np.float32)},
    'query': {'kernel': np.zeros((8, 2, 2), np.float32)},  # [embed, heads, kv]: 8 inputs
  }
  families = unstructured_families(params)
  shapes = {f'params/{k}/kernel': v['kernel'].shape for k, v in params.items()}
  scores = [rng.normal(size=f.size).astype(np.float32) for f in families]
  keeps = _allocate('per_output', scores, sparsity, families=families, shapes=shapes)
  for keep, s in zip(keeps, scores, strict=True):
    keep, s = keep.reshape(8, -1), s.reshape(8, -1)  # both kernels are [8 inputs, outputs]
    assert np.all(keep.sum(axis=0) == 8 - round(sparsity * 8))
    for j in range(keep.shape[1]):  # the lowest-scoring inputs of each output went
      assert s[keep[:, j], j].min() > s[~keep[:, j], j].max()
