"""Physical removal: a smaller dense model that computes what the masked one does.

`crop(variables, families, keeps)` slices every member array of every family down to the kept
groups (parameters and model state such as BatchNorm statistics alike). When the families are
zero-invariant groups (`groups.zero_invariant_families`) and the removed groups are zero in the
masked model, the cropped model's outputs equal the masked model's (OTOv3, Sec. 3.3;
PreCropping). `cropped_model_config` writes the matching `config.model` from the cropped shapes
through the model's `WIDTH_FIELDS` entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxlab.core.errors import ConfigError
from jaxlab.nn.models import WIDTH_FIELDS
from jaxlab.sparsity.groups import Family, Member, flat_arrays, unflatten_like


def _take(x: np.ndarray, m: Member, size: int, kept: np.ndarray) -> np.ndarray:
  axis = m.axis % x.ndim
  view = x.reshape(*x.shape[:axis], m.tile, size, *x.shape[axis + 1 :])
  view = np.take(view, kept, axis=axis + 1)
  return view.reshape(*x.shape[:axis], m.tile * len(kept), *x.shape[axis + 1 :])


def crop(
  variables: Mapping[str, Any], families: Sequence[Family], keeps: Mapping[str, Any]
) -> dict:
  """`variables` with each family's removed groups sliced out of all its member arrays.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` of the full model.
    families: the groups, as used for the masks.
    keeps: family name -> boolean `[size]` (True = keep); families not named keep everything.

  Returns:
    Variables of the same tree structure with smaller arrays (numpy).
  """
  flat = {k: np.asarray(v) for k, v in flat_arrays(variables).items()}
  for f in families:
    if f.name not in keeps:
      continue
    keep = np.asarray(keeps[f.name], bool)
    if keep.shape != (f.size,):
      raise ValueError(
        f'crop: keep vector of {f.name} has shape {keep.shape}, expected ({f.size},)'
      )
    if not keep.any():
      raise ValueError(f'crop: every group of {f.name} is removed; keep at least one')
    kept = np.flatnonzero(keep)
    for m in f.members:
      if m.axis is None:
        raise ValueError(f'crop: {f.name} is unstructured; only whole groups can be cropped')
      flat[m.path] = _take(flat[m.path], m, f.size, kept)
  return unflatten_like(variables, flat)


def cropped_model_config(
  model_cfg: ml_collections.ConfigDict, cropped_variables: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """`config.model` whose widths match the cropped kernels' output channels."""
  fields_fn = WIDTH_FIELDS.get(model_cfg.name, 'model.name')
  flat = flat_arrays(cropped_variables)
  widths: dict[str, dict[int | None, int]] = {}
  for field, index, kernel in fields_fn(model_cfg):
    key = f'params/{kernel}'
    if key not in flat:
      raise ConfigError(f'model.{field}: the model has no kernel {kernel!r} to read it from')
    widths.setdefault(field, {})[index] = int(flat[key].shape[-1])
  out = ml_collections.ConfigDict(model_cfg.to_dict())
  for field, entries in widths.items():
    if None in entries:
      out[field] = entries[None]
    else:
      out[field] = tuple(entries[i] for i in sorted(entries))
  return out


def check_croppable(model_cfg: ml_collections.ConfigDict, families: Sequence[Family]) -> None:
  """Raises ConfigError if some family's width is not a field of `model_cfg` (then a cropped
  model could not be rebuilt from a config)."""
  fields_fn = WIDTH_FIELDS.get(model_cfg.name, 'model.name')
  kernels = {f'params/{kernel}' for _, _, kernel in fields_fn(model_cfg)}
  for f in families:
    producers = {m.path for m in f.members if m.producer}
    if not producers & kernels:
      raise ConfigError(
        f'crop: family {f.name} (produced by {sorted(producers)}) has no width field in '
        f'model {model_cfg.name!r}'
      )
