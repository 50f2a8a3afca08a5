"""Autoregressive decoding with a KV cache: greedy or sampled, one jitted `lax.scan`.

Each step feeds one token per sequence at its position `p` (the sequence's length so far),
writes its key and value into cache slot `p`, and attends to slots `0..p`; so step `k` costs
`O(S)` attention instead of the `O(p²)` of recomputing the whole prefix, and gives the same
logits as that recomputation (tested).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.inference.kv_cache import Cache
from jaxlab.inference.packing import (
  bucket,
  count_buckets,
  next_power_of_two,
  pack_batch,
  pad_batch,
  power_of_two_buckets,
)
from jaxlab.inference.prefill import prefill_packed, prefill_padded
from jaxlab.nn.transformer import AttentionInputs


def decode_step(
  model: nn.Module, params: Any, cache: Cache, tokens: jax.Array, positions: jax.Array
) -> tuple[jax.Array, Cache]:
  """Next-token logits `[B, V]` for `tokens` `[B]` at `positions` `[B]`, and the updated cache."""
  logits, state = model.apply(
    {'params': params, 'cache': cache},
    tokens[:, None],
    attn=AttentionInputs(positions[:, None], cache='decode'),
    mutable=['cache'],
  )
  return logits[:, 0], state['cache']


def sample(logits: jax.Array, rng: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """`argmax` for `temperature == 0`, else a draw from `softmax(logits / temperature)`.

  `temperature` may be traced, so greedy and sampled decoding share one compilation.
  """
  greedy = jnp.argmax(logits, axis=-1)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  drawn = jax.random.categorical(rng, scaled, axis=-1)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'steps'))
def generate(
  model: nn.Module,
  params: Any,
  cache: Cache,
  last_logits: jax.Array,
  lengths: jax.Array,
  rng: jax.Array,
  *,
  steps: int,
  temperature: float | jax.Array = 0.0,
  eos_id: int | jax.Array = -1,
) -> jax.Array:
  """`steps` new tokens per sequence after a prefill.

  Args:
    model: the transformer.
    params: its parameters.
    cache: per-sequence caches with at least `max(lengths) + steps - 1` slots.
    last_logits: `[B, V]` the logits after each sequence's last token (from the prefill).
    lengths: `[B]` each sequence's length (the position of its first new token).
    rng: a PRNG key (unused when greedy).
    steps: how many tokens to generate.
    temperature: 0 for greedy decoding.
    eos_id: a sequence that produced this id keeps producing it; -1 for none.

  Returns:
    `[B, steps]` int32 token ids.
  """
  first_key, rng = jax.random.split(rng)
  first = sample(last_logits, first_key, temperature)

  def step(carry, key):
    token, position, cache, done = carry
    logits, cache = decode_step(model, params, cache, token, position)
    nxt = jnp.where(done, eos_id, sample(logits, key, temperature))
    return (nxt, position + 1, cache, done | (nxt == eos_id)), nxt

  carry = (first, lengths.astype(jnp.int32), cache, first == eos_id)
  _, rest = jax.lax.scan(step, carry, jax.random.split(rng, steps - 1))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def complete(
  model: nn.Module,
  params: Any,
  prompts: Sequence[np.ndarray],
  *,
  steps: int,
  packed: bool = True,
  temperature: float = 0.0,
  rng: jax.Array | None = None,
  eos_id: int = -1,
  min_bucket: int = 16,
) -> list[np.ndarray]:
  """Prefills `prompts` (prepacked, or padded when `packed=False`) and generates `steps` tokens.

  Shapes are rounded up to buckets (row length and cache slots to powers of two, the counts of
  rows and prompts to `count_buckets`), so batches whose sizes fall in the same buckets reuse
  one compilation.

  Returns:
    The `steps` new tokens of each prompt.
  """
  if steps < 1:
    raise ValueError(f'complete: expected steps >= 1, got {steps}')
  longest = max(np.asarray(p).size for p in prompts)
  lens = power_of_two_buckets(next_power_of_two(max(longest, min_bucket)), min_bucket)
  counts = count_buckets(len(prompts))
  cache_len = next_power_of_two(longest + steps)
  if packed:
    batch = pack_batch(prompts, bucket(longest, lens), row_buckets=counts, prompt_buckets=counts)
    last, cache = prefill_packed(model, params, batch, cache_len)
  else:
    batch = pad_batch(prompts, len_buckets=lens, prompt_buckets=counts)
    last, cache = prefill_padded(model, params, batch, cache_len)
  rng = jax.random.key(0) if rng is None else rng
  out = generate(
    model,
    params,
    cache,
    last,
    batch.lengths,
    rng,
    steps=steps,
    temperature=temperature,
    eos_id=eos_id,
  )
  return list(np.asarray(out)[: len(prompts)])
