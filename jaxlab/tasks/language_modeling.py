"""Next-token prediction: the task behind every LM experiment.

Data (`config.data.source`): the embedded CPython corpus, a user text file (both byte-level),
a memory-mapped token file, or a synthetic sequence task with known answers (scored only where
the answer is known). Loss: mean cross-entropy in nats per token; for byte-level text it is also
reported as bits per byte, `loss / ln 2` (a uniform byte model scores 8.0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.core import data
from jaxlab.core.config import base_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.task import TASKS, Batch, DataIterator
from jaxlab.nn import build_model, transformer_config

SOURCES = ('embedded', 'text', 'tokens', 'synthetic')

LM_SCALES = {
  # name: (width, depth, heads, mlp_dim, seq_len, batch, steps, lr, warmup, dtype)
  'tiny': (128, 2, 4, 512, 128, 16, 300, 3e-3, 30, 'float32'),  # ~1 CPU-minute, 0.44 M params
  'small': (384, 6, 6, 1536, 256, 32, 2000, 1e-3, 200, 'float32'),  # ~10.8 M params
  'gpu': (768, 18, 12, 3072, 1024, 64, 5000, 6e-4, 500, 'bfloat16'),  # ~128 M params, one GPU
}


def lm_config(scale: str = 'tiny') -> ml_collections.ConfigDict:
  """The baseline byte-level transformer LM on the embedded corpus at a named scale
  (`LM_SCALES`): the config every LM experiment starts from (`experiments/lm.py` adds its claim)."""
  if scale not in LM_SCALES:
    raise ConfigError(f'lm scale: expected one of {sorted(LM_SCALES)}, got {scale!r}')
  width, depth, heads, mlp, seq_len, batch, steps, lr, warmup, dtype = LM_SCALES[scale]
  c = base_config()
  c.model = transformer_config(
    width=width, depth=depth, heads=heads, mlp_dim=mlp, max_len=seq_len, dtype=dtype
  )
  c.data.seq_len = seq_len
  c.data.batch_size = batch
  c.optim.lr = lr
  c.optim.warmup_steps = warmup
  c.train.steps = steps
  c.train.eval_every = max(steps // 5, 1)
  c.checkpoint.every = max(steps // 4, 1)
  return c


def sown_scalars(intermediates: Any) -> dict[str, jax.Array]:
  """Scalars a layer `sow`ed (e.g. ParaRNN's `newton_residual`), max over layers, by name."""
  out: dict[str, jax.Array] = {}
  for path, value in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    name = next(str(k.key) for k in reversed(path) if hasattr(k, 'key'))
    value = jnp.max(jnp.asarray(value, jnp.float32))
    out[name] = jnp.maximum(out[name], value) if name in out else value
  return out


@TASKS.register('lm')
class LanguageModelingTask:
  """Causal LM on `config.data` with the model `config.model` (a `ModelTask`)."""

  def __init__(self, config: ml_collections.ConfigDict):
    d = config.data
    if d.source not in SOURCES:
      raise ConfigError(f'data.source: expected one of {SOURCES}, got {d.source!r}')
    if d.source in ('text', 'tokens') and not d.path:
      raise ConfigError(f"data.path: expected a file for data.source={d.source!r}, got ''")
    if d.source in ('tokens', 'synthetic') and d.vocab_size <= 0:
      raise ConfigError(
        f'data.vocab_size: expected the vocabulary size of the {d.source} data, got {d.vocab_size}'
      )
    self._data_cfg = d
    if d.source == 'synthetic':
      data.SYNTHETIC_TASKS.get(d.synthetic, 'data.synthetic')
      self._train, self._val = None, None
    else:
      try:
        self._train, self._val = data.load_corpus(
          d.source, d.path, val_fraction=d.val_fraction, dtype=d.token_dtype
        )
      except (OSError, ValueError) as e:
        raise ConfigError(f'data: {e}') from None
      if d.train_tokens:  # a fixed data budget (epochs = steps x batch x seq_len / budget)
        if not d.seq_len < d.train_tokens <= self._train.size:
          raise ConfigError(
            f'data.train_tokens: expected seq_len < train_tokens <= {self._train.size} (the '
            f'train split), got {d.train_tokens}'
          )
        self._train = self._train[: d.train_tokens]
      need = d.batch_size * (d.seq_len + 1)
      if self._val.size < need:
        raise ConfigError(
          f'data.val_fraction: the validation split has {self._val.size} tokens, '
          f'expected at least batch_size x (seq_len + 1) = {need}'
        )
    vocab_size = (
      d.vocab_size if d.source in ('tokens', 'synthetic') else data.ByteTokenizer.vocab_size
    )
    self.model_config = config.model
    self.model_size = vocab_size
    self.model = build_model(config.model, vocab_size)
    max_len = getattr(self.model.cfg, 'max_len', d.seq_len)
    if d.seq_len > max_len:
      raise ConfigError(f'data.seq_len: expected at most model.max_len={max_len}, got {d.seq_len}')
    self.byte_level = d.source in ('embedded', 'text')
    self.items_per_batch = d.batch_size * d.seq_len
    self.title = f'{config.model.name} language model on {d.source} data'

  def init_params(self, rng: jax.Array) -> Any:
    tokens = jnp.zeros((1, self._data_cfg.seq_len), jnp.int32)
    return self.model.init(rng, tokens)['params']

  def init_model_state(self, rng: jax.Array) -> Any:
    del rng
    return {}

  def example_inputs(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, self._data_cfg.seq_len), jnp.int32)

  def forward(self, variables: Any, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """Next-token logits `[batch, length, vocab]` (`ModelTask`: what pruning scores call)."""
    return self.model.apply(variables, inputs, deterministic=not train)

  def loss(
    self,
    params: Any,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    train: bool,
    model_state: Any = None,
  ) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array, Any]]:
    del model_state  # the transformer and the recurrent mixers keep none
    chex.assert_equal_shape([batch['inputs'], batch['targets']])
    logits, state = self.model.apply(
      {'params': params},
      batch['inputs'],
      deterministic=not train,
      rngs={'dropout': rng},
      mutable=['intermediates'],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    mask = batch.get('mask')
    mask = jnp.ones_like(ce) if mask is None else mask.astype(ce.dtype)
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (ce * mask).sum() / denom
    correct = (jnp.argmax(logits, -1) == batch['targets']).astype(ce.dtype)
    metrics = {'loss': loss, 'accuracy': (correct * mask).sum() / denom}
    if self.byte_level:
      metrics['bits_per_byte'] = loss / math.log(2)
    metrics.update(sown_scalars(state.get('intermediates', {})))
    return loss, (metrics, logits, {})

  def _synthetic(self, seed: int, process_index: int, process_count: int) -> DataIterator:
    d = self._data_cfg
    return data.SyntheticIterator(
      d.synthetic,
      batch_size=d.batch_size,
      seq_len=d.seq_len,
      vocab_size=d.vocab_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )

  def train_iterator(self, seed: int, process_index: int, process_count: int) -> DataIterator:
    d = self._data_cfg
    if d.source == 'synthetic':
      return self._synthetic(seed, process_index, process_count)
    return data.WindowIterator(
      self._train,
      batch_size=d.batch_size,
      seq_len=d.seq_len,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
    )

  def eval_batches(self, process_index: int, process_count: int) -> list[Batch]:
    d = self._data_cfg
    if d.source == 'synthetic':  # held-out draws: a seed no training run uses
      it = self._synthetic(2**31 - 1, process_index, process_count)
      return [next(it) for _ in range(d.eval_batches)]
    return data.eval_batches(
      self._val,
      batch_size=d.batch_size,
      seq_len=d.seq_len,
      max_batches=d.eval_batches,
      process_index=process_index,
      process_count=process_count,
    )
