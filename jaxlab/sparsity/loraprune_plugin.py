"""`config.plugins.loraprune`: LoRA-guided structured pruning of the trained LM (LoRAPrune).

After the train loop has trained the dense LM, `finalize` runs, for each criterion (`'lora'`:
LoRAPrune's adapter-gradient estimate; `'magnitude'`; `'taylor'`: LLM-Pruner's full-gradient
first-order criterion) and each compression (the fraction of heads and MLP channels removed
from every block), the same procedure (`jaxlab.sparsity.lora_prune`): LoRA fine-tuning for
`steps` steps with the importance smoothed across steps and units pruned every `prune_every`
steps on the cubic schedule, then adapters merged and units cut out. It reports the cropped
model's validation loss and size, checks the cropped model computes what the masked one did,
and measures the compiled step's memory (XLA's memory analysis) per criterion.
"""

from __future__ import annotations

import copy
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.core.task import build_task
from jaxlab.sparsity import lora_prune, lowrank
from jaxlab.sparsity.perp_plugin import evaluate


def finetune_and_prune(
  task: Any,
  params: Any,
  criterion: str,
  compression: float,
  *,
  steps: int,
  prune_every: int,
  lr: float,
  cfg: lowrank.LoraConfig,
  seed: int,
  step_cache: dict,
) -> tuple[lowrank.Adapters, dict[str, jax.Array], float]:
  """LoRA fine-tuning with iterative unit pruning; returns adapters, keeps, last train loss."""
  families = lora_prune.transformer_unit_families(params)
  adapters = lowrank.init_adapters(jax.random.key(seed), params, cfg)
  keeps = {f.name: jnp.ones(f.size, bool) for f in families}
  ema = {f.name: jnp.zeros(f.size) for f in families}
  tx = optax.adam(lr)
  if criterion not in step_cache:
    step_cache[criterion] = lora_prune.make_step(task, families, cfg, criterion, tx)
  step = step_cache[criterion]
  opt_state = tx.init(adapters)
  batches = task.train_iterator(seed, 0, 1)
  key = jax.random.key(seed)
  loss = jnp.nan
  for t in range(steps):
    batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
    adapters, opt_state, loss, imp = step(
      params, adapters, opt_state, keeps, batch, jax.random.fold_in(key, t)
    )
    ema = {k: lora_prune.EMA * ema[k] + (1 - lora_prune.EMA) * imp[k] for k in ema}
    if (t + 1) % prune_every == 0:
      keeps = lora_prune.prune_units(
        ema, keeps, lora_prune.cubic_sparsity(t + 1, steps, compression)
      )
  keeps = lora_prune.prune_units(ema, keeps, compression)
  return adapters, keeps, float(loss)


