"""`config.plugins.perp`: prune the trained LM, then retrain a tiny subset (PERP, Zimmer et al.).

After the train loop has trained the dense model, `finalize`:

1. collects calibration statistics of every kernel's inputs (`jaxlab.quant.calibration`) on
   `calibration_batches` training batches, for Wanda's `‖X_i‖₂`;
2. for each scorer (`magnitude`: uniform per kernel; `wanda`: per output, Sun et al., 2024) and
   each target (an unstructured sparsity, or `'2:4'`-style N:M) prunes the block kernels
   one-shot with the sparsity mechanism (`Pruner` + `ALLOCATORS`);
3. retrains the pruned model under each regime of `jaxlab.sparsity.retrain` for `steps` steps
   and evaluates validation loss (bits/byte for byte-level text).

Per (scorer, target, regime) it reports the loss, the fraction of parameters retrained, the
fraction of the pruning gap closed, `(L_pruned − L_regime) / (L_pruned − L_dense)`, and that the
merged model has exactly the target's zeros (counted after merging).
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart, flat_paths
from jaxlab.quant.calibration import collect_layer_stats
from jaxlab.sparsity import lowrank, retrain, schedules
from jaxlab.sparsity.groups import unstructured_families
from jaxlab.sparsity.masking import Pruner
from jaxlab.sparsity.scorers import SCORERS, ScoreContext

SCORER_ALLOCATOR = {'magnitude': 'uniform', 'wanda': 'per_output'}


def parse_target(target: str) -> tuple[float, dict]:
  """`'0.5'` -> (0.5, {}); `'2:4'` -> (0.5, {'n': 2, 'm': 4}) (N:M keeps n of every m)."""
  if ':' in target:
    n, m = (int(v) for v in target.split(':'))
    if not 0 < n < m:
      raise ValueError(f"targets: expected 'n:m' with 0 < n < m, got {target!r}")
    return 1.0 - n / m, {'n': n, 'm': m}
  sparsity = float(target)
  if not 0.0 < sparsity < 1.0:
    raise ValueError(f'targets: expected a sparsity in (0, 1), got {target!r}')
  return sparsity, {}


def prune_masks(
  params: Any,
  scorer: str,
  target: str,
  input_norms: Mapping[str, jax.Array],
  pattern: str = lowrank.DEFAULT_PATTERN,
) -> Any:
  """One-shot masks for the kernels matching `pattern` (other parameters stay dense)."""
  sparsity, nm = parse_target(target)
  allocator = 'nm' if nm else SCORER_ALLOCATOR[scorer]
  pruner = Pruner(
    unstructured_families(params, pattern),
    SCORERS.get(scorer, 'plugins.perp.scorers'),
    allocator,
    schedules.one_shot(0, sparsity),
    allocator_kwargs=nm,
  )
  ctx = ScoreContext(
    params=params,
    loss_fn=None,
    apply_fn=None,
    input_shape=(),
    rng=jax.random.key(0),
    extras={'input_norms': input_norms},
  )
  return pruner.prune(params, pruner.initial_masks(params), sparsity, lambda p: ctx)


@functools.lru_cache(maxsize=8)
def _eval_loss(task: Any):
  return jax.jit(lambda p, b: task.loss(p, b, jax.random.key(0), train=False)[0])


def evaluate(task: Any, params: Any, eval_batches: list) -> float:
  """Mean validation loss (nats) over the evaluation batches, weighted by their masks."""
  loss_fn = _eval_loss(task)
  losses, weights = [], []
  for b in eval_batches:
    batch = {k: jnp.asarray(v) for k, v in b.items()}
    losses.append(float(loss_fn(params, batch)))
    weights.append(float(np.sum(b['mask'])) if 'mask' in b else 1.0)
  return float(np.average(losses, weights=weights))


@PLUGINS.register('perp')
def perp(
  task: Any,
  config: Any,
  scorers: Sequence[str] = ('magnitude', 'wanda'),
  targets: Sequence[str] = ('0.5', '0.7'),
  regimes: Sequence[str] = ('none', 'full', 'norms', 'lora', 'masklora', 'scalelora'),
  steps: int = 100,
  lr: float = 1e-3,
  full_lr: float = 3e-4,
  rank: int = 8,
  alpha: float = 16.0,
  pattern: str = lowrank.DEFAULT_PATTERN,
  calibration_batches: int = 4,
) -> Plugin:
  """See the module docstring; `full_lr` is the learning rate of full retraining."""
  for s in scorers:
    if s not in SCORER_ALLOCATOR:
      raise ValueError(f'scorers: expected names in {sorted(SCORER_ALLOCATOR)}, got {s!r}')
  for r in regimes:
    if r not in retrain.REGIMES:
      raise ValueError(f'regimes: expected names in {retrain.REGIMES}, got {r!r}')
  if 'none' not in regimes:
    raise ValueError("regimes: expected 'none' among them (the gap is measured from it)")
  for t in targets:
    parse_target(t)
  lora = lowrank.LoraConfig(rank, alpha, pattern)
  unit = 1.0 / math.log(2) if getattr(task, 'byte_level', False) else 1.0
  unit_name = 'bits_per_byte' if unit != 1.0 else 'loss'

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(state.params)
    train = task.train_iterator(config.seed + 1, 0, 1)
    calib = [next(train)['inputs'] for _ in range(calibration_batches)]
    stats = collect_layer_stats(task.model, params, calib)
    norms = {k: jnp.sqrt(jnp.diagonal(s.xtx)) for k, s in stats.items()}
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    flat = flat_paths(params)
    kernel_size = sum(int(np.size(flat[p])) for p in lowrank.adapted_paths(params, pattern))
    dense = evaluate(task, params, eval_batches)
    out = {f'perp/dense/{unit_name}': dense * unit}
    for scorer in scorers:
      for target in targets:
        masks = prune_masks(params, scorer, target, norms, pattern)
        pruned_count = sum(int(np.size(m) - np.sum(m)) for m in jax.tree.leaves(masks))
        base = f'perp/{scorer}/{target}'
        out[f'{base}/kernel_sparsity'] = pruned_count / kernel_size
        losses = {}
        for regime in regimes:
          r = retrain.retrain(
            task,
            params,
            masks,
            regime,
            steps=steps,
            lr=full_lr if regime == 'full' else lr,
            lora=lora,
            seed=config.seed,
          )
          losses[regime] = evaluate(task, r.params, eval_batches)
          out[f'{base}/{regime}/{unit_name}'] = losses[regime] * unit
          out[f'{base}/{regime}/trained_fraction'] = r.trained_params / total
          # Zero at every pruned entry after merging, before `retrain`'s final masking.
          out[f'{base}/{regime}/exact_sparsity'] = float(r.exact_sparsity)
        gap = losses['none'] - dense
        for regime in regimes:
          if regime != 'none':
            closed = (losses['none'] - losses[regime]) / gap if gap > 0 else float('nan')
            out[f'{base}/{regime}/gap_closed'] = closed
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    header = (
      '| scorer | target | kernel sparsity | regime | retrained params | '
      f'val {unit_name} | gap closed | exact zeros after merge |\n'
      '| --- | --- | --- | --- | --- | --- | --- | --- |'
    )
    rows = []
    for scorer in scorers:
      for target in targets:
        base = f'perp/{scorer}/{target}'
        for regime in regimes:
          gap = final.get(f'{base}/{regime}/gap_closed', float('nan'))
          rows.append(
            f'| {scorer} | {target} | {final[f"{base}/kernel_sparsity"]:.3f} | {regime} | '
            f'{100 * final[f"{base}/{regime}/trained_fraction"]:.2f}% | '
            f'{final[f"{base}/{regime}/{unit_name}"]:.4f} | '
            f'{"—" if regime == "none" else f"{gap:.2f}"} | '
            f'{"yes" if final[f"{base}/{regime}/exact_sparsity"] else "NO"} |'
          )
    dense = final[f'perp/dense/{unit_name}']
    section = (
      f'## Prune, then retrain a subset\n\nDense model: val {unit_name} {dense:.4f}. '
      'Gap closed = (pruned − retrained) / (pruned − dense). Retrained params are a fraction '
      "of all the model's parameters.\n\n" + header + '\n' + '\n'.join(rows)
    )
    return ReportPart([section], [])

  return Plugin(finalize=finalize, report=report)
