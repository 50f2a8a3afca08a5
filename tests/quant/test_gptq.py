"""GPTQ: beats RTN on its calibration data, reduces to RTN when H ∝ I, and its lazy Cholesky
form equals the textbook OBS row-by-row update with an explicitly downdated inverse Hessian."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlab.quant.gptq import gptq, hessian
from jaxlab.quant.tensor import quantize

N_IN, N_OUT = 32, 8
# Two grids, shared by every test so that each jitted GPTQ is compiled once.
CONFIGS = [(3, None, False), (2, 8, True)]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(N_IN, N_IN))  # correlated input channels, as in real activations
  x = (rng.normal(size=(256, N_IN)) @ mix).astype(np.float32)
  w = rng.normal(size=(N_IN, N_OUT)).astype(np.float32)
  return x, w


def _output_error(x: np.ndarray, w: np.ndarray, w_hat) -> float:
  return float(np.linalg.norm(x @ w - x @ np.asarray(w_hat, np.float64)))


@pytest.mark.parametrize('bits, group_size, symmetric', CONFIGS)
def test_gptq_has_lower_output_error_than_rtn(bits, group_size, symmetric):
  x, w = _data()
  q = gptq(w, hessian(x), bits, group_size=group_size, symmetric=symmetric, block_size=8)
  rtn = quantize(w, bits, group_size=group_size, symmetric=symmetric)
  assert q.storage_bits() == rtn.storage_bits()  # same grid, same bits account
  assert _output_error(x, w, q.dequantize()) < 0.9 * _output_error(x, w, rtn.dequantize())


@pytest.mark.parametrize('bits, group_size, symmetric', CONFIGS)
def test_orthogonal_inputs_reduce_gptq_to_rtn(bits, group_size, symmetric):
  _, w = _data()
  basis, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(N_IN, N_IN)))
  h = hessian(3.0 * basis)  # XᵀX ∝ I: no error is fed forward
  q = gptq(w, h, bits, group_size=group_size, symmetric=symmetric, block_size=8)
  rtn = quantize(w, bits, group_size=group_size, symmetric=symmetric)
  np.testing.assert_array_equal(np.asarray(q.codes()), np.asarray(rtn.codes()))
  np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(rtn.scale))


def _obs_reference(w: np.ndarray, h: np.ndarray, scale, zero, bits: int, damp: float):
  """Row-by-row OBS quantization (Frantar & Alistarh's OBQ form, GPTQ eq. 2-3) in float64,
  the inverse Hessian downdated after every row instead of GPTQ's Cholesky factor."""
  w = w.astype(np.float64).copy()
  h = h.astype(np.float64) + damp * np.mean(np.diag(h)) * np.eye(len(h))
  h_inv = np.linalg.inv(h)
  s, z = np.asarray(scale, np.float64)[0], np.asarray(zero, np.float64)[0]
  codes = np.zeros(w.shape, np.int64)
  for i in range(len(w)):
    codes[i] = np.clip(np.round(w[i] / s) + z, 0, 2**bits - 1)
    err = (w[i] - s * (codes[i] - z)) / h_inv[i, i]
    w[i + 1 :] -= h_inv[i + 1 :, i : i + 1] * err[None, :]
    h_inv = h_inv - np.outer(h_inv[:, i], h_inv[i, :]) / h_inv[i, i]
  return codes


def test_lazy_cholesky_gptq_equals_the_row_by_row_obs_update():
  x, w = _data(2)
  h = np.asarray(hessian(x))
  rtn = quantize(w, 3, symmetric=False)  # per-channel grid from the initial weights, as GPTQ
  ref = _obs_reference(w, h, rtn.scale.astype(np.float32), rtn.zero, 3, damp=0.01)
  q = gptq(w, h, 3, symmetric=False, block_size=8, damp=0.01)
  assert np.mean(np.asarray(q.codes()) == ref) >= 0.98  # float32 vs float64 ties aside


def test_dead_inputs_get_zero_weight_and_bad_shapes_are_rejected():
  x, w = _data()
  x[:, 3] = 0.0  # channel 3 never active
  q = gptq(w, hessian(x), 3, symmetric=False, block_size=8)
  w_hat = np.asarray(q.dequantize())
  assert np.all(np.isfinite(w_hat)) and np.all(w_hat[3] == 0.0)
  with pytest.raises(ValueError, match='Hessian'):
    gptq(w, hessian(x)[:-1, :-1], 4)
  with pytest.raises(ValueError, match='group_size'):
    gptq(w, hessian(x), 4, group_size=5)
