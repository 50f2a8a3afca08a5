"""Block-wise reconstruction: fit quantization parameters to a block's full-precision outputs.

Post-training quantization methods in the BRECQ/OmniQuant line quantize a transformer one block
at a time: the quantization parameters `θ` of block `b` (here PTQ1.61's binarization scales)
are optimised so that the quantized block reproduces the full-precision block on calibration
data, then the calibration inputs are pushed through the quantized block to become the next
block's inputs. PTQ1.61 (Zhao et al., 2025; the authors' `quantize/blockptq.py`)
matches the quantized output `ŷ = B_θ(x̂)` (on the quantized model's inputs `x̂`) to two
targets, the full-precision block on the full-precision inputs, `y = B(x)`, and on the
quantized inputs, `ỹ = B(x̂)`, in magnitude and in angle:

  L(θ) = ‖ŷ − y‖²/N + ‖ŷ − ỹ‖²/N − log|cos(ŷ, y)| − log|cos(ŷ, ỹ)|,

with `cos` the cosine similarity of the hidden vectors, averaged over tokens (the angular term
is what "angular biases" in the paper's abstract refers to).

`reconstruct` is the optimisation loop (any loss, any optax optimiser): a fixed number of epochs
over the calibration samples in minibatches, the full-calibration-set loss measured before
training and after every epoch, early stopping after `patience` epochs without improvement, and
the best `θ` returned, so the returned block error is never above the initial one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _mean_cos(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  num = jnp.sum(a * b, axis=-1)
  den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)
  return jnp.mean(num / den)


def block_loss(y_q: jax.Array, y_fp: jax.Array, y_fp_on_q: jax.Array) -> jax.Array:
  """PTQ1.61's block objective `L(θ)` (module docstring) for outputs `[..., width]`."""
  mse = jnp.mean(jnp.square(y_q - y_fp)) + jnp.mean(jnp.square(y_q - y_fp_on_q))
  angular = -jnp.log(jnp.abs(_mean_cos(y_q, y_fp))) - jnp.log(jnp.abs(_mean_cos(y_q, y_fp_on_q)))
  return mse + angular


class Reconstruction(NamedTuple):
  """The result of `reconstruct`."""

  theta: Any  # the parameters with the lowest full-calibration-set loss
  history: list[float]  # that loss before training, then after each epoch run
  best_epoch: int  # index into `history` of the returned theta (0: no epoch improved)


def reconstruct(
  loss_fn: Callable[..., jax.Array],
  theta: Any,
  consts: Any,
  data: Sequence[jax.Array],
  tx: optax.GradientTransformation,
  *,
  epochs: int,
  batch_size: int,
  patience: int | None = None,
) -> Reconstruction:
  """Minimises `mean over minibatches of loss_fn(theta, consts, *batch)` over `theta`.

  `loss_fn` and `tx` are static arguments of the jitted step: pass the same objects for every
  block (a module-level function, one optimizer) and the step is compiled once for all blocks
  of the same shapes.

  Args:
    loss_fn: `(theta, consts, *arrays) -> scalar` on one minibatch (rows of each array in
      `data`).
    theta: initial parameters (a pytree of float arrays).
    consts: what the loss needs besides `theta` and the data (a pytree; not optimised).
    data: arrays sharing their leading (sample) axis, e.g. `(x_q, y_fp, y_fp_on_q)`.
    tx: the optimiser (PTQ1.61: AdamW, 5e-4 for scales and 1e-3 for the row/column factors).
    epochs: passes over the data (minibatches in a fixed order, as the authors' code).
    batch_size: samples per step; must divide the number of samples.
    patience: stop after this many epochs without a lower full-data loss (None: never stop).

  Returns:
    `Reconstruction(theta, history, best_epoch)`.
  """
  n = data[0].shape[0]
  if batch_size <= 0 or n % batch_size:
    raise ValueError(
      f'batch_size: expected a divisor of the {n} calibration samples, got {batch_size}'
    )
  if epochs < 0:
    raise ValueError(f'epochs: expected a non-negative int, got {epochs}')
  batches = [tuple(a[i : i + batch_size] for a in data) for i in range(0, n, batch_size)]

  def full_loss(theta) -> float:
    return float(jnp.mean(jnp.stack([_loss(loss_fn, theta, consts, b) for b in batches])))

  opt_state = _init(tx, theta)
  history = [full_loss(theta)]
  best, best_epoch = theta, 0
  for epoch in range(1, epochs + 1):
    for b in batches:
      theta, opt_state = _step(loss_fn, tx, theta, opt_state, consts, b)
    history.append(full_loss(theta))
    if history[-1] < history[best_epoch]:
      best, best_epoch = theta, epoch
    elif patience is not None and epoch - best_epoch >= patience:
      break
  return Reconstruction(best, history, best_epoch)


@functools.partial(jax.jit, static_argnums=0)
def _init(tx, theta):
  return tx.init(theta)


@functools.partial(jax.jit, static_argnums=0)
def _loss(loss_fn, theta, consts, batch):
  return loss_fn(theta, consts, *batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(loss_fn, tx, theta, opt_state, consts, batch):
  grads = jax.grad(loss_fn)(theta, consts, *batch)
  updates, opt_state = tx.update(grads, opt_state, theta)
  return optax.apply_updates(theta, updates), opt_state
