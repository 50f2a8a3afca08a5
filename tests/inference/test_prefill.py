"""Prepacked prefill equals running each prompt alone; padded prefill agrees; buckets avoid
recompiling; the transformer's default path is untouched; recurrent mixers refuse."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.inference import (
  forward_with_cache,
  pack_batch,
  pad_batch,
  prefill_packed,
  prefill_padded,
  prompt_cache,
  unpack_logits,
)
from jaxlab.nn import AttentionInputs, TransformerConfig, TransformerLM
from tests.inference.conftest import random_prompts

ROW = 16
prefill_forward = jax.jit(forward_with_cache, static_argnums=0)
# Length 1, a prompt filling a whole row, and a mix that FFD packs several to a row.
LENGTHS = [1, ROW, 5, 9, 3, 11, 2, 1]


@functools.partial(jax.jit, static_argnums=0)
def _alone(model, params, tokens):
  """Logits and cache of prompts run one per sequence, by the model's plain causal forward
  (a prompt right-padded to the row: causal attention keeps its positions from the padding)."""
  logits = model.apply({'params': params}, tokens)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  _, cache = forward_with_cache(model, params, tokens, positions)
  return logits, cache


def _max_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_packed_prefill_equals_each_prompt_alone(lm):
  model, params = lm
  prompts = random_prompts(LENGTHS)
  batch = pack_batch(prompts, ROW, row_buckets=(8,), prompt_buckets=(16,))
  assert len({int(r) for r in batch.rows[: len(prompts)]}) < len(prompts)  # really packed
  logits, _ = prefill_forward(model, params, batch.tokens, batch.positions, batch.segment_ids)
  per_prompt = unpack_logits(np.asarray(logits), batch)
  cache_len = 24  # longer than a row: slots past each prompt stay zero
  last, cache = jax.device_get(prefill_packed(model, params, batch, cache_len))
  alone_logits, alone_cache = jax.device_get(
    _alone(model, params, jnp.asarray(pad_batch(prompts).tokens))
  )
  # The length-1 prompt also by itself at its exact shape [1, 1].
  exact_logits, exact_cache = _alone(model, params, jnp.asarray(prompts[0])[None])
  assert _max_diff(exact_logits[0], alone_logits[0, :1]) <= 1e-5
  assert _max_diff(exact_cache, jax.tree.map(lambda a: a[:1, :1], alone_cache)) <= 1e-5
  for p, prompt in enumerate(prompts):
    n = prompt.size
    assert _max_diff(per_prompt[p], alone_logits[p, :n]) <= 1e-5
    assert _max_diff(last[p], alone_logits[p, n - 1]) <= 1e-5
    assert _max_diff(prompt_cache(cache, p, n), prompt_cache(alone_cache, p, n)) <= 1e-5
    assert all(not leaf[p, n:].any() for leaf in jax.tree.leaves(cache))
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape == (16, cache_len, 2, 16)


def test_padded_prefill_agrees_with_packed(lm):
  model, params = lm
  prompts = random_prompts(LENGTHS, seed=1)
  last_pack, cache_pack = prefill_packed(model, params, pack_batch(prompts, ROW), ROW)
  last_pad, cache_pad = prefill_padded(model, params, pad_batch(prompts), ROW)
  assert _max_diff(last_pack, last_pad) <= 1e-5
  assert _max_diff(cache_pack, cache_pad) <= 1e-5


def test_lengths_in_one_bucket_compile_once(lm):
  model, params = lm
  row = 8  # a row length no other test uses, so this test's compilations are its own
  buckets = dict(row_buckets=(4, 8), prompt_buckets=(8,))
  first = pack_batch(random_prompts([8, 3, 2, 5]), row, **buckets)
  second = pack_batch(random_prompts([1, 7, 6, 4, 4, 2, 1], seed=2), row, **buckets)
  assert first.tokens.shape == second.tokens.shape == (4, row)
  before = prefill_packed._cache_size()
  prefill_packed(model, params, first, row)
  compiled = prefill_packed._cache_size()
  assert compiled == before + 1
  prefill_packed(model, params, second, row)
  assert prefill_packed._cache_size() == compiled
  # ...while a batch in the next row bucket does compile (the counter does count).
  third = pack_batch(random_prompts([8] * 5), row, **buckets)
  prefill_packed(model, params, third, row)
  assert prefill_packed._cache_size() == compiled + 1


def test_default_path_is_the_plain_causal_forward(lm):
  # With positions 0..T-1 and no segments, the explicit-inputs path runs the very same
  # attention call, so the logits are bitwise those of `apply(params, tokens)`.
  model, params = lm
  tokens = jnp.asarray(np.stack(random_prompts([12, 12], seed=3)))
  plain, _ = _alone(model, params, tokens)
  positions = jnp.broadcast_to(jnp.arange(12), tokens.shape)
  explicit, _ = jax.jit(forward_with_cache, static_argnums=0)(model, params, tokens, positions)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(explicit))
  # One segment per row is the causal mask, built explicitly.
  one_segment, _ = prefill_forward(model, params, tokens, positions, jnp.ones_like(tokens))
  assert _max_diff(plain, one_segment) <= 1e-6


def test_recurrent_mixers_refuse_packed_inputs():
  cfg = TransformerConfig(vocab_size=16, width=8, depth=1, heads=2, mlp_dim=8, mixer='paragru')
  model = TransformerLM(cfg)
  attn = AttentionInputs(jnp.arange(4)[None], cache='write')
  with pytest.raises(ValueError, match='need an attention mixer'):
    model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), attn=attn)


def test_attention_inputs_validate():
  with pytest.raises(ValueError, match='cache: expected one of'):
    AttentionInputs(jnp.zeros((1, 1), jnp.int32), cache='read')
  with pytest.raises(ValueError, match='segment_ids=None'):
    AttentionInputs(jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32), cache='decode')
