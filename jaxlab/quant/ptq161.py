"""PTQ1.61: 4-bit salient input channels, binarized rest, learned scales (Zhao et al., 2025).

For a linear layer `y = xW` (`W ∈ R^{in×out}`), PTQ1.61 (arXiv 2502.13179) splits the *input
channels* (rows of W) with a one-dimensional structured mask:

- the salient rows — the `round(fraction·in)` input channels with the largest calibration activation
  magnitude `max_t |x_t|` (about 20%; the authors' code ranks `act_scales`, the per-channel
  maximum) — are quantized to 4 bits (asymmetric min/max grid per output channel);
- the other rows are binarized around a per-output-channel mean `μ` with learnable scales
  (the "block-wise scaling factors"):
  `ŵ_ij = (α_j · sign(w_ij − μ_j) + μ_j) · r^out_j · r^in_i`, `α` initialised to
  `mean_i |w_ij − μ_j|` (the least-squares scale for fixed signs), `r^out = r^in = 1`. `α`,
  `r^out` and `r^in` are then optimised by block-wise reconstruction (`reconstruction.py`).

The mask costs one bit per input channel, `1/out` bits per weight (0.0002 for a 4096-wide
LLaMA layer), instead of one bit per weight for an unstructured mask. Stored (every bit counted
by `storage_bits`): the packed mask, the 4-bit `QuantizedTensor` of the salient rows (codes,
float16 scales, uint8 zero-points), the packed sign bits of the other rows, and float16
`a = α·r^out`, `m = μ·r^out` per output channel and `r^in` per binarized row. Bits per weight:

  (4·k + (in − k))·out + in  +  (16 + 8 + 2·16)·out + 16·(in − k)   over   in·out,

with `k` salient rows (plus the padding of the last packed word), `≈ 4s + (1 − s)` = 1.6 at
`s = 0.2` for large layers.

The details (statistic, initialisation, learned factors, loss, learning rates) follow the
authors' code (github.com/zjq0455/PTQ1.61: `generate_act_scale_shift.py`,
`quantize/blockptq.py`, `models/int_llama_layer.py`); the paper's section text was not read.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxlab.nn.transformer import BLOCKS
from jaxlab.quant import packing
from jaxlab.quant.calibration import (
  check_collected,
  collect_block_inputs,
  collect_layer_stats,
  kernel_at,
  with_kernels,
)
from jaxlab.quant.model import as_matrix, kernel_paths
from jaxlab.quant.reconstruction import block_loss, reconstruct
from jaxlab.quant.tensor import QuantizedTensor, quantize
from jaxlab.sparsity import lowrank


def _bits(x: jax.Array) -> int:
  return int(x.size) * jnp.dtype(x.dtype).itemsize * 8


def num_salient(num_in: int, fraction: float) -> int:
  """`k = round(fraction · in)` salient input channels, at least 1 and at most `in − 1`."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'fraction: expected a salient fraction in (0, 1), got {fraction!r}')
  return min(max(round(fraction * num_in), 1), num_in - 1)


def salient_mask(act_stat: jax.Array, fraction: float) -> jax.Array:
  """Boolean `[in]` mask of the `num_salient(in, fraction)` channels with the largest `act_stat`.

  Ties are broken towards the lower channel index, so exactly `k` channels are chosen.
  """
  act_stat = jnp.asarray(act_stat, jnp.float32)
  if act_stat.ndim != 1:
    raise ValueError(f'act_stat: expected a [in] vector, got shape {act_stat.shape}')
  k = num_salient(act_stat.shape[0], fraction)
  top = jnp.argsort(-act_stat, stable=True)[:k]
  return jnp.zeros(act_stat.shape, bool).at[top].set(True)


