"""A small random transformer shared by the inference tests (float32, two layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.nn import TransformerConfig, TransformerLM

VOCAB = 40


@pytest.fixture(scope='session')
def lm():
  # init_std 0.3: a random model whose greedy continuations vary (at 0.02 they repeat a token).
  cfg = TransformerConfig(
    vocab_size=VOCAB,
    width=32,
    depth=2,
    heads=2,
    mlp_dim=64,
    max_len=32,
    vocab_multiple=64,
    init_std=0.3,
  )
  model = TransformerLM(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  return model, params


def random_prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, VOCAB, n).astype(np.int32) for n in lengths]
