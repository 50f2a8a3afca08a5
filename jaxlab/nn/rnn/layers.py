"""Flax layers `ParaGRU` and `ParaLSTM`: `[batch, time, d_in] -> [batch, time, features]`.

`mode='parallel'` evaluates the recurrence by Newton + associative scan (`newton_scan`, with the
implicit-differentiation backward pass); `mode='sequential'` by `jax.lax.scan` (the reference).
The same parameters serve both modes. The input projection is dense within each of `heads`
groups (block-diagonal over heads, as in ParaRNN's multi-head cells) and computed for all t at
once; the initial state is zero.

Initialisation (ours; the paper's "xlstm"/"bias_minus_linspace" initialisers are not verified
here): recurrent diagonals `a ~ U(−0.5, 0.5)`, input kernels Glorot-uniform per head, and the
gate that keeps memory (GRU update z, LSTM forget f) biased so that units span short to long
memory: `b_z = −linspace(0, 3, D)`, `b_f = +linspace(0, 3, D)`, other biases 0.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.core.errors import ConfigError
from jaxlab.nn.rnn import cells
from jaxlab.nn.rnn.newton import NewtonConfig, newton_scan, sequential

MODES = ('parallel', 'sequential')


class _Recurrent(nn.Module):
  """Shared machinery: head-wise input projection, then the recurrence in the chosen mode."""

  features: int
  mode: str = 'parallel'
  heads: int = 2
  newton: NewtonConfig = dataclasses.field(default_factory=NewtonConfig)
  dtype: jnp.dtype = jnp.float32  # the recurrence runs in float32 whatever the input dtype
  param_dtype: jnp.dtype = jnp.float32

  def _check(self, d_in: int) -> None:
    if self.mode not in MODES:
      raise ConfigError(f'mode: expected one of {MODES}, got {self.mode!r}')
    for name, n in (('input width', d_in), ('features', self.features)):
      if n % self.heads:
        raise ConfigError(f'{name}: expected a multiple of heads={self.heads}, got {n}')

  def _project(self, x: jax.Array, gates: int, bias_init) -> jax.Array:
    """`u = B x + b`, block-diagonal over heads: `[B, T, d_in] -> [B, T, gates, D]`."""
    b_, t_, d_in = x.shape
    h, dh = self.heads, self.features // self.heads
    kernel = self.param(
      'input_kernel',
      nn.with_logical_partitioning(
        nn.initializers.glorot_uniform(in_axis=1, out_axis=3, batch_axis=(0, 2)),
        (None, 'embed', None, 'mlp'),
      ),
      (h, d_in // h, gates, dh),
      self.param_dtype,
    )
    bias = self.param('input_bias', bias_init, (gates, self.features), self.param_dtype)
    xh = x.reshape(b_, t_, h, d_in // h).astype(jnp.float32)
    u = jnp.einsum('bthi,higd->btghd', xh, kernel.astype(jnp.float32))
    return u.reshape(b_, t_, gates, self.features) + bias

  def _recurrent_diag(self, name: str, rows: int) -> jax.Array:
    def init(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -0.5, 0.5)

    return self.param(name, init, (rows, self.features), self.param_dtype)

  def _run(self, step, jac, structure: str, params, u: jax.Array, h0: jax.Array) -> jax.Array:
    def run_sequential():
      return jax.vmap(lambda u_b: sequential(step, params, u_b, h0))(u)

    if self.mode == 'sequential':
      return run_sequential()
    # The fallback is decided once for the whole batch, outside the vmap, so the sequential
    # scan only runs when some sequence did not converge (a per-row cond would become a select).
    solver = dataclasses.replace(self.newton, fallback=False)
    states, info = jax.vmap(lambda u_b: newton_scan(step, jac, structure, params, u_b, h0, solver))(
      u
    )
    residual = jnp.max(info.residual)
    if self.newton.fallback:
      fallback = residual > self.newton.fallback_tol
      states = jax.lax.cond(fallback, run_sequential, lambda: states)
      self.sow('intermediates', 'newton_fallback', fallback.astype(jnp.float32))
    self.sow('intermediates', 'newton_residual', residual)
    self.sow('intermediates', 'newton_iterations', jnp.max(info.iterations))
    return states


def _linspace_bias(row: int, start: float, stop: float):
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[row].set(jnp.linspace(start, stop, shape[1], dtype=dtype))

  return init


class ParaGRU(_Recurrent):
  """Diagonal-recurrence GRU (`jaxlab.nn.rnn.cells.gru_step`), Newton-parallel in time."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x.shape[-1])
    u = self._project(x, 3, _linspace_bias(0, 0.0, -3.0))
    params = cells.GRUParams(a=self._recurrent_diag('recurrent', 3))
    h0 = jnp.zeros((self.features,), jnp.float32)
    return self._run(cells.gru_step, cells.gru_jacobian, 'diag', params, u, h0).astype(self.dtype)


class ParaLSTM(_Recurrent):
  """Diagonal-recurrence CIFG LSTM with peepholes (`cells.lstm_step`); returns the `h` states."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x.shape[-1])
    u = self._project(x, 3, _linspace_bias(0, 0.0, 3.0))
    params = cells.LSTMParams(
      a=self._recurrent_diag('recurrent', 3), p=self._recurrent_diag('peephole', 2)
    )
    s0 = jnp.zeros((self.features, 2), jnp.float32)
    states = self._run(cells.lstm_step, cells.lstm_jacobian, 'block', params, u, s0)
    return states[..., 1].astype(self.dtype)
