"""Decoder-only transformer LM (GPT-style, pre-norm, RoPE) with pluggable parts.

Every part is looked up by name from `TransformerConfig`, so a paper's variant is a registered
piece, never a forked model:

  block      BLOCKS      'prenorm'            x + mixer(norm(x)); x + ffn(norm(x))
  mixer      MIXERS      'attention'          multi-head causal self-attention with RoPE
                         'paragru', 'paralstm' Newton-parallel recurrences (jaxlab.nn.rnn)
  ffn        FFNS        'mlp', 'glu'         2-matrix MLP; gated (SwiGLU with activation='silu')
  activation ACTIVATIONS 'relu', 'gelu', ...  jaxlab.nn.activations
  norm       NORMS       'rmsnorm', ...       jaxlab.nn.normalization

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`) that
`jaxlab.core.sharding` maps onto the device mesh; activations carry `batch`, `length`.

Inference (`jaxlab.inference`) passes an `AttentionInputs` through the blocks: explicit position
ids, segment ids (a block-diagonal causal mask for packed prompts) and a KV cache kept in the
`'cache'` variable collection. Without it the model computes exactly what it always did.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core.errors import ConfigError
from jaxlab.core.registry import Registry
from jaxlab.nn.activations import ACTIVATIONS
from jaxlab.nn.models import MODELS, from_model_config, model_config
from jaxlab.nn.normalization import NORMS
from jaxlab.nn.rnn import NewtonConfig, ParaGRU, ParaLSTM
from jaxlab.nn.rope import apply_rope

MIXERS: Registry[type[nn.Module]] = Registry('sequence mixer')
FFNS: Registry[type[nn.Module]] = Registry('ffn')
BLOCKS: Registry[type[nn.Module]] = Registry('block')

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of `TransformerLM` (the `config.model` fields, minus `name`)."""

  vocab_size: int
  width: int = 256
  depth: int = 4
  heads: int = 4
  head_width: int = 0  # per-head q/k/v width; 0: width // heads (set by head pruning's crop)
  mlp_dim: int = 1024
  max_len: int = 256
  block: str = 'prenorm'
  mixer: str = 'attention'
  ffn: str = 'mlp'
  activation: str = 'gelu'
  norm: str = 'rmsnorm'
  rope_base: float = 10000.0
  tie_embeddings: bool = True
  dropout: float = 0.0
  init_std: float = 0.02
  dtype: str = 'float32'  # compute dtype; 'bfloat16' for mixed precision
  param_dtype: str = 'float32'
  vocab_multiple: int = 128  # the embedding is padded to a multiple of this (shardable, fast)
  attention_impl: str = ''  # '' lets JAX choose; 'xla' or 'cudnn' to force one
  remat: bool = False  # recompute each block in the backward pass (saves memory)
  rnn_mode: str = 'parallel'  # recurrent mixers: 'parallel' (Newton) or 'sequential' (lax.scan)
  rnn_iterations: int = 3  # recurrent mixers: Newton iterations (ParaRNN uses 3)
  rnn_heads: int = 1  # recurrent mixers: input-projection heads (1: 4·width² params = attention)
  rnn_fallback_tol: float = 0.0  # > 0: a batch whose Newton residual exceeds it runs lax.scan
  aug_shortcuts: int = 1  # block 'augmented': parallel shortcut branches (PanGu-π)
  aug_rank: int = 8  # block 'augmented': bottleneck width of each branch

  def __post_init__(self):
    def bad(field, expected, got):
      raise ConfigError(f'model.{field}: expected {expected}, got {got!r}')

    for f in ('vocab_size', 'width', 'depth', 'heads', 'mlp_dim', 'max_len', 'vocab_multiple'):
      if getattr(self, f) <= 0:
        bad(f, 'a positive integer', getattr(self, f))
    if self.aug_shortcuts < 0:
      bad('aug_shortcuts', 'a non-negative integer', self.aug_shortcuts)
    if self.aug_rank <= 0:
      bad('aug_rank', 'a positive integer', self.aug_rank)
    if self.head_width < 0:
      bad('head_width', 'a non-negative integer (0: width // heads)', self.head_width)
    if not self.head_width and self.width % self.heads:
      bad('width', f'a multiple of model.heads={self.heads}', self.width)
    if self.head_dim % 2:
      bad('heads', f'head_dim = width/heads even for RoPE (width={self.width})', self.heads)
    if not 0.0 <= self.dropout < 1.0:
      bad('dropout', 'a value in [0, 1)', self.dropout)
    for f in ('dtype', 'param_dtype'):
      if getattr(self, f) not in _DTYPES:
        bad(f, f'one of {sorted(_DTYPES)}', getattr(self, f))
    if self.attention_impl not in ('', 'xla', 'cudnn'):
      bad('attention_impl', "one of '', 'xla', 'cudnn'", self.attention_impl)
    BLOCKS.get(self.block, 'model.block')
    MIXERS.get(self.mixer, 'model.mixer')
    FFNS.get(self.ffn, 'model.ffn')
    ACTIVATIONS.get(self.activation, 'model.activation')
    NORMS.get(self.norm, 'model.norm')

  @property
  def head_dim(self) -> int:
    return self.head_width or self.width // self.heads

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def compute_dtype(self) -> jnp.dtype:
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self) -> jnp.dtype:
    return _DTYPES[self.param_dtype]

  def kernel_init(self, *axes: str, scale: float = 1.0) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.normal(self.init_std * scale), axes)

  def dense(self, features: int, axes: tuple[str, str], name: str, scale: float = 1.0) -> nn.Dense:
    """A bias-free `nn.Dense` whose kernel dimensions are named `axes`."""
    return nn.Dense(
      features,
      use_bias=False,
      dtype=self.compute_dtype,
      param_dtype=self.weight_dtype,
      kernel_init=self.kernel_init(*axes, scale=scale),
      name=name,
    )

  def norm_layer(self, name: str) -> nn.Module:
    return NORMS.get(self.norm)(dtype=self.compute_dtype, param_dtype=self.weight_dtype, name=name)

  @property
  def residual_scale(self) -> float:
    """GPT-2 init: output projections into the residual stream scaled by 1/sqrt(2·depth)."""
    return (2 * self.depth) ** -0.5


