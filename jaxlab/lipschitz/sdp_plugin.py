"""The `lipsdp` plugin: after training a `lipschitz_mlp`, bound its global Lipschitz constant
every way `jaxlab.lipschitz.sdp` can, certify it, and attack it.

  config.plugins.lipsdp = ml_collections.ConfigDict({
    'norms': 'l2,linf',        # which bounds
    'linf_row': 8,             # l_inf: bound this output row (the paper's choice), -1 = all
    'eps_l2': 0.1, 'eps_linf': 0.01,   # radii for certified and PGD accuracy
  })

Per norm it reports the matrix-product bound (MP), LipSDP on the residual-ReLU rewrite of
MaxMin (ResReLU; MaxMin nets only), the new QC with free `μ` and with `μ = 0`, the largest
sampled Jacobian norm (a lower bound), the solve times, and certified / PGD / clean accuracy at
`eps` using the tightest bound. In l_inf every SDP is one program per output row with the
64-wide `diag(τ)` LMI (no QR reduction), solved by SCS: `linf_row >= 0` bounds that row only,
as the paper does (`|f_row(x) - f_row(y)| <= L ||x - y||_inf`), and then l_inf certified
accuracy, which needs every row, is left out; `linf_row = -1` bounds every row (the l_inf ->
l_inf constant is the largest). `lip/qc_over_best_baseline` is the largest, over norms, of
QC / min(MP, ResReLU): below 1 when the new QC beats both baselines in every norm.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.lipschitz.sdp import lipsdp_info, matrix_product_bound, sampled_lower_bound
from jaxlab.nn.lipschitz_layers import effective_kernels
from jaxlab.robust import certified_accuracy, pgd

METHODS = ('mp', 'resrelu', 'qc', 'qc_mu0')
LABELS = {
  'mp': 'matrix product',
  'resrelu': 'LipSDP, residual-ReLU MaxMin',
  'qc': 'LipSDP, new QC (μ free)',
  'qc_mu0': 'LipSDP, new QC (μ = 0)',
  'sampled': 'sampled max ‖J(x)‖ (lower bound)',
}


@PLUGINS.register('lipsdp')
def lipsdp_plugin(
  task: Any,
  norms: str = 'l2,linf',
  linf_row: int = -1,
  solver: str = 'auto',
  samples: int = 2000,
  max_lmi_side: int = 600,
  eps_l2: float = 0.1,
  eps_linf: float = 0.01,
  pgd_steps: int = 20,
  seed: int = 0,
) -> Plugin:
  """Builds the plugin (see the module docstring).

  Args:
    task: the classification task; its model must be a `lipschitz_mlp`.
    norms: comma-separated subset of 'l2,linf'.
    linf_row: l_inf: the output row to bound, or -1 for every row (and l_inf certification).
    solver: 'auto', 'clarabel' or 'scs' (see `jaxlab.lipschitz.sdp.lipsdp`).
    samples: random inputs (uniform in the data's range) for the sampled lower bound, on top of
      the evaluation inputs.
    max_lmi_side: an SDP whose largest LMI is bigger is skipped (reported as such): the
      residual-ReLU LMI has a side of input + all hidden widths.
    eps_l2, eps_linf: radii for certified and PGD accuracy.
    pgd_steps: PGD steps.
    seed: seed of the random inputs and PGD's random start.
  """
  if task.model_config.name != 'lipschitz_mlp':
    raise ValueError(f"model.name: expected 'lipschitz_mlp', got {task.model_config.name!r}")
  wanted = tuple(n.strip() for n in norms.split(',') if n.strip())
  if not wanted or any(n not in ('l2', 'linf') for n in wanted):
    raise ValueError(f"norms: expected a comma-separated subset of 'l2,linf', got {norms!r}")
  if not -1 <= linf_row < task.model_size:
    raise ValueError(
      f'linf_row: expected -1 (all rows) or a class < {task.model_size}, got {linf_row}'
    )
  if samples < 1 or max_lmi_side < 2 or eps_l2 < 0 or eps_linf < 0:
    raise ValueError(
      f'expected samples >= 1, max_lmi_side >= 2, eps >= 0; got {samples}, {max_lmi_side}, '
      f'{eps_l2}, {eps_linf}'
    )
  eps = {'l2': eps_l2, 'linf': eps_linf}

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(nn.unbox(state.params))
    variables = {'params': params, **jax.device_get(state.model_state)}
    kernels = effective_kernels(task.model_config, params)
    cfg = task.model_config
    act = {'activation': cfg.activation, 'group_size': cfg.group_size}
    inputs = np.concatenate([np.asarray(b['inputs']) for b in eval_batches])
    labels = np.concatenate([np.asarray(b['labels']) for b in eval_batches])
    mask = np.concatenate(
      [np.asarray(b.get('mask', np.ones(len(b['labels'])))) for b in eval_batches]
    )
    shape = inputs.shape[1:]
    lo, hi = float(inputs.min()), float(inputs.max())
    rng = np.random.default_rng(seed)
    probe = np.concatenate(
      [inputs.reshape(len(inputs), -1), rng.uniform(lo, hi, (samples, math.prod(shape)))]
    ).astype(np.float32)

    def flat_fn(x):
      return task.forward(variables, x.reshape(1, *shape))[0]

    def apply_fn(x):
      return task.forward(variables, x)

    logits = jax.jit(apply_fn)(jnp.asarray(inputs))
    out: dict[str, float] = {'robust/clean_accuracy': _masked_mean(logits, labels, mask)}
    for norm in wanted:
      row = linf_row if norm == 'linf' and linf_row >= 0 else None
      bounds, rows = _bounds(kernels, norm, row, act, solver, max_lmi_side, f'lip/{norm}')
      out.update(bounds)
      out[f'lip/{norm}/sampled'] = sampled_lower_bound(
        flat_fn, jnp.asarray(probe), norm=norm, output_row=row
      )
      if row is not None:
        continue
      out.update(
        _robust(
          apply_fn,
          logits,
          inputs,
          labels,
          mask,
          norm,
          eps[norm],
          pgd_steps,
          seed,
          (lo, hi),
          out,
          rows,
        )
      )
    ratios = []
    for norm in wanted:
      base = [out[f'lip/{norm}/{m}'] for m in ('mp', 'resrelu') if f'lip/{norm}/{m}' in out]
      if f'lip/{norm}/qc' in out:
        out[f'lip/{norm}/qc_over_mp'] = out[f'lip/{norm}/qc'] / out[f'lip/{norm}/mp']
        ratios.append(out[f'lip/{norm}/qc'] / min(base))
      if f'lip/{norm}/resrelu' in out and f'lip/{norm}/qc' in out:
        out[f'lip/{norm}/qc_over_resrelu'] = out[f'lip/{norm}/qc'] / out[f'lip/{norm}/resrelu']
    if ratios:
      out['lip/qc_over_best_baseline'] = max(ratios)
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    return ReportPart([_table(final, wanted, eps, linf_row)], [_plot(workdir, final, wanted)])

  return Plugin(finalize=finalize, report=report)


def _bounds(kernels, norm, row, act, solver, max_side, prefix):
  """MP, ResReLU, QC and QC(μ=0) for one norm, with solve and wall times; skipped SDPs (LMI too
  large, or not a MaxMin net for ResReLU) are left out. Also each method's per-output bounds."""
  out = {f'{prefix}/mp': matrix_product_bound(kernels, norm=norm, output_row=row)}
  rows = {
    'mp': tuple(
      matrix_product_bound(kernels, norm=norm, output_row=r) for r in range(kernels[-1].shape[0])
    )
  }
  n0, widths = kernels[0].shape[1], [k.shape[0] for k in kernels[:-1]]
  first = min(n0, widths[0]) if norm == 'l2' else n0
  chain_side = max([first, *widths[1:]]) + (norm == 'linf')
  runs = {
    'qc': ({'method': 'qc'}, chain_side),
    'qc_mu0': ({'method': 'qc', 'mu_free': False}, chain_side),
  }
  if act['activation'] == 'maxmin' or act['group_size'] == 2:
    runs['resrelu'] = ({'method': 'residual_relu'}, first + sum(widths) + (norm == 'linf'))
  for name, (kw, side) in runs.items():
    if side > max_side:
      continue
    info = lipsdp_info(kernels, norm=norm, solver=solver, output_row=row, **act, **kw)
    out[f'{prefix}/{name}'] = info.bound
    out[f'{prefix}/{name}_solve_s'] = info.solve_time_s
    out[f'{prefix}/{name}_wall_s'] = info.wall_time_s
    # 1 when the solver stopped short of its tolerance: the bound may then be slightly low.
    out[f'{prefix}/{name}_inaccurate'] = float(info.status != 'optimal')
    rows[name] = info.row_bounds
  return out, rows


def _robust(apply_fn, logits, inputs, labels, mask, norm, eps, steps, seed, box, bounds, rows):
  """Certified accuracy with the tightest bound (l_inf: its per-output bounds, so the radius
  uses `L_y + L_j`), and PGD accuracy, at `eps`."""
  names = [m for m in ('qc', 'qc_mu0', 'resrelu', 'mp') if f'lip/{norm}/{m}' in bounds]
  best = min(names, key=lambda m: bounds[f'lip/{norm}/{m}'])
  lip: Any = bounds[f'lip/{norm}/{best}'] if norm == 'l2' else jnp.asarray(rows[best])
  certified = certified_accuracy(logits, labels, lip, eps, norm=norm, mask=mask)
  adv = pgd(
    apply_fn,
    jnp.asarray(inputs),
    jnp.asarray(labels),
    eps,
    norm=norm,
    steps=steps,
    key=jax.random.key(seed),
    clip=box,
  )
  return {
    f'robust/{norm}/certified_accuracy': certified,
    f'robust/{norm}/pgd_accuracy': _masked_mean(jax.jit(apply_fn)(adv), labels, mask),
    f'robust/{norm}/eps': eps,
  }


def _masked_mean(logits, labels, mask) -> float:
  ok = np.asarray(jnp.argmax(logits, -1)) == np.asarray(labels)
  return float(np.sum(ok * mask) / max(np.sum(mask), 1.0))


def _table(
  final: Mapping[str, float], norms: tuple[str, ...], eps: Mapping[str, float], linf_row: int
) -> str:
  lines = ['## Lipschitz bounds', '']
  if 'linf' in norms:
    which = 'every output row (the largest)' if linf_row < 0 else f'output row {linf_row} only'
    lines += [f'l_inf bounds are of {which}.', '']
  lines.append('| norm | method | bound | bound / sampled | solve s | wall s |')
  lines.append('|---|---|---|---|---|---|')
  for norm in norms:
    low = final.get(f'lip/{norm}/sampled', float('nan'))
    for m in (*METHODS, 'sampled'):
      value = final.get(f'lip/{norm}/{m}')
      if value is None:
        lines.append(f'| {norm} | {LABELS[m]} | skipped | | | |')
        continue
      solve = final.get(f'lip/{norm}/{m}_solve_s')
      wall = final.get(f'lip/{norm}/{m}_wall_s')
      times = ' | '.join('' if t is None else f'{t:.3g}' for t in (solve, wall))
      lines.append(f'| {norm} | {LABELS[m]} | {value:.4g} | {value / low:.3f} | {times} |')
  lines += ['', '| norm | eps | clean acc. | PGD acc. | certified acc. |', '|---|---|---|---|---|']
  for norm in (n for n in norms if f'robust/{n}/pgd_accuracy' in final):
    lines.append(
      f'| {norm} | {eps[norm]:g} | {final.get("robust/clean_accuracy", float("nan")):.3f} | '
      f'{final.get(f"robust/{norm}/pgd_accuracy", float("nan")):.3f} | '
      f'{final.get(f"robust/{norm}/certified_accuracy", float("nan")):.3f} |'
    )
  lines += [
    '',
    'Every bound is an upper bound on the Lipschitz constant (l_inf: of the rows stated above); '
    'the sampled Jacobian norm is a lower bound, so bound / sampled >= 1 and closer to 1 is '
    'tighter. Certified accuracy uses the tightest bound; PGD accuracy is an upper bound on '
    'the true robust accuracy, certified accuracy a lower bound.',
  ]
  return '\n'.join(lines)


def _plot(workdir: pathlib.Path, final: Mapping[str, float], norms: tuple[str, ...]):
  fig = Figure(figsize=(7, 4), layout='constrained')
  axes = fig.subplots(1, len(norms), squeeze=False)[0]
  for ax, norm in zip(axes, norms, strict=True):
    names = [m for m in METHODS if f'lip/{norm}/{m}' in final]
    low = final[f'lip/{norm}/sampled']
    ax.bar(range(len(names)), [final[f'lip/{norm}/{m}'] / low for m in names], color='tab:blue')
    ax.axhline(1.0, color='black', linewidth=1, label='sampled lower bound')
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_ylabel('bound / sampled lower bound')
    ax.set_title(f'{norm} Lipschitz bounds (lower is tighter)')
    ax.legend(loc='lower right')
  path = pathlib.Path(workdir) / 'lipschitz_bounds.png'
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path
