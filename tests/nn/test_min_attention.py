"""The reduced attention-only classifier (jaxlab.nn.min_attention) and the corpus_topics data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab.core import data
from jaxlab.core.errors import ConfigError
from jaxlab.nn.min_attention import (
  MinAttention,
  MinTransformer,
  MinTransformerConfig,
  patchify,
  symmetric_from_triangle,
)

D, H, T = 8, 2, 5


def cfg(reduction: str, **kw) -> MinTransformerConfig:
  fields = dict(num_classes=3, width=D, depth=2, heads=H, mlp_dim=16, max_len=16)
  return MinTransformerConfig(reduction=reduction, **{**fields, **kw})


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


X = jax.random.normal(jax.random.key(0), (2, T, D))


def test_collapsed_attention_equals_uncollapsed_with_wqk_and_values_as_inputs():
  kq, kk = jax.random.split(jax.random.key(1))
  wq, wk = (jax.random.normal(k, (H, D, D // H)) for k in (kq, kk))
  w_qk = jnp.einsum('nde,nfe->ndf', wq, wk)  # W_q^h W_k^hᵀ per head
  got = MinAttention(cfg('collapsed')).apply({'params': {'qk': w_qk}}, X)
  # Uncollapsed, written out: per head softmax(X W_q (X W_k)ᵀ / sqrt(d_h)) X, mean over heads.
  heads = []
  for h in range(H):
    q, k = X @ wq[h], X @ wk[h]
    s = jnp.einsum('btd,bsd->bts', q, k) / np.sqrt(D // H)
    heads.append(jax.nn.softmax(s, axis=-1) @ X)
  np.testing.assert_allclose(got, sum(heads) / H, rtol=1e-5, atol=1e-5)


def test_symmetric_similarity_is_symmetric_with_half_the_parameters():
  tri = jax.random.normal(jax.random.key(2), (H, D * (D + 1) // 2))
  w = symmetric_from_triangle(tri, D)
  np.testing.assert_array_equal(w, jnp.swapaxes(w, -1, -2))
  rows, cols = np.triu_indices(D)
  np.testing.assert_array_equal(w[:, rows, cols], tri)  # the stored entries, unchanged
  scores = jnp.einsum('btd,nde,bse->bnts', X, w, X)
  np.testing.assert_allclose(scores, jnp.swapaxes(scores, -1, -2), rtol=1e-5, atol=1e-5)
  params = jax.eval_shape(MinAttention(cfg('symmetric')).init, jax.random.key(0), X)['params']
  assert count(params) == H * D * (D + 1) // 2
  # The layer is the collapsed one with W_qk the symmetric matrix.
  got = MinAttention(cfg('symmetric')).apply({'params': {'qk_upper': tri}}, X)
  want = MinAttention(cfg('collapsed')).apply({'params': {'qk': w}}, X)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_parameter_counts_of_each_reduction():
  images = jnp.zeros((1, 8, 8, 1))
  n = {
    r: count(jax.eval_shape(MinTransformer(cfg(r)).init, jax.random.key(0), images)['params'])
    for r in ('none', 'no_mlp', 'collapsed', 'symmetric')
  }
  shared = (4 * D + D) + 16 * D + 2 * D + (D * 3 + 3)  # patch embed, positions, final norm, head
  norm = 2 * D
  mlp = norm + D * 16 + 16 + 16 * D + D
  assert n['none'] == shared + 2 * (norm + 4 * D * D + mlp)
  assert n['no_mlp'] == shared + 2 * (norm + 4 * D * D)
  assert n['collapsed'] == shared + 2 * (norm + H * D * D)
  assert n['symmetric'] == shared + 2 * (norm + H * D * (D + 1) // 2)


def test_patchify_keeps_pixels_of_a_patch_together():
  images = jnp.arange(2 * 4 * 4 * 1).reshape(2, 4, 4, 1)
  p = patchify(images, 2)
  assert p.shape == (2, 4, 4)
  np.testing.assert_array_equal(p[0, 1], [2, 3, 6, 7])  # top-right patch of image 0
  with pytest.raises(ValueError, match='patch_size'):
    patchify(images, 3)


def test_model_classifies_images_and_tokens_and_rejects_other_inputs():
  model = MinTransformer(cfg('collapsed'))
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  assert jax.eval_shape(model.init_with_output, jax.random.key(0), images)[0].shape == (2, 3)
  tokens = jnp.arange(12).reshape(2, 6)
  assert jax.eval_shape(model.init_with_output, jax.random.key(0), tokens)[0].shape == (2, 3)
  with pytest.raises(ValueError, match='expected int tokens'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match='max_len'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 40), jnp.int32))


def test_bad_reduction_is_a_config_error():
  with pytest.raises(ConfigError, match='model.reduction'):
    cfg('tiny')


def test_corpus_topics_are_balanced_windows_of_the_topics():
  from pydoc_data.topics import topics

  x, y, names = data.text.topic_windows(32)
  counts = np.bincount(y)
  assert len(counts) == data.text.TOPIC_CLASSES and np.all(counts == counts[0])
  per = counts[0]
  for c in (0, 5):
    text = bytes(x[c * per + 3].astype(np.uint8))
    assert text in topics[names[c]].encode()
  d = ml_collections.ConfigDict({'seq_len': 32, 'val_fraction': 0.25})
  split = data.DATASETS.get('corpus_topics')(d)
  assert split.input_shape == (32,) and split.train_inputs.dtype == np.int32
  assert len(split.train_labels) + len(split.test_labels) == len(y)
  with pytest.raises(ValueError, match='seq_len'):
    data.text.topic_windows(100_000)
