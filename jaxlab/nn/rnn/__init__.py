"""Parallel nonlinear RNNs: linear scans, the Newton solver, ParaGRU / ParaLSTM."""

from jaxlab.nn.rnn.cells import (
  GRUParams,
  LSTMParams,
  gru_jacobian,
  gru_step,
  lstm_jacobian,
  lstm_step,
)
from jaxlab.nn.rnn.layers import ParaGRU, ParaLSTM
from jaxlab.nn.rnn.linear_scan import linear_recurrence, sequential_linear_recurrence
from jaxlab.nn.rnn.newton import (
  NewtonConfig,
  NewtonInfo,
  dense_jacobian,
  diagonal_jacobian,
  newton_scan,
  newton_solve,
  sequential,
)

__all__ = [
  'GRUParams',
  'LSTMParams',
  'NewtonConfig',
  'NewtonInfo',
  'ParaGRU',
  'ParaLSTM',
  'dense_jacobian',
  'diagonal_jacobian',
  'gru_jacobian',
  'gru_step',
  'linear_recurrence',
  'lstm_jacobian',
  'lstm_step',
  'newton_scan',
  'newton_solve',
  'sequential',
  'sequential_linear_recurrence',
]