@struct.dataclass
class SaliencyMaskedTensor:
  """A PTQ1.61 weight: structured input-channel mask, 4-bit salient rows, binarized rest.

  Attributes:
    mask: `uint32` words, one bit per input channel (`packing.pack_bits`), 1 = salient.
    salient: `QuantizedTensor` of the `[k, out]` salient rows (in channel order).
    signs: `uint32` words of the `[in − k, out]` sign bits of the other rows (1 = `w ≥ μ`).
    scale: `[out]` `a = α·r^out`.
    shift: `[out]` `m = μ·r^out`.
    row_scale: `[in − k]` `r^in` of the binarized rows.
    shape: `(in, out)`.
    num_salient: `k`.
  """

  mask: jax.Array
  salient: QuantizedTensor
  signs: jax.Array
  scale: jax.Array
  shift: jax.Array
  row_scale: jax.Array
  shape: tuple[int, int] = struct.field(pytree_node=False)
  num_salient: int = struct.field(pytree_node=False)

  @property
  def num_weights(self) -> int:
    return math.prod(self.shape)

  def salient_rows(self) -> jax.Array:
    """The `[in]` boolean mask."""
    return packing.unpack_bits(self.mask, self.shape[0]).astype(bool)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """`ŵ`: salient rows from the 4-bit tensor, the others `(a·sign + m)·r^in`."""
    return _dequantize(self).astype(dtype)

  def _dequantize(self) -> jax.Array:
    n_in, n_out = self.shape
    k = self.num_salient
    mask = self.salient_rows()
    sal_idx = jnp.nonzero(mask, size=k)[0]
    bin_idx = jnp.nonzero(~mask, size=n_in - k)[0]
    sign = 2.0 * packing.unpack(self.signs, 1, (n_in - k, n_out)).astype(jnp.float32) - 1.0
    binary = (sign * self.scale.astype(jnp.float32) + self.shift.astype(jnp.float32)) * (
      self.row_scale.astype(jnp.float32)[:, None]
    )
    w = jnp.zeros(self.shape, jnp.float32)
    return w.at[sal_idx].set(self.salient.dequantize()).at[bin_idx].set(binary)

  def storage_bits(self) -> int:
    """Mask, salient tensor, sign bits and the three scale vectors, at their stored dtypes."""
    return (
      _bits(self.mask)
      + self.salient.storage_bits()
      + _bits(self.signs)
      + _bits(self.scale)
      + _bits(self.shift)
      + _bits(self.row_scale)
    )


_dequantize = jax.jit(SaliencyMaskedTensor._dequantize)


@struct.dataclass
class Ptq161Layer:
  """What block-wise reconstruction needs of one layer: the fixed parts and the learned scales.

  `theta` = `{'alpha': [out], 'r_out': [out], 'r_in': [in − k]}` is what is optimised; the mask,
  the salient 4-bit rows and the mean `μ` stay fixed.
  """

  w: jax.Array  # [in, out] float weight
  mask: jax.Array  # [in] bool
  salient: QuantizedTensor  # [k, out]
  mu: jax.Array  # [out]
  num_salient: int = struct.field(pytree_node=False)

  def binary_rows(self) -> jax.Array:
    return self.w[jnp.nonzero(~self.mask, size=self.w.shape[0] - self.num_salient)[0]]

  def fake_quant(self, theta: dict[str, jax.Array]) -> jax.Array:
    """`ŵ` in float32 as a differentiable function of `theta` (signs are fixed)."""
    wb = self.binary_rows()
    sign = jnp.where(wb >= self.mu, 1.0, -1.0)
    binary = (sign * theta['alpha'] + self.mu) * theta['r_out'] * theta['r_in'][:, None]
    n_in = self.w.shape[0]
    sal_idx = jnp.nonzero(self.mask, size=self.num_salient)[0]
    bin_idx = jnp.nonzero(~self.mask, size=n_in - self.num_salient)[0]
    w = jnp.zeros(self.w.shape, jnp.float32).at[sal_idx].set(self.salient.dequantize())
    return w.at[bin_idx].set(binary)

  def pack(self, theta: dict[str, jax.Array], scale_dtype=jnp.float16) -> SaliencyMaskedTensor:
    """The stored tensor, scales folded (`a = α·r^out`, `m = μ·r^out`) and cast to `scale_dtype`."""
    return _pack(self, theta, jnp.dtype(scale_dtype).name)

  def _pack(self, theta: dict[str, jax.Array], scale_dtype: str) -> SaliencyMaskedTensor:
    wb = self.binary_rows()
    signs = (wb >= self.mu).astype(jnp.uint8)
    return SaliencyMaskedTensor(
      mask=packing.pack_bits(self.mask),
      salient=self.salient,
      signs=packing.pack(signs, 1),
      scale=(theta['alpha'] * theta['r_out']).astype(scale_dtype),
      shift=(self.mu * theta['r_out']).astype(scale_dtype),
      row_scale=theta['r_in'].astype(scale_dtype),
      shape=tuple(int(d) for d in self.w.shape),
      num_salient=self.num_salient,
    )


