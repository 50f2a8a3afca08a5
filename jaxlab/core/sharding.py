"""Device mesh, logical-axis rules and sharded initialisation.

The model names each parameter and activation dimension logically (`embed`, `mlp`, `heads`,
`batch`, ...); `config.mesh.rules` maps those names onto the mesh axes `data`, `fsdp`,
`model`. The same code then runs on one CPU, eight fake CPU devices, a GPU node or a TPU pod:
only `config.mesh` changes.

Multi-host: call `maybe_initialize_distributed()` first. On a TPU pod slice and under SLURM
`jax.distributed.initialize()` finds the coordinator itself; elsewhere set
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlab.core.config import MESH_AXES, mesh_shape

Rules = tuple[tuple[str, Any], ...]


def maybe_initialize_distributed() -> None:
  """Starts `jax.distributed` when the environment says several processes will run.

  Recognised: `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), SLURM
  (`SLURM_NTASKS` > 1), and Cloud TPU pods (`TPU_WORKER_HOSTNAMES` with several hosts). A
  single process does nothing. Must run before any other JAX call.
  """
  multi_slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  multi_tpu = len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1
  if 'JAX_COORDINATOR_ADDRESS' in os.environ:
    jax.distributed.initialize(
      coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(os.environ['JAX_NUM_PROCESSES']),
      process_id=int(os.environ['JAX_PROCESS_ID']),
    )
  elif multi_slurm or multi_tpu:
    jax.distributed.initialize()  # cluster auto-detection (SLURM, TPU metadata)


def make_mesh(mesh_cfg: ml_collections.ConfigDict) -> Mesh:
  """The `(data, fsdp, model)` mesh over all devices; one axis may be -1 ("the rest")."""
  sizes = mesh_shape(mesh_cfg, jax.device_count())
  return jax.make_mesh(
    tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
  )


def rules_from_config(mesh_cfg: ml_collections.ConfigDict) -> Rules:
  """`config.mesh.rules` as a tuple of `(logical_name, mesh_axes)` pairs."""
  return tuple(
    (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_cfg.rules
  )


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

  Unboxed leaves (step counters, scalars) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a `[batch, ...]` input array: batch split as the `batch` rule says."""
  logical = ('batch',) + (None,) * (ndim - 1)
  return NamedSharding(mesh, nn.logical_to_mesh_axes(logical, rules))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict:
  """Assembles each host's rows of the global batch into global, sharded `jax.Array`s."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
    for k, v in local_batch.items()
  }


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
