"""Retraining a pruned model with a chosen subset of parameters (PERP, Zimmer et al., 2023).

After pruning with masks `M`, PERP retrains only a tiny subset and keeps the sparsity:

- `'none'`: no retraining (the pruned model as is);
- `'full'`: every parameter, the forward pass on `W ⊙ M` (so pruned weights get no gradient);
- `'norms'`: the normalisation scales and biases only (Sec. 3.1, "biases and LN");
- `'lora'`, `'masklora'`, `'scalelora'`: norms and biases plus LoRA adapters on the pruned
  kernels, merged as `W + s·ab` (then masked at the end: PERP's "LoRA-Prune" baseline, whose
  training-time model is dense), `W + s·(ab ⊙ M)` (MaskLoRA) or `W ⊙ ab` (ScaleLoRA)
  (`jaxlab.sparsity.lowrank`, Sec. 3.2).

`retrain` runs its own short jitted AdamW loop on the task's loss (the main train loop trains
the dense model; this runs after it, inside a plugin's `finalize`) and returns the merged,
masked parameters with the count of trained parameters and whether the merged parameters
were exactly zero at every pruned entry *before* the final masking.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.core.plugins import path_name
from jaxlab.core.task import Task
from jaxlab.sparsity import lowrank
from jaxlab.sparsity.masking import apply_masks

REGIMES = ('none', 'full', 'norms', 'lora', 'masklora', 'scalelora')
LORA_KIND = {'lora': 'lora', 'masklora': 'mask', 'scalelora': 'scale'}
NORMS_AND_BIASES = re.compile(r'(.*/)?(\w*norm\w*/(scale|bias)|bias)')


class Retrained(NamedTuple):
  params: Any  # merged and masked
  trained_params: int  # how many parameters received updates
  exact_sparsity: bool  # merged params were zero wherever M is, before the final masking
  final_train_loss: float


def trainable_labels(params: Any, regime: str) -> Any:
  """`'train'`/`'frozen'` per parameter for `regime` (adapters are labelled separately)."""
  if regime == 'full':
    return jax.tree.map(lambda _: 'train', params)
  return jax.tree_util.tree_map_with_path(
    lambda p, _: 'train' if NORMS_AND_BIASES.fullmatch(path_name(p)) else 'frozen', params
  )


def retrain(
  task: Task,
  params: Any,
  masks: Any,
  regime: str,
  *,
  steps: int,
  lr: float,
  lora: lowrank.LoraConfig | None = None,
  seed: int = 0,
  warmup_steps: int = 0,
) -> Retrained:
  """Retrains the pruned `params ⊙ masks` with `regime`'s trainable subset for `steps` steps.

  Args:
    task: the task whose `loss` and `train_iterator` are used.
    params: the (dense, trained) parameters.
    masks: booleans shaped like `params`; False = pruned.
    regime: one of `REGIMES`.
    steps: optimizer steps (a cosine decay from `lr` after `warmup_steps`).
    lr: the peak learning rate.
    lora: rank/alpha/pattern of the adapters for the LoRA regimes (its `kind` is set from the
      regime).
    seed: data order and dropout.
    warmup_steps: linear warm-up steps.
  """
  if regime not in REGIMES:
    raise ValueError(f'regime: expected one of {REGIMES}, got {regime!r}')
  pruned = apply_masks(params, masks)
  if regime == 'none':
    return Retrained(pruned, 0, True, float('nan'))
  cfg = None
  adapters: lowrank.Adapters = {}
  if regime in LORA_KIND:
    base = lora or lowrank.LoraConfig()
    cfg = lowrank.LoraConfig(base.rank, base.alpha, base.pattern, LORA_KIND[regime])
    adapters = lowrank.init_adapters(jax.random.key(seed), pruned, cfg)
  theta = {'params': pruned, 'lora': adapters}
  labels = {
    'params': trainable_labels(pruned, regime),
    'lora': jax.tree.map(lambda _: 'train', adapters),
  }
  trained = sum(
    int(x.size)
    for x, label in zip(jax.tree.leaves(theta), jax.tree.leaves(labels), strict=True)
    if label == 'train'
  )
  tx, step = _compiled(task, regime, cfg, steps, lr, warmup_steps, _Labels(labels))
  opt_state = tx.init(theta)
  batches = task.train_iterator(seed, 0, 1)
  key = jax.random.key(seed)
  loss = jnp.nan
  for t in range(steps):
    batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
    theta, opt_state, loss = step(theta, opt_state, masks, batch, jax.random.fold_in(key, t))
  merged = model_params(theta, masks, regime, cfg)
  exact = all(
    bool(jnp.all(jnp.where(m, True, w == 0)))
    for w, m in zip(jax.tree.leaves(merged), jax.tree.leaves(masks), strict=True)
  )
  return Retrained(apply_masks(merged, masks), trained, exact, float(loss))


def model_params(theta: Any, masks: Any, regime: str, cfg: lowrank.LoraConfig | None) -> Any:
  """The model's parameters during retraining: masked (`'full'`), adapters merged (LoRA)."""
  p = theta['params']
  if regime == 'full':
    p = apply_masks(p, masks)
  if cfg is not None:
    p = lowrank.merge(p, theta['lora'], cfg)
  return p


class _Labels:
  """A labels tree hashable by its leaves and structure (an `lru_cache` key)."""

  def __init__(self, tree: Any):
    self.tree = tree
    leaves, treedef = jax.tree.flatten(tree)
    self._key = (tuple(leaves), treedef)

  def __hash__(self) -> int:
    return hash(self._key)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Labels) and self._key == other._key


@functools.lru_cache(maxsize=16)
def _compiled(task, regime, cfg, steps, lr, warmup_steps, labels: _Labels):
  """The optimizer and jitted step of one regime, reused across masks and targets (the masks
  are an argument, not a constant), so retraining many pruned models compiles once per regime."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(steps, warmup_steps + 1))
  tx = optax.multi_transform(
    {'train': optax.adamw(schedule, weight_decay=0.0), 'frozen': optax.set_to_zero()}, labels.tree
  )

  def loss_fn(theta, masks, batch, rng):
    loss, _ = task.loss(model_params(theta, masks, regime, cfg), batch, rng, train=True)
    return loss

  @jax.jit
  def step(theta, opt_state, masks, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(theta, masks, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, loss

  return tx, step