_pack = jax.jit(Ptq161Layer._pack, static_argnums=2)


def init_layer(
  w: jax.Array,
  act_stat: jax.Array,
  *,
  fraction: float = 0.2,
  salient_bits: int = 4,
  scale_dtype=jnp.float16,
) -> tuple[Ptq161Layer, dict[str, jax.Array]]:
  """The mask, the salient rows' quantization, `μ` and the initial `theta` of a `[in, out]` weight.

  Args:
    w: `[in, out]` float weight.
    act_stat: `[in]` calibration statistic per input channel (`LayerStats.absmax`).
    fraction: share of input channels kept at `salient_bits` (the paper's 20%).
    salient_bits: bits of the salient rows (the paper's 4).
    scale_dtype: storage dtype of the salient rows' scales.
  """
  w = jnp.asarray(w, jnp.float32)
  if w.ndim != 2 or act_stat.shape != (w.shape[0],):
    raise ValueError(
      f'w, act_stat: expected a [in, out] weight and a [in] statistic, got {w.shape} and '
      f'{act_stat.shape}'
    )
  num_salient(w.shape[0], fraction)  # validates fraction eagerly
  return _init_layer(w, act_stat, fraction, salient_bits, jnp.dtype(scale_dtype).name)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _init_layer(w, act_stat, fraction, salient_bits, scale_dtype):
  mask = salient_mask(act_stat, fraction)
  k = num_salient(w.shape[0], fraction)
  sal = w[jnp.nonzero(mask, size=k)[0]]
  salient = quantize(sal, salient_bits, symmetric=False, scale_dtype=scale_dtype)
  wb = w[jnp.nonzero(~mask, size=w.shape[0] - k)[0]]
  mu = jnp.mean(wb, axis=0)
  alpha = jnp.mean(jnp.abs(wb - mu), axis=0)
  layer = Ptq161Layer(w=w, mask=mask, salient=salient, mu=mu, num_salient=k)
  theta = {
    'alpha': alpha,
    'r_out': jnp.ones((w.shape[1],), jnp.float32),
    'r_in': jnp.ones((w.shape[0] - k,), jnp.float32),
  }
  return layer, theta