@PLUGINS.register('loraprune')
def loraprune(
  task: Any,
  config: Any,
  criteria: Sequence[str] = lora_prune.CRITERIA,
  compressions: Sequence[float] = (0.2, 0.5),
  steps: int = 100,
  prune_every: int = 10,
  lr: float = 1e-3,
  rank: int = 8,
  alpha: float = 16.0,
) -> Plugin:
  """See the module docstring."""
  for c in criteria:
    if c not in lora_prune.CRITERIA:
      raise ValueError(f'criteria: expected names in {lora_prune.CRITERIA}, got {c!r}')
  for c in compressions:
    if not 0.0 < c < 1.0:
      raise ValueError(f'compressions: expected fractions in (0, 1), got {c!r}')
  if config.model.name != 'transformer' or config.model.mixer != 'attention':
    raise ValueError('model: expected the transformer with model.mixer=attention')
  cfg = lowrank.LoraConfig(rank, alpha)
  unit = 1.0 / math.log(2) if getattr(task, 'byte_level', False) else 1.0
  unit_name = 'bits_per_byte' if unit != 1.0 else 'loss'

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(state.params)
    families = lora_prune.transformer_unit_families(params)
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    out = {f'loraprune/dense/{unit_name}': evaluate(task, params, eval_batches) * unit}
    steps_by_criterion: dict = {}
    for criterion in criteria:
      for compression in compressions:
        adapters, keeps, _ = finetune_and_prune(
          task,
          params,
          criterion,
          compression,
          steps=steps,
          prune_every=prune_every,
          lr=lr,
          cfg=cfg,
          seed=config.seed,
          step_cache=steps_by_criterion,
        )
        small, fields = lora_prune.crop_units(params, adapters, cfg, families, keeps)
        small_config = copy.deepcopy(config)
        small_config.model.update(fields)
        small_task = build_task(small_config)
        base = f'loraprune/{criterion}/{compression}'
        out[f'{base}/{unit_name}'] = evaluate(small_task, small, eval_batches) * unit
        out[f'{base}/params_fraction'] = sum(np.size(x) for x in jax.tree.leaves(small)) / total
        out[f'{base}/heads'] = float(fields['heads'])
        out[f'{base}/mlp_dim'] = float(fields['mlp_dim'])
        # The cropped model computes what the masked LoRA model did.
        batch = {k: jnp.asarray(v) for k, v in eval_batches[0].items()}
        masked = lora_prune.lora_loss(
          task, params, adapters, keeps, families, cfg, batch, jax.random.key(0), train=False
        )
        cropped, _ = small_task.loss(small, batch, jax.random.key(0), train=False)
        out[f'{base}/crop_loss_diff'] = abs(float(masked) - float(cropped))
    # Memory of one compiled step per criterion, same shapes (XLA's analysis; no run needed).
    batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(0, 0, 1)).items()}
    adapters = lowrank.init_adapters(jax.random.key(0), params, cfg)
    keeps = {f.name: jnp.ones(f.size, bool) for f in families}
    opt_state = optax.adam(lr).init(adapters)
    for criterion, step in steps_by_criterion.items():
      mem = lora_prune.step_memory_bytes(
        step, params, adapters, opt_state, keeps, batch, jax.random.key(0)
      )
      out[f'loraprune/memory/{criterion}/temp_bytes'] = float(mem['temp'])
      out[f'loraprune/memory/{criterion}/peak_bytes'] = float(sum(mem.values()))
    if 'lora' in criteria and 'taylor' in criteria:
      lora_peak = out['loraprune/memory/lora/peak_bytes']
      out['loraprune/memory_saving_vs_taylor'] = (
        1 - lora_peak / out['loraprune/memory/taylor/peak_bytes']
      )
      for compression in compressions:
        out[f'loraprune/{unit_name}_ratio_vs_taylor/{compression}'] = (
          out[f'loraprune/lora/{compression}/{unit_name}']
          / out[f'loraprune/taylor/{compression}/{unit_name}']
        )
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    rows = []
    for criterion in criteria:
      mem = final.get(f'loraprune/memory/{criterion}/peak_bytes', float('nan')) / 2**20
      for compression in compressions:
        base = f'loraprune/{criterion}/{compression}'
        rows.append(
          f'| {criterion} | {compression:.0%} | {final[f"{base}/heads"]:.0f} | '
          f'{final[f"{base}/mlp_dim"]:.0f} | {final[f"{base}/params_fraction"]:.3f} | '
          f'{final[f"{base}/{unit_name}"]:.4f} | {final[f"{base}/crop_loss_diff"]:.1e} | '
          f'{mem:.1f} |'
        )
    dense = final[f'loraprune/dense/{unit_name}']
    section = (
      f'## Structured pruning while fine-tuning with LoRA\n\nDense model: val {unit_name} '
      f'{dense:.4f}. Each row: {steps} LoRA steps with pruning every {prune_every} steps '
      "(cubic schedule), then merged and cropped. Step memory: XLA's memory analysis of the "
      'compiled fine-tuning step (arguments + outputs + temporaries).\n\n'
      f'| criterion | compression | heads/block | MLP channels/block | params kept | '
      f'val {unit_name} (cropped) | cropped vs masked loss | step memory MiB |\n'
      '| --- | --- | --- | --- | --- | --- | --- | --- |\n' + '\n'.join(rows)
    )
    return ReportPart([section], [])

  return Plugin(finalize=finalize, report=report)
