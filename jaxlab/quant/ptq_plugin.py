"""The `ptq` plugin: after training, quantize the LM with every post-training method and score it.

Methods (names in `methods`, comma-separated):

  fp32          the trained model (reference)
  rtn<b>        round-to-nearest, `b` bits, per group of `group_size` input rows (`quantize`)
  gptq<b>       GPTQ, `b` bits, same grid and groups (`gptq.gptq_params`)
  binary        binarization `α·sign(w)`, one `α` per output channel (`binarize`)
  ptq161        PTQ1.61: 20% salient input channels at 4 bits, the rest binarized with scales
                fitted by block-wise reconstruction (`ptq161.ptq161_params`)
  ptq161_pp     PTQ1.61 after the paper's quantization preprocessing (restorative LoRA on the
                first-round PTQ1.61 model, merged, then PTQ1.61 again; `ptq161.restorative_lora`)

Every method quantizes the kernels matched by `rules` (by default every linear layer of the
transformer blocks; embeddings and norms stay float, as in the papers) from the same
calibration sequences, drawn from the *training* split. For each method the final metrics hold
`ptq/<method>/bits_per_weight` (the exact storage account, `bits_per_weight`) and
`ptq/<method>/<metric>` (validation bits/byte for byte-level text, else loss) on the evaluation
batches. `ptq/sub2bit_ratio` is PTQ1.61's (the preprocessed one when run) metric over the best of
the previous ≤2-bit methods run (rtn2, gptq2, binary): below 1 means PTQ1.61 wins.
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.quant.calibration import calibration_tokens
from jaxlab.quant.gptq import gptq_params
from jaxlab.quant.model import DEFAULT_RULES, kernel_paths, quantize_params
from jaxlab.quant.ptq161 import SaliencyMaskedTensor, ptq161_params, restorative_lora
from jaxlab.quant.tensor import binarize, bits_per_weight, dequantize, quantize

_METHOD = re.compile(r'fp32|rtn[1-8]|gptq[1-8]|binary|ptq161|ptq161_pp')
_SUB2BIT_BASELINES = ('rtn2', 'gptq2', 'binary')


def _evaluator(task: Any, eval_batches: list):
  rng = jax.random.key(0)
  loss = jax.jit(lambda params, batch: task.loss(params, batch, rng, train=False)[1][0])
  weights = np.array([float(np.sum(b['mask'])) if 'mask' in b else 1.0 for b in eval_batches])

  def evaluate(params: Any) -> dict[str, float]:
    results = [jax.device_get(loss(params, b)) for b in eval_batches]
    return {k: float(np.average([r[k] for r in results], weights=weights)) for k in results[0]}

  return evaluate


def _mask_bits_per_weight(qparams: Any) -> float:
  leaves = [
    x
    for x in jax.tree_util.tree_leaves(
      qparams, is_leaf=lambda x: isinstance(x, SaliencyMaskedTensor)
    )
    if isinstance(x, SaliencyMaskedTensor)
  ]
  return sum(x.mask.size * x.mask.dtype.itemsize * 8 for x in leaves) / sum(
    x.num_weights for x in leaves
  )


_dequantize = jax.jit(dequantize)


@PLUGINS.register('ptq')
def ptq(
  methods: str = 'fp32,rtn4,rtn3,rtn2,gptq4,gptq3,gptq2,binary,ptq161,ptq161_pp',
  rules: tuple = DEFAULT_RULES,
  group_size: int = 64,
  calib_sequences: int = 32,
  calib_seed: int = 1234,
  fraction: float = 0.2,
  salient_bits: int = 4,
  epochs: int = 20,
  batch_size: int = 1,
  lr_scale: float = 5e-4,
  lr_rotate: float = 1e-3,
  lora_rank: int = 8,
  lora_steps: int = 100,
  lora_lr: float = 1e-3,
) -> Plugin:
  """Post-training quantization of the trained LM by every method in `methods` (module doc).

  Args:
    methods: comma-separated method names.
    rules: kernel path regexes to quantize.
    group_size: input rows per scale for RTN and GPTQ (0: one scale per output channel).
    calib_sequences: calibration sequences, from the training split.
    calib_seed: seed of the calibration (and LoRA) data order.
    fraction, salient_bits: PTQ1.61's structured mask (20%, 4 bits in the paper).
    epochs, batch_size, lr_scale, lr_rotate: PTQ1.61's block-wise reconstruction (the paper:
      20 epochs, batch 1, AdamW 5e-4 for α and 1e-3 for the row/column factors).
    lora_rank, lora_steps, lora_lr: the restorative LoRA of `ptq161_pp`.
  """
  names = [m.strip() for m in methods.split(',') if m.strip()]
  bad = [m for m in names if not _METHOD.fullmatch(m)]
  if bad or not names:
    raise ValueError(
      f'methods: expected names among fp32, rtn<b>, gptq<b>, binary, ptq161, '
      f'ptq161_pp, got {methods!r}'
    )
  if calib_sequences <= 0 or calib_sequences % batch_size:
    raise ValueError(
      f'calib_sequences: expected a positive multiple of batch_size={batch_size}, got '
      f'{calib_sequences}'
    )
  if group_size < 0:
    raise ValueError(f'group_size: expected 0 (per channel) or a positive int, got {group_size}')
  rules = tuple(rules)
  groups = group_size or None
  recon = dict(
    fraction=fraction,
    salient_bits=salient_bits,
    epochs=epochs,
    batch_size=batch_size,
    lr_scale=lr_scale,
    lr_rotate=lr_rotate,
  )

  def finalize(task: Any, state: Any, eval_batches: list) -> dict[str, float]:
    model, params = task.model, state.params
    evaluate = _evaluator(task, eval_batches)
    metric = 'bits_per_byte' if task.byte_level else 'loss'
    tokens = jnp.asarray(calibration_tokens(task.train_iterator(calib_seed, 0, 1), calib_sequences))
    batches = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    final: dict[str, float] = {}
    first_round = None
    for name in names:
      if name == 'fp32':
        final[f'ptq/fp32/{metric}'] = evaluate(params)[metric]
        continue
      if name.startswith('rtn'):
        rtn = jax.jit(functools.partial(quantize, bits=int(name[3:]), group_size=groups))
        qparams = quantize_params(params, rules, rtn)
      elif name.startswith('gptq'):
        qparams = gptq_params(model, params, batches, rules, int(name[4:]), group_size=groups)
      elif name == 'binary':
        qparams = quantize_params(params, rules, jax.jit(binarize))
      else:
        if first_round is None:
          first_round, hist = ptq161_params(model, params, tokens, rules, **recon)
          _log_histories(final, 'ptq161', hist)
        qparams = first_round
        if name == 'ptq161_pp':

          def loss_fn(p, batch):
            return task.loss(p, batch, jax.random.key(0), train=False)[0]

          merged = restorative_lora(
            loss_fn,
            _dequantize(first_round),
            kernel_paths(params, rules),
            iter(task.train_iterator(calib_seed + 1, 0, 1)),
            rank=lora_rank,
            steps=lora_steps,
            learning_rate=lora_lr,
            key=jax.random.key(calib_seed),
          )
          qparams, hist = ptq161_params(model, merged, tokens, rules, **recon)
          _log_histories(final, 'ptq161_pp', hist)
        final[f'ptq/{name}/mask_bits_per_weight'] = _mask_bits_per_weight(qparams)
      final[f'ptq/{name}/bits_per_weight'] = bits_per_weight(qparams)
      final[f'ptq/{name}/{metric}'] = evaluate(_dequantize(qparams))[metric]
    full = 'ptq161_pp' if 'ptq161_pp' in names else 'ptq161'
    baselines = [final[f'ptq/{b}/{metric}'] for b in _SUB2BIT_BASELINES if b in names]
    if full in names and baselines:
      final['ptq/sub2bit_ratio'] = final[f'ptq/{full}/{metric}'] / min(baselines)
    return final

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    metric = 'bits_per_byte' if any(k.endswith('/bits_per_byte') for k in final) else 'loss'
    unit = 'val bits/byte' if metric == 'bits_per_byte' else 'val loss'
    rows, points = [], []
    for name in names:
      value = final[f'ptq/{name}/{metric}']
      bpw = final.get(f'ptq/{name}/bits_per_weight')
      rows.append(f'| {name} | {"32 (float)" if bpw is None else f"{bpw:.4f}"} | {value:.4f} |')
      if bpw is not None:
        points.append((name, bpw, value))
    notes = []
    for name in ('ptq161', 'ptq161_pp'):
      if f'ptq/{name}/mask_bits_per_weight' in final:
        first, last = final[f'ptq/{name}/recon_first'], final[f'ptq/{name}/recon_last']
        notes.append(
          f'- {name}: structured mask {final[f"ptq/{name}/mask_bits_per_weight"]:.5f} '
          f'bits/weight; block reconstruction loss (sum over blocks) {first:.4f} → {last:.4f}.'
        )
    if 'ptq/sub2bit_ratio' in final:
      notes.append(
        f'- PTQ1.61 / best previous ≤2-bit method ({", ".join(_SUB2BIT_BASELINES)}): '
        f'{final["ptq/sub2bit_ratio"]:.4f} (< 1: PTQ1.61 is better).'
      )
    section = (
      '## Post-training quantization\n\n'
      f'Bits/weight is the exact storage account of the quantized linear weights (codes, '
      f'scales, zero-points, masks at their stored dtypes; embeddings and norms stay float). '
      f'RTN/GPTQ use {"per-channel" if groups is None else f"{groups}-row group"} scales; '
      f'{calib_sequences} calibration sequences from the training split.\n\n'
      f'| method | bits/weight | {unit} |\n| --- | --- | --- |\n'
      + '\n'.join(rows)
      + ('\n\n' + '\n'.join(notes) if notes else '')
    )
    plots = [_plot(points, unit, workdir / 'ptq_bits.png')] if points else []
    return ReportPart([section], plots)

  return Plugin(finalize=finalize, report=report)


def _log_histories(final: dict, name: str, histories: Mapping[str, list[float]]) -> None:
  final[f'ptq/{name}/recon_first'] = float(sum(h[0] for h in histories.values()))
  final[f'ptq/{name}/recon_last'] = float(sum(min(h) for h in histories.values()))


def _plot(points: list[tuple[str, float, float]], unit: str, path: pathlib.Path) -> pathlib.Path:
  fig = Figure(figsize=(6.5, 4.5), layout='constrained')
  ax = fig.add_subplot()
  for name, bpw, value in points:
    ax.scatter(bpw, value)
    ax.annotate(name, (bpw, value), textcoords='offset points', xytext=(4, 4), fontsize=8)
  ax.set_xlabel('bits per weight (exact storage account)')
  ax.set_ylabel(unit)
  ax.set_title('post-training quantization: quality vs real bits')
  ax.grid(True, alpha=0.3)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  return path