CACHE_MODES = ('', 'write', 'decode')


@flax.struct.dataclass
class AttentionInputs:
  """What inference adds to a forward pass (Prepacking, Zhao et al., 2024, arXiv:2404.09529).

  Attributes:
    positions: `[B, T]` position id of each token (RoPE); they restart at 0 for every prompt
      packed into a row.
    segment_ids: `[B, T]` or None. Token `t` attends to token `s <= t` only when
      `segment_ids[b, s] == segment_ids[b, t]` (a block-diagonal causal mask); None is the plain
      causal mask.
    cache: `''` keeps no cache; `'write'` stores this call's (rotated) keys and values, `[B, T,
      heads, head_dim]`, in the `'cache'` collection (prefill); `'decode'` reads a `'cache'`
      whose slot `j` holds position `j` of each sequence, writes this call's keys and values at
      their positions and lets a query at position `p` attend to the slots `j <= p`.
  """

  positions: jax.Array
  segment_ids: jax.Array | None = None
  cache: str = flax.struct.field(pytree_node=False, default='')

  def __post_init__(self):
    if self.cache not in CACHE_MODES:
      raise ValueError(f'AttentionInputs.cache: expected one of {CACHE_MODES}, got {self.cache!r}')
    if self.cache == 'decode' and self.segment_ids is not None:
      raise ValueError('AttentionInputs: expected segment_ids=None with cache="decode"')


def _write_at(cache: jax.Array, positions: jax.Array, update: jax.Array) -> jax.Array:
  """`cache[b, positions[b, t]] = update[b, t]`: `[B, S, ...]`, `[B, T]`, `[B, T, ...]`."""
  return jax.vmap(lambda c, p, u: c.at[p].set(u.astype(c.dtype)))(cache, positions, update)


class Projection(nn.Module):
  """`einsum(spec, x, kernel)` with a kernel of `shape` whose dimensions are named `axes`.

  Used for the per-head projections, whose kernels are 3-D (`embed, heads, kv`) so that heads
  can be sharded on their own axis.
  """

  spec: str
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  cfg: TransformerConfig
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    kernel = self.param(
      'kernel', cfg.kernel_init(*self.axes, scale=self.scale), self.shape, cfg.weight_dtype
    )
    return jnp.einsum(self.spec, x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype))


