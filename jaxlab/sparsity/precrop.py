"""PreCropping (Cai et al., 2022): prune at initialisation by channels, at the layerwise
densities an unstructured pruning-at-initialisation (PaI) method chooses.

The paper's observation is that a PaI method's accuracy is decided by its layerwise density
`d_l` (fraction of weights kept in layer `l`), not by which individual weights it keeps; so a
dense network with fewer channels, sized so each layer keeps about `d_l` of its weights, is as
accurate and runs dense.

Our reading of "following the layerwise compression ratio": a layer whose input channels are
scaled by `r_in` and output channels by `r_out` keeps `r_in · r_out` of its weights, so we
choose one ratio `r_f ∈ (0, 1]` per channel family by least squares in log space,
`min Σ_l (log r_in(l) + log r_out(l) − log d_l)^2`, with the model's input and output channels
fixed (`r = 1`). The paper's exact conversion was not verified against its text or code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxlab.sparsity.groups import Family, find_family


def kernel_densities(masks_flat: Mapping[str, np.ndarray], kernels: Sequence[str]) -> dict:
  """Kept fraction of each kernel (paths `'params/.../kernel'`)."""
  return {k: float(np.mean(np.asarray(masks_flat[k]))) for k in kernels}


def channel_ratios(
  families: Sequence[Family],
  densities: Mapping[str, float],
  shapes: Mapping[str, tuple[int, ...]],
  *,
  floor: float = 1e-3,
) -> dict[str, float]:
  """Per-family channel ratio `r_f` with `r_in · r_out ≈ d` for every kernel (log least squares).

  Args:
    families: the channel families (zero-invariant groups).
    densities: kernel path -> the PaI method's kept fraction of that kernel.
    shapes: kernel path -> its shape (the last axis writes output channels, the one before
      reads input channels).
    floor: the smallest density taken into the logarithm.

  Returns:
    family name -> ratio in (0, 1].
  """
  index = {f.name: i for i, f in enumerate(families)}
  rows, rhs = [], []
  for path, d in densities.items():
    ndim = len(shapes[path])
    row = np.zeros(len(families))
    for axis in (ndim - 1, ndim - 2):
      f = find_family(tuple(families), path, axis)
      if f is not None:
        row[index[f.name]] += 1.0
    if row.any():
      rows.append(row)
      rhs.append(np.log(max(d, floor)))
  solution, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
  return {name: float(np.clip(np.exp(solution[i]), floor, 1.0)) for name, i in index.items()}
