"""Inference: prepacked prefill (Zhao et al., 2024), per-prompt KV caches and cached decoding.

  rows = pack_prompts(lengths, max_len)          # first-fit decreasing
  batch = pack_batch(prompts, row_len, row_buckets=..., prompt_buckets=...)
  last_logits, cache = prefill_packed(model, params, batch, cache_len)
  tokens = generate(model, params, cache, last_logits, batch.lengths, rng, steps=32)

or all at once, `complete(model, params, prompts, steps=32)`.
"""

from jaxlab.inference.decode import complete, decode_step, generate, sample
from jaxlab.inference.kv_cache import cache_bytes, gather_cache, prompt_cache
from jaxlab.inference.packing import (
  PackedBatch,
  PaddedBatch,
  bucket,
  count_buckets,
  next_power_of_two,
  pack_batch,
  pack_prompts,
  pad_batch,
  power_of_two_buckets,
)
from jaxlab.inference.prefill import (
  forward_with_cache,
  prefill_packed,
  prefill_padded,
  unpack_logits,
)

__all__ = [
  'PackedBatch',
  'PaddedBatch',
  'bucket',
  'cache_bytes',
  'complete',
  'count_buckets',
  'decode_step',
  'forward_with_cache',
  'gather_cache',
  'generate',
  'next_power_of_two',
  'pack_batch',
  'pack_prompts',
  'pad_batch',
  'power_of_two_buckets',
  'prefill_packed',
  'prefill_padded',
  'prompt_cache',
  'sample',
  'unpack_logits',
]