@MIXERS.register('attention')
class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention, `softmax(q kᵀ / sqrt(d) + causal mask) v`, RoPE on q, k."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    *,
    deterministic: bool,
    attn: AttentionInputs | None = None,
  ) -> jax.Array:
    cfg = self.cfg
    shape, axes = (cfg.width, cfg.heads, cfg.head_dim), ('embed', 'heads', 'kv')
    q, k, v = (
      Projection('btd,dnh->btnh', shape, axes, cfg, name=n)(x) for n in ('query', 'key', 'value')
    )
    q = apply_rope(q, positions, cfg.rope_base)
    k = apply_rope(k, positions, cfg.rope_base)
    q, k, v = (nn.with_logical_constraint(t, ('batch', 'length', 'heads', 'kv')) for t in (q, k, v))
    if attn is None:
      out = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=cfg.attention_impl or None
      )
    else:
      out = self._attend_with(attn, q, k, v)
    return Projection(
      'btnh,nhd->btd',
      (cfg.heads, cfg.head_dim, cfg.width),
      ('heads', 'kv', 'embed'),
      cfg,
      scale=cfg.residual_scale,
      name='out',
    )(out)

  def _attend_with(self, attn: AttentionInputs, q, k, v) -> jax.Array:
    """Attention under `attn`'s mask, reading/writing the `'cache'` collection it asks for."""
    impl = self.cfg.attention_impl or None
    if attn.cache == 'decode':
      if not self.has_variable('cache', 'key'):
        raise ValueError('AttentionInputs(cache="decode"): expected a "cache" collection')
      keys = _write_at(self.get_variable('cache', 'key'), attn.positions, k)
      values = _write_at(self.get_variable('cache', 'value'), attn.positions, v)
      self.put_variable('cache', 'key', keys)
      self.put_variable('cache', 'value', values)
      mask = jnp.arange(keys.shape[1]) <= attn.positions[..., None]  # [B, T, S]
      q = q.astype(keys.dtype)
      return jax.nn.dot_product_attention(q, keys, values, mask=mask[:, None], implementation=impl)
    if attn.cache == 'write':
      self.put_variable('cache', 'key', k)
      self.put_variable('cache', 'value', v)
    if attn.segment_ids is None:
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    seg = attn.segment_ids
    t = seg.shape[1]
    mask = (seg[:, :, None] == seg[:, None, :]) & jnp.tril(jnp.ones((t, t), bool))
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)


class RecurrentMixer(nn.Module):
  """A ParaRNN cell as the sequence mixer: `W_o RNN(x)` with `model.rnn_heads` input heads.

  With one head its parameters (3·width² input + width² output) match attention's 4·width².

  Positions are not used: the recurrence itself is causal and order-aware.
  """

  cfg: TransformerConfig
  cell: type[nn.Module]

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    *,
    deterministic: bool,
    attn: AttentionInputs | None = None,
  ) -> jax.Array:
    del positions, deterministic
    cfg = self.cfg
    if attn is not None:
      raise ValueError(
        f'model.mixer: packed prefill and KV-cache decoding (AttentionInputs) need an attention '
        f'mixer, got the recurrent {self.name!r}'
      )
    h = self.cell(
      cfg.width,
      mode=cfg.rnn_mode,
      heads=cfg.rnn_heads,
      newton=NewtonConfig(
        iterations=cfg.rnn_iterations,
        fallback=cfg.rnn_fallback_tol > 0,
        fallback_tol=cfg.rnn_fallback_tol or 1e-3,
      ),
      dtype=cfg.compute_dtype,
      param_dtype=cfg.weight_dtype,
      name='cell',
    )(x)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    return cfg.dense(cfg.width, ('mlp', 'embed'), 'out', scale=cfg.residual_scale)(h)


MIXERS.register('paragru')(functools.partial(RecurrentMixer, cell=ParaGRU))
MIXERS.register('paralstm')(functools.partial(RecurrentMixer, cell=ParaLSTM))


