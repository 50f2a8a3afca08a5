"""Recurrent cells with structured Jacobians (ParaRNN Sec. 4) and their analytic Jacobians.

Only the recurrent weights are restricted to vectors (`a_*`, peepholes `p_*`); the input
projections are dense and precomputed for all t in parallel, so each cell step sees `u_t`, the
projected input with biases already added. Because every recurrent interaction is elementwise,
`∂h_t/∂h_{t-1}` is diagonal (ParaGRU) or D independent 2×2 blocks over `(c, h)` (ParaLSTM), and the
Newton step is an O(T·D) scan.

Each cell is `step(params, h_prev, u_t) -> h_t` and `jacobian(params, h_prev, u_t) -> J_t` in
the layout of `jaxlab.nn.rnn.linear_scan` ('diag': `[D]`, 'block': `[D, 2, 2]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _dsigmoid(s: jax.Array) -> jax.Array:
  return s * (1.0 - s)


class GRUParams(NamedTuple):
  a: jax.Array  # [3, D]: recurrent diagonals a_z, a_r, a_h


def _gru_gates(params: GRUParams, h: jax.Array, u: jax.Array) -> tuple[jax.Array, ...]:
  a_z, a_r, a_h = params.a
  z = jax.nn.sigmoid(a_z * h + u[0])
  r = jax.nn.sigmoid(a_r * h + u[1])
  return z, r, jnp.tanh(a_h * (h * r) + u[2])


def gru_step(params: GRUParams, h: jax.Array, u: jax.Array) -> jax.Array:
  """ParaGRU: `z = σ(a_z⊙h + u_z)`, `r = σ(a_r⊙h + u_r)`, `ĥ = tanh(a_h⊙(h⊙r) + u_h)`,
  `h' = z⊙ĥ + (1−z)⊙h`; `u` is `[3, D]` = `B x + b` for z, r, ĥ."""
  z, _, h_hat = _gru_gates(params, h, u)
  return z * h_hat + (1.0 - z) * h


def gru_jacobian(params: GRUParams, h: jax.Array, u: jax.Array) -> jax.Array:
  """Diagonal of `∂h'/∂h`:
  `(1−z) + (ĥ−h)⊙a_z⊙σ'(p_z) + z⊙a_h⊙tanh'(p_h)⊙(r + h⊙a_r⊙σ'(p_r))`."""
  a_z, a_r, a_h = params.a
  z, r, h_hat = _gru_gates(params, h, u)
  dr = a_r * _dsigmoid(r)
  return (1.0 - z) + (h_hat - h) * a_z * _dsigmoid(z) + z * a_h * (1.0 - h_hat**2) * (r + h * dr)


class LSTMParams(NamedTuple):
  a: jax.Array  # [3, D]: recurrent diagonals a_f, a_c, a_o
  p: jax.Array  # [2, D]: peepholes p_f (on c_{t-1}), p_o (on c_t)


def _lstm_gates(params: LSTMParams, s: jax.Array, u: jax.Array) -> tuple[jax.Array, ...]:
  (a_f, a_c, a_o), (p_f, p_o) = params.a, params.p
  c, h = s[..., 0], s[..., 1]
  f = jax.nn.sigmoid(a_f * h + u[0] + p_f * c)
  c_hat = jnp.tanh(a_c * h + u[1])
  c_new = f * c + (1.0 - f) * c_hat
  return f, c_hat, c_new, jax.nn.sigmoid(a_o * h + u[2] + p_o * c_new)


def lstm_step(params: LSTMParams, s: jax.Array, u: jax.Array) -> jax.Array:
  """ParaLSTM (coupled input/forget gate, peepholes); state `s = [D, 2]` holds `(c, h)`:
  `f = σ(a_f⊙h + u_f + p_f⊙c)`, `ĉ = tanh(a_c⊙h + u_c)`, `c' = f⊙c + (1−f)⊙ĉ`,
  `o = σ(a_o⊙h + u_o + p_o⊙c')`, `h' = o⊙tanh(c')`."""
  _, _, c_new, o = _lstm_gates(params, s, u)
  return jnp.stack([c_new, o * jnp.tanh(c_new)], axis=-1)


def lstm_jacobian(params: LSTMParams, s: jax.Array, u: jax.Array) -> jax.Array:
  """The D 2×2 blocks `[[∂c'/∂c, ∂c'/∂h], [∂h'/∂c, ∂h'/∂h]]`, shape `[D, 2, 2]`."""
  (a_f, a_c, a_o), (p_f, p_o) = params.a, params.p
  c = s[..., 0]
  f, c_hat, c_new, o = _lstm_gates(params, s, u)
  df_dc, df_dh = _dsigmoid(f) * p_f, _dsigmoid(f) * a_f
  dchat_dh = (1.0 - c_hat**2) * a_c
  dcn_dc = f + (c - c_hat) * df_dc
  dcn_dh = (c - c_hat) * df_dh + (1.0 - f) * dchat_dh
  do_dc = _dsigmoid(o) * p_o * dcn_dc
  do_dh = _dsigmoid(o) * (a_o + p_o * dcn_dh)
  tc = jnp.tanh(c_new)
  dhn_dc = do_dc * tc + o * (1.0 - tc**2) * dcn_dc
  dhn_dh = do_dh * tc + o * (1.0 - tc**2) * dcn_dh
  return jnp.stack([jnp.stack([dcn_dc, dcn_dh], -1), jnp.stack([dhn_dc, dhn_dh], -1)], -2)
