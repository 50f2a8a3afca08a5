"""Prefill: one forward pass over the prompts that returns each prompt's last-token logits and
its KV cache, prepacked (Prepacking, Zhao et al., 2024, arXiv:2404.09529) or padded to the longest.

Prepacked, a row of `L` slots holds several prompts; the mask lets token `t` attend to token
`s` only if `s <= t` and both belong to the same prompt (block-diagonal causal), and position
ids restart at 0 for each prompt, so each prompt's logits and keys/values equal those of the
prompt run alone. The row caches are then gathered into per-prompt caches
(`jaxlab.inference.kv_cache.gather_cache`) from which decoding continues.

Both prefill functions are jitted with the model and the cache length static: a new shape of
the batch arrays compiles again, hence the buckets of `jaxlab.inference.packing`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.inference.kv_cache import Cache, gather_cache
from jaxlab.inference.packing import PackedBatch, PaddedBatch
from jaxlab.nn.transformer import AttentionInputs


def forward_with_cache(
  model: nn.Module,
  params: Any,
  tokens: jax.Array,
  positions: jax.Array,
  segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, Cache]:
  """Logits `[B, T, V]` and the keys/values of every position (leaves `[B, T, heads, hd]`)."""
  logits, state = model.apply(
    {'params': params},
    tokens,
    attn=AttentionInputs(positions, segment_ids, cache='write'),
    mutable=['cache'],
  )
  return logits, state['cache']


@functools.partial(jax.jit, static_argnames=('model', 'cache_len'))
def prefill_packed(
  model: nn.Module, params: Any, batch: PackedBatch, cache_len: int
) -> tuple[jax.Array, Cache]:
  """Prepacked prefill: `[P, V]` last-token logits and the per-prompt caches `[P, cache_len]`."""
  logits, row_cache = forward_with_cache(
    model, params, batch.tokens, batch.positions, batch.segment_ids
  )
  last = jnp.maximum(batch.offsets + batch.lengths - 1, 0)
  return logits[batch.rows, last], gather_cache(
    row_cache, batch.rows, batch.offsets, batch.lengths, cache_len
  )


@functools.partial(jax.jit, static_argnames=('model', 'cache_len'))
def prefill_padded(
  model: nn.Module, params: Any, batch: PaddedBatch, cache_len: int
) -> tuple[jax.Array, Cache]:
  """The baseline: one prompt per row, padded to the longest; same outputs as `prefill_packed`."""
  num, width = batch.tokens.shape
  positions = jnp.broadcast_to(jnp.arange(width), (num, width))
  logits, cache = forward_with_cache(model, params, batch.tokens, positions)
  index = jnp.arange(num)
  last = jnp.maximum(batch.lengths - 1, 0)
  zeros = jnp.zeros_like(batch.lengths)
  return logits[index, last], gather_cache(cache, index, zeros, batch.lengths, cache_len)


def unpack_logits(logits: jax.Array, batch: PackedBatch) -> list[jax.Array]:
  """Each prompt's logits `[n_p, V]` out of the packed rows' logits `[R, L, V]`."""
  return [
    logits[int(r), int(o) : int(o) + int(n)]
    for r, o, n in zip(batch.rows, batch.offsets, batch.lengths, strict=True)
    if n > 0
  ]
