"""LoRA-guided structured pruning of a transformer LM (LoRAPrune, Zhang et al., 2023).

Units are attention heads and MLP channels (`transformer_unit_families`): head `h` of block `i`
is slice `h` of the query/key/value kernels' heads axis and of the output projection's; MLP
channel `c` is column `c` of `wi` (`wi_gate`, `wi_up`) and row `c` of `wo`.

**LoRA forward** (`lora_loss`): every adapted linear layer computes `x W + s·(x a) b` through
`flax.linen.intercept_methods` (the model is not edited), and a pruned unit's output is zeroed
(`x W ⊙ m`). The frozen `W` is a constant, so the backward pass produces gradients for the
adapters only: no `[in, out]` gradient of a frozen kernel is ever formed (checked on the jaxpr),
which is where the memory saving over full-gradient criteria comes from.

**Importance** of a weight, from the adapters and their gradients only (Sec. 3.2, Eq. 8–10 of
the paper; the official `compute_sensitivity`): with `g_a = ∂L/∂a`, `g_b = ∂L/∂b`,

  Ĝ = a g_b + g_a b − g_a g_b        (the change of `ab` under a unit gradient step),
  Î = |Ĝ ⊙ (W + s·ab)|,

summed over each unit's slice of a kernel, divided by that kernel's L2 norm over units, and
summed over the unit's kernels; smoothed across steps by an exponential moving average
(`Ī ← 0.9 Ī + 0.1 Î`, the official code). Baselines on the same loop: `'magnitude'`
(`|W + s·ab|`) and `'taylor'`, the full-gradient first-order criterion of LLM-Pruner
(`|W' ⊙ ∂L/∂W'|`, Ma et al., 2023), which needs the frozen weights' gradients.

**Schedule**: every `prune_every` steps the same fraction of units of every block is removed
(the official `local_prune`), the fraction following the cubic schedule of the official
`schedule_sparsity_ratio` (Zhu & Gupta, 2017) to the target; pruned units stay pruned. At the
end the adapters are merged and the pruned units cut out (`crop`): the result is an ordinary
smaller `TransformerConfig` (`heads`, `mlp_dim`, `head_width`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core.plugins import flat_paths
from jaxlab.nn.kernels import as_matrix
from jaxlab.quant.calibration import input_rows
from jaxlab.sparsity import lowrank
from jaxlab.sparsity.crop import crop
from jaxlab.sparsity.groups import Family, Member, member_slices

CRITERIA = ('lora', 'magnitude', 'taylor')
EMA = 0.9  # the official code's smoothing of the importance across steps


def transformer_unit_families(params: Any) -> tuple[Family, ...]:
  """Heads and MLP channels of every `block_i` of a transformer LM with attention and an
  `mlp`/`glu` FFN (member paths as in `jaxlab.sparsity.groups`)."""
  families = []
  for block in sorted((k for k in params if k.startswith('block_')), key=lambda k: int(k[6:])):
    p = params[block]
    if 'attention' not in p or 'ffn' not in p:
      raise ValueError(
        f'{block}: expected an attention mixer and an ffn (model.mixer=attention), got {sorted(p)}'
      )
    att, pre = p['attention'], f'params/{block}'
    heads = att['query']['kernel'].shape[1]
    members = [Member(f'{pre}/attention/{n}/kernel', 1, 1, True) for n in ('query', 'key', 'value')]
    members.append(Member(f'{pre}/attention/out/kernel', 0))
    families.append(Family(f'{block}/heads', heads, tuple(members)))
    ins = [n for n in ('wi', 'wi_gate', 'wi_up') if n in p['ffn']]
    width = p['ffn'][ins[0]]['kernel'].shape[1]
    members = [Member(f'{pre}/ffn/{n}/kernel', 1, 1, True) for n in ins]
    members.append(Member(f'{pre}/ffn/wo/kernel', 0))
    families.append(Family(f'{block}/mlp', width, tuple(members)))
  if not families:
    raise ValueError('transformer_unit_families: no block_i in the parameters')
  return tuple(families)


def _producer_masks(families: tuple[Family, ...], keeps: Mapping[str, jax.Array]) -> dict:
  """kernel path (no `params/`) -> the unit mask its output is multiplied by."""
  out = {}
  for f in families:
    for m in f.members:
      if m.producer:
        out[m.path.removeprefix('params/')] = keeps[f.name]
  return out


def lora_loss(
  task: Any,
  params: Any,
  adapters: lowrank.Adapters,
  keeps: Mapping[str, jax.Array],
  families: tuple[Family, ...],
  cfg: lowrank.LoraConfig,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  train: bool = True,
) -> jax.Array:
  """The task's loss with `x W + s·(x a) b` in every adapted layer and pruned units zeroed."""
  masks = _producer_masks(families, keeps)

  def interceptor(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name != '__call__':
      return y
    name = '/'.join(context.module.path) + '/kernel'
    if name in adapters:
      rows = input_rows(context.module, args[0])
      ad = adapters[name]
      y = y + (cfg.scale * ((rows @ ad['a']) @ ad['b'])).reshape(y.shape).astype(y.dtype)
    if name in masks:  # the unit axis: heads of `[B, T, heads, kv]`, channels of `[B, T, mlp]`
      m = masks[name].astype(y.dtype)
      y = y * (m[:, None] if y.ndim == 4 else m)
    return y

  with nn.intercept_methods(interceptor):
    loss, _ = task.loss(params, batch, rng, train=train)
  return loss


def _elementwise(params, adapters, cfg, criterion, grads_adapters=None, grads_params=None):
  """`{kernel path: elementwise importance in the kernel's shape}` for the adapted kernels."""
  flat = flat_paths(params)
  gflat = flat_paths(grads_params) if grads_params is not None else {}
  out = {}
  for name, ad in adapters.items():
    w, restore = as_matrix(name, flat[name])
    w_merged = w + cfg.scale * (ad['a'] @ ad['b'])
    if criterion == 'magnitude':
      score = jnp.abs(w_merged)
    elif criterion == 'lora':
      ga, gb = grads_adapters[name]['a'], grads_adapters[name]['b']
      g_hat = ad['a'] @ gb + ga @ ad['b'] - ga @ gb
      score = jnp.abs(g_hat * w_merged)
    elif criterion == 'taylor':
      score = jnp.abs(as_matrix(name, gflat[name])[0] * w_merged)
    else:
      raise ValueError(f'criterion: expected one of {CRITERIA}, got {criterion!r}')
    out[name] = restore(score)
  return out


def unit_importance(
  families: tuple[Family, ...],
  params: Any,
  adapters: lowrank.Adapters,
  cfg: lowrank.LoraConfig,
  criterion: str,
  grads_adapters: Any = None,
  grads_params: Any = None,
) -> dict[str, jax.Array]:
  """Per family, `[size]` unit importances: each member kernel's per-unit sums, L2-normalised
  over the kernel's units, summed over the family's kernels."""
  scores = _elementwise(params, adapters, cfg, criterion, grads_adapters, grads_params)
  out = {}
  for f in families:
    total = jnp.zeros(f.size)
    for m in f.members:
      name = m.path.removeprefix('params/')
      if name in scores:
        s = member_slices(scores[name], m, f.size).sum(axis=1)
        total = total + s / (jnp.linalg.norm(s) + 1e-8)
    out[f.name] = total
  return out


def cubic_sparsity(
  step: int, total: int, target: float, initial_warmup: float = 0.1, final_warmup: float = 0.3
) -> float:
  """The official `schedule_sparsity_ratio` with initial sparsity 0: 0 for the first
  `initial_warmup·total` steps, `target` for the last `final_warmup·total`, cubic between."""
  if step <= initial_warmup * total:
    return 0.0
  if step > total - final_warmup * total:
    return target
  warm = initial_warmup * total
  span = total - (initial_warmup + final_warmup) * total
  return target * (1.0 - (1.0 - (step - warm) / span) ** 3)


def prune_units(
  importance: Mapping[str, jax.Array], keeps: Mapping[str, jax.Array], sparsity: float
) -> dict[str, jax.Array]:
  """Keeps per family with `round(sparsity·size)` units removed, lowest importance first;
  removed units stay removed (at least one unit survives)."""
  out = {}
  for name, imp in importance.items():
    keep = np.asarray(keeps[name], bool)
    size = keep.size
    n_remove = min(int(round(sparsity * size)), size - 1)
    if n_remove <= int((~keep).sum()):
      out[name] = jnp.asarray(keep)
      continue
    order = np.argsort(np.where(keep, np.asarray(imp, np.float64), -np.inf), kind='stable')
    new = np.ones(size, bool)
    new[order[:n_remove]] = False
    out[name] = jnp.asarray(new & keep)
  return out


def crop_units(
  params: Any,
  adapters: lowrank.Adapters,
  cfg: lowrank.LoraConfig,
  families: tuple[Family, ...],
  keeps: Mapping[str, jax.Array],
) -> tuple[Any, dict[str, int]]:
  """Adapters merged, pruned units cut out; returns the params and the new model fields
  (`heads`, `mlp_dim`, `head_width`), which need equal counts in every block."""
  full = lowrank.merge(params, adapters, cfg)
  small = crop({'params': full}, families, {k: np.asarray(v) for k, v in keeps.items()})['params']
  heads = {int(np.sum(keeps[f.name])) for f in families if f.name.endswith('/heads')}
  mlp = {int(np.sum(keeps[f.name])) for f in families if f.name.endswith('/mlp')}
  if len(heads) != 1 or len(mlp) != 1:
    raise ValueError(f'crop_units: blocks kept different counts (heads {heads}, mlp {mlp})')
  head_width = params['block_0']['attention']['query']['kernel'].shape[2]
  return small, {'heads': heads.pop(), 'mlp_dim': mlp.pop(), 'head_width': head_width}


def make_step(task: Any, families: tuple[Family, ...], cfg: lowrank.LoraConfig, criterion: str, tx):
  """The jitted LoRA fine-tuning step that also returns this batch's unit importance.

  Only `'taylor'` differentiates with respect to the frozen parameters (its criterion needs
  `∂L/∂W`); the others differentiate with respect to the adapters alone.
  """
  wrt = (0, 1) if criterion == 'taylor' else (1,)

  def loss_fn(params, adapters, keeps, batch, rng):
    return lora_loss(task, params, adapters, keeps, families, cfg, batch, rng)

  def step(params, adapters, opt_state, keeps, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn, argnums=wrt)(params, adapters, keeps, batch, rng)
    g_adapters = grads[-1]
    g_params = grads[0] if criterion == 'taylor' else None
    importance = unit_importance(families, params, adapters, cfg, criterion, g_adapters, g_params)
    updates, opt_state = tx.update(g_adapters, opt_state, adapters)
    adapters = jax.tree.map(jnp.add, adapters, updates)
    return adapters, opt_state, loss, importance

  return jax.jit(step)


def step_memory_bytes(step, *args) -> dict[str, int]:
  """XLA's memory analysis of the compiled step: temporaries, arguments, outputs (bytes)."""
  m = step.lower(*args).compile().memory_analysis()
  return {
    'temp': int(m.temp_size_in_bytes),
    'argument': int(m.argument_size_in_bytes),
    'output': int(m.output_size_in_bytes),
  }
