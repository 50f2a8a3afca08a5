"""Per-prompt KV caches: the transformer's `'cache'` collection, one row per prompt.

A cache is the pytree the attention layers keep in the `'cache'` variable collection,
`{'block_i': {'attention': {'key': [P, S, heads, head_dim], 'value': ...}}}` (keys after RoPE),
where slot `j` of prompt `p` holds its token at position `j`. Slots past a prompt's length are
zero and are never attended to (`jaxlab.nn.AttentionInputs`, `cache='decode'`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Cache = Any  # the 'cache' collection: a nested dict of [B, S, heads, head_dim] arrays


def gather_cache(
  row_cache: Cache, rows: jax.Array, offsets: jax.Array, lengths: jax.Array, cache_len: int
) -> Cache:
  """Per-prompt caches out of the caches of packed rows.

  `out[p, j] = row_cache[rows[p], offsets[p] + j]` for `j < lengths[p]`, zero after.

  Args:
    row_cache: the caches of `R` rows of length `L`, leaves `[R, L, heads, head_dim]`.
    rows: `[P]` the row of each prompt.
    offsets: `[P]` where each prompt starts in its row.
    lengths: `[P]` the length of each prompt (0 for a padding prompt: all zero).
    cache_len: `S`, the slots of the result (at least the longest prompt plus the tokens to be
      generated).

  Returns:
    The per-prompt cache, leaves `[P, S, heads, head_dim]`.
  """
  slots = jnp.arange(cache_len)
  valid = slots < lengths[:, None]  # [P, S]
  cols = jnp.where(valid, offsets[:, None] + slots, 0)

  def take(a: jax.Array) -> jax.Array:
    gathered = a[rows[:, None], cols]  # [P, S, heads, head_dim]
    return jnp.where(valid[:, :, None, None], gathered, jnp.zeros((), a.dtype))

  return jax.tree.map(take, row_cache)


def prompt_cache(cache: Cache, index: int, length: int) -> Cache:
  """Prompt `index`'s filled slots, leaves `[length, heads, head_dim]`."""
  return jax.tree.map(lambda a: a[index, :length], cache)


def cache_bytes(cache: Cache) -> int:
  """Bytes held by a cache (or any pytree of arrays)."""
  return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(cache)))
