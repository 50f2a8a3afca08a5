"""KV-cache decoding equals recomputing the full forward pass; generations after a prepacked
prefill are those after a padded one and those of each prompt alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.inference import complete, decode_step, pack_batch, prefill_packed, sample
from tests.inference.conftest import VOCAB, random_prompts

LENGTHS = [1, 16, 6, 3, 9]
STEPS = 6


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, tokens):
  return model.apply({'params': params}, tokens)


def _right_padded(seqs, width):
  out = np.zeros((len(seqs), width), np.int32)
  for i, s in enumerate(seqs):
    out[i, : len(s)] = s
  return out


def test_decode_steps_equal_the_full_forward(lm):
  model, params = lm
  prompts = random_prompts(LENGTHS)
  lengths = np.array(LENGTHS)
  batch = pack_batch(prompts, 16)
  cache_len = 32
  _, cache = prefill_packed(model, params, batch, cache_len)
  # Teacher-forced: feed random tokens one at a time through the cache.
  fed = np.random.default_rng(1).integers(0, VOCAB, (len(prompts), STEPS)).astype(np.int32)
  step = jax.jit(decode_step, static_argnums=0)
  cached = []
  for k in range(STEPS):
    logits, cache = step(model, params, cache, fed[:, k], jnp.asarray(lengths + k))
    cached.append(np.asarray(logits))
  seqs = [np.concatenate([p, f]) for p, f in zip(prompts, fed, strict=True)]
  full = np.asarray(_full_logits(model, params, _right_padded(seqs, cache_len)))
  for p, n in enumerate(lengths):
    for k in range(STEPS):
      np.testing.assert_allclose(cached[k][p], full[p, n + k], atol=1e-5, rtol=0)


def test_greedy_generation_is_the_argmax_of_the_full_forward(lm):
  model, params = lm
  prompts = random_prompts(LENGTHS, seed=2)
  generated = complete(model, params, prompts, steps=STEPS)
  seqs = [np.concatenate([p, g]) for p, g in zip(prompts, generated, strict=True)]
  full = np.asarray(_full_logits(model, params, _right_padded(seqs, 32)))
  for p, (prompt, gen) in enumerate(zip(prompts, generated, strict=True)):
    n = prompt.size
    np.testing.assert_array_equal(np.argmax(full[p, n - 1 : n - 1 + STEPS], -1), gen)
  # Prepacked, padded and each prompt alone generate the same tokens.
  padded = complete(model, params, prompts, steps=STEPS, packed=False)
  np.testing.assert_array_equal(np.stack(generated), np.stack(padded))
  for prompt, gen in zip(prompts[:2], generated[:2], strict=True):  # length 1 and a full row
    np.testing.assert_array_equal(complete(model, params, [prompt], steps=STEPS)[0], gen)


def test_sampling_follows_the_softmax_and_agrees_packed_or_padded(lm):
  logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
  draws = jax.vmap(lambda k: sample(logits[None], k, 1.0)[0])(
    jax.random.split(jax.random.key(0), 20000)
  )
  freq = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)  # ~4 sigma
  np.testing.assert_array_equal(sample(logits[None], jax.random.key(0), 0.0), [3])
  model, params = lm
  prompts = random_prompts(LENGTHS, seed=3)
  rng = jax.random.key(7)
  kw = dict(steps=STEPS, temperature=1.0, rng=rng)
  packed = complete(model, params, prompts, **kw)
  np.testing.assert_array_equal(packed, complete(model, params, prompts, packed=False, **kw))
  assert not np.array_equal(packed, complete(model, params, prompts, steps=STEPS))


def test_eos_ends_a_sequence(lm):
  model, params = lm
  prompts = random_prompts(LENGTHS, seed=2)
  greedy = complete(model, params, prompts, steps=STEPS)
  eos = int(greedy[0][1])
  stopped = complete(model, params, prompts, steps=STEPS, eos_id=eos)
  for gen, ref in zip(stopped, greedy, strict=True):
    hits = np.flatnonzero(ref == eos)
    if hits.size:  # identical up to the first eos, eos after it
      first = hits[0]
      np.testing.assert_array_equal(gen[: first + 1], ref[: first + 1])
      assert (gen[first:] == eos).all()
    else:
      np.testing.assert_array_equal(gen, ref)


def test_bad_steps_and_cache_inputs_are_clear_errors(lm):
  model, params = lm
  with pytest.raises(ValueError, match='steps >= 1'):
    complete(model, params, random_prompts([3]), steps=0)
  with pytest.raises(ValueError, match='expected a "cache" collection'):
    decode_step(model, params, {}, jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