def storage_bits_formula(
  num_in: int, num_out: int, k: int, salient_bits: int = 4, word_bits: int = 32
) -> int:
  """The closed form of `SaliencyMaskedTensor.storage_bits` (module docstring), word padding
  included: mask `⌈in/W⌉·W`, salient codes `⌈k·out·b/W⌉·W` + float16 scales + uint8 zeros,
  signs `⌈(in−k)·out/W⌉·W`, float16 `a`, `m` (per output) and `r^in` (per binarized row)."""

  def words(n: int) -> int:
    return -(-n // word_bits) * word_bits

  return (
    words(num_in)
    + words(k * num_out * salient_bits)
    + (16 + 8) * num_out
    + words((num_in - k) * num_out)
    + 2 * 16 * num_out
    + 16 * (num_in - k)
  )


@functools.partial(jax.jit, static_argnums=0)
def _run(block: Any, block_params: Any, x: jax.Array) -> jax.Array:
  positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
  return block.apply({'params': block_params}, x, positions, True)


def _in_chunks(block: Any, block_params: Any, x: jax.Array, size: int) -> jax.Array:
  """The block on `size` samples at a time (bounded activation memory)."""
  return jnp.concatenate(
    [_run(block, block_params, x[i : i + size]) for i in range(0, x.shape[0], size)]
  )


def _with_matrices(block_params: Any, matrices: dict[str, jax.Array]) -> Any:
  """`block_params` with the kernels at the (block-relative) paths set from `[in, out]` views."""
  return with_kernels(
    block_params,
    {p: jnp.reshape(m, kernel_at(block_params, p).shape) for p, m in matrices.items()},
  )


@functools.cache
def _objective(block: Any) -> Callable:
  """`block_loss` of the block with fake-quantized kernels; one function object per block
  module, so `reconstruct`'s jitted step is compiled once for all blocks alike."""

  def objective(theta, consts, x, y_fp, y_fp_on_q):
    layers, block_params = consts
    quantized = _with_matrices(block_params, {p: layers[p].fake_quant(theta[p]) for p in layers})
    return block_loss(_run(block, quantized, x), y_fp, y_fp_on_q)

  return objective


@functools.cache
def _optimizer(lr_scale: float, lr_rotate: float, weight_decay: float):
  """AdamW on `α` at `lr_scale` and on `r^out`, `r^in` at `lr_rotate` (one object per setting)."""
  return optax.multi_transform(
    {
      'scale': optax.adamw(lr_scale, weight_decay=weight_decay),
      'rotate': optax.adamw(lr_rotate, weight_decay=weight_decay),
    },
    lambda theta: {
      p: {k: 'scale' if k == 'alpha' else 'rotate' for k in t} for p, t in theta.items()
    },
  )


def ptq161_params(
  model: Any,
  params: Any,
  tokens: jax.Array,
  rules: Sequence[str],
  *,
  fraction: float = 0.2,
  salient_bits: int = 4,
  epochs: int = 20,
  batch_size: int = 1,
  lr_scale: float = 5e-4,
  lr_rotate: float = 1e-3,
  weight_decay: float = 0.0,
  patience: int | None = None,
) -> tuple[Any, dict[str, list[float]]]:
  """PTQ1.61 of a transformer LM: masks, 4-bit salient rows, then block-wise reconstruction.

  Block by block (the authors' `blockptq.py`): the masks come from the full-precision
  model's per-channel input maxima; `α` (learning rate `lr_scale`) and `r^out`, `r^in`
  (`lr_rotate`) of all the block's layers are fitted jointly with AdamW on `block_loss`; the
  quantized inputs `x̂` are then pushed through the block with its *stored* (float16-scaled)
  weights to become the next block's inputs.

  Args:
    model: a `jaxlab.nn.transformer.TransformerLM` (its blocks are `block_0`, ...).
    params: its float parameters.
    tokens: `[n, length]` calibration sequences.
    rules: kernel path regexes of the layers to quantize (inside the blocks).
    fraction, salient_bits: the structured mask (`init_layer`).
    epochs, batch_size, patience: the reconstruction loop (`reconstruct`); 0 epochs keeps the
      initial scales.
    lr_scale, lr_rotate, weight_decay: AdamW settings of `α` and of `r^out`, `r^in`.

  Returns:
    `(qparams, histories)`: params with `SaliencyMaskedTensor` leaves, and each block's
    reconstruction loss history.
  """
  cfg = model.cfg
  paths = kernel_paths(params, rules)
  if not paths:
    raise ValueError(f'rules: expected to match at least one kernel, got none for {list(rules)}')
  outside = [p for p in paths if p.split('/')[0] not in {f'block_{i}' for i in range(cfg.depth)}]
  if outside:
    raise ValueError(f'rules: expected kernels inside the transformer blocks, got {outside}')
  tokens = jnp.asarray(tokens)
  stats = collect_layer_stats(
    model, params, [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
  )
  check_collected(stats, paths)
  fp_inputs = collect_block_inputs(model, params, tokens)
  block = BLOCKS.get(cfg.block)(cfg)
  objective = _objective(block)
  tx = _optimizer(lr_scale, lr_rotate, weight_decay)
  x_q = fp_inputs['block_0']
  leaves, histories = {}, {}
  for i in range(cfg.depth):
    name = f'block_{i}'
    block_params = params[name]
    layers, theta = {}, {}  # keyed by block-relative path: one structure for every block
    for path in paths:
      if path.startswith(name + '/'):
        local = path[len(name) + 1 :]
        layers[local], theta[local] = init_layer(
          as_matrix(path, kernel_at(params, path))[0],
          stats[path].absmax,
          fraction=fraction,
          salient_bits=salient_bits,
        )
    y_fp = _in_chunks(block, block_params, fp_inputs[name], batch_size)
    y_fp_on_q = _in_chunks(block, block_params, x_q, batch_size)
    result = reconstruct(
      objective,
      theta,
      (layers, block_params),
      (x_q, y_fp, y_fp_on_q),
      tx,
      epochs=epochs,
      batch_size=batch_size,
      patience=patience,
    )
    histories[name] = result.history
    packed = {p: layers[p].pack(result.theta[p]) for p in layers}
    leaves.update({f'{name}/{p}': t for p, t in packed.items()})
    stored = _with_matrices(block_params, {p: t.dequantize() for p, t in packed.items()})
    x_q = _in_chunks(block, stored, x_q, batch_size)
  return with_kernels(params, leaves), histories


def restorative_lora(
  loss_fn: Callable[[Any, dict], jax.Array],
  params: Any,
  paths: Sequence[str],
  batches: Iterator[dict],
  *,
  rank: int,
  steps: int,
  learning_rate: float,
  key: jax.Array,
) -> Any:
  """PTQ1.61's quantization preprocessing: restorative LoRA on a first-round quantized model.

  The authors' pipeline (their README, `preprocessing/`): quantize once, fine-tune LoRA adapters
  `ΔW = A·B` (`jaxlab.sparsity.lowrank`, rank `rank`, scale 1, `B = 0` at the start) on the
  *dequantized* model with the ordinary
  LM loss, merge them (`W' = Ŵ + A·B`), and run PTQ1.61 again on `W'`, a weight distribution
  that the first quantization shaped to be easier to quantize channel-wise (the abstract's
  "quantization preprocessing").

  Args:
    loss_fn: `(params, batch) -> loss` of the task.
    params: float parameters of the first-round quantized model (dequantized).
    paths: the kernels that get adapters.
    batches: training batches (an iterator; `steps` are drawn).
    rank, steps, learning_rate: the LoRA rank and its Adam fine-tuning.
    key: initialisation of the `A` factors (Kaiming-uniform, as LoRA's).

  Returns:
    The merged float parameters.
  """
  pattern = '|'.join(re.escape(p) for p in paths)
  cfg = lowrank.LoraConfig(rank=rank, alpha=float(rank), pattern=pattern)  # scale α/r = 1
  adapters = lowrank.init_adapters(key, params, cfg)
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(adapters, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda ad: loss_fn(lowrank.merge(params, ad, cfg), batch))(
      adapters
    )
    updates, opt_state = tx.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state, loss

  opt_state = tx.init(adapters)
  for _ in range(steps):
    adapters, opt_state, _ = step(adapters, opt_state, next(batches))
  return lowrank.merge(params, adapters, cfg)