@FFNS.register('mlp')
class MLP(nn.Module):
  """Two-matrix feed-forward block `W_o act(W_i x)`."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    h = cfg.dense(cfg.mlp_dim, ('embed', 'mlp'), 'wi')(x)
    h = nn.with_logical_constraint(ACTIVATIONS.get(cfg.activation)(h), ('batch', 'length', 'mlp'))
    return cfg.dense(cfg.width, ('mlp', 'embed'), 'wo', scale=cfg.residual_scale)(h)


@FFNS.register('glu')
class GLU(nn.Module):
  """Gated feed-forward block `W_o (act(W_g x) ⊙ W_u x)` (Shazeer, 2020); SwiGLU with silu."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    gate = cfg.dense(cfg.mlp_dim, ('embed', 'mlp'), 'wi_gate')(x)
    up = cfg.dense(cfg.mlp_dim, ('embed', 'mlp'), 'wi_up')(x)
    h = nn.with_logical_constraint(
      ACTIVATIONS.get(cfg.activation)(gate) * up, ('batch', 'length', 'mlp')
    )
    return cfg.dense(cfg.width, ('mlp', 'embed'), 'wo', scale=cfg.residual_scale)(h)


@BLOCKS.register('prenorm')
class PreNormBlock(nn.Module):
  """Pre-norm residual block: `x += mixer(norm(x)); x += ffn(norm(x))` (GPT-2 / LLaMA layout).

  A variant that adds more shortcut branches around the mixer (PanGu-π's augmented shortcut)
  subclasses it and overrides `mixer_shortcuts(z)`, a term added to the residual stream from
  the mixer's normalised input `z` (none here).
  """

  cfg: TransformerConfig

  def mixer_shortcuts(self, z: jax.Array) -> jax.Array | None:
    del z
    return None

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    deterministic: bool,
    attn: AttentionInputs | None = None,
  ) -> jax.Array:
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout)
    mixer = MIXERS.get(cfg.mixer)(cfg, name=cfg.mixer)
    ffn = FFNS.get(cfg.ffn)(cfg, name='ffn')
    extra = {} if attn is None else {'attn': attn}  # mixers registered elsewhere may not take it
    z = cfg.norm_layer('mixer_norm')(x)
    h = mixer(z, positions, deterministic=deterministic, **extra)
    x = x + drop(h, deterministic=deterministic)
    shortcuts = self.mixer_shortcuts(z)
    if shortcuts is not None:
      x = x + shortcuts
    h = ffn(cfg.norm_layer('ffn_norm')(x), deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class TransformerLM(nn.Module):
  """Decoder-only LM: token ids `[B, T]` -> next-token logits `[B, T, padded_vocab]` (float32).

  Logits of the padding entries of the vocabulary are set to a large negative number, so a
  softmax over the padded vocabulary equals one over the real one.

  `attn` (inference: packed prompts, KV cache) replaces the positions `0..T-1` by
  `attn.positions` and goes to every block; a block then gets it as the keyword `attn`.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(
    self, tokens: jax.Array, *, deterministic: bool = True, attn: AttentionInputs | None = None
  ) -> jax.Array:
    chex.assert_rank(tokens, 2)
    chex.assert_type(tokens, int)
    cfg = self.cfg
    embed = nn.Embed(
      cfg.padded_vocab_size,
      cfg.width,
      dtype=cfg.compute_dtype,
      param_dtype=cfg.weight_dtype,
      embedding_init=cfg.kernel_init('vocab', 'embed'),
      name='embed',
    )
    if attn is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    else:
      chex.assert_equal_shape([tokens, attn.positions])
      positions = attn.positions
    extra = {} if attn is None else {'attn': attn}
    x = nn.with_logical_constraint(embed(tokens), ('batch', 'length', 'embed'))
    block_cls = BLOCKS.get(cfg.block)
    if cfg.remat and attn is None:  # inference has no backward pass, nothing to recompute
      block_cls = nn.remat(block_cls, static_argnums=(3,))  # self, x, positions, deterministic
    for i in range(cfg.depth):
      x = block_cls(cfg, name=f'block_{i}')(x, positions, deterministic, **extra)
    x = cfg.norm_layer('final_norm')(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = cfg.dense(cfg.padded_vocab_size, ('embed', 'vocab'), 'unembed')(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
    valid = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
    return jnp.where(valid, logits, -1e9)


def transformer_config(**overrides) -> ml_collections.ConfigDict:
  """`config.model` for the transformer with every field present, then `overrides`."""
  return model_config(TransformerConfig, 'transformer', exclude=('vocab_size',), **overrides)


@MODELS.register('transformer')
def build_transformer(cfg: ml_collections.ConfigDict, vocab_size: int) -> TransformerLM:
  return TransformerLM(from_model_config(TransformerConfig, cfg, vocab_size=vocab_size))
