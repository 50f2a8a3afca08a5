"""The `local_lipschitz` plugin: after training, certify local Lipschitz bounds of the model.

`finalize` traces the trained classifier (`jaxlab.lipschitz.graph`) and, for every radius in
`eps`, computes the per-class bounds of every method plus the sampled/PGD lower bound, with
their run times. Final metrics (the largest class bound `L = max_j L_j` of each method):

  lip/<method>/eps=<ε>       bound (methods: naive, ibp, recurjac, crown, bab, sampled)
  lip/<method>/eps=<ε>/time  seconds
  lip/bab/eps=<ε>/exact      1.0 if BaB closed every domain of every class that can attain
                             the maximum (then `L` is the exact maximum over activation
                             patterns), else 0.0
  lip/crown_over_naive, lip/crown_over_recurjac, lip/crown_over_sampled   at the largest ε

`report` turns them into a table (sampled ≤ BaB ≤ CROWN-Jac ≤ RecurJac ≤ IBP-Jac ≤ naive) and a
plot of the bounds against ε.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core.errors import ConfigError
from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.lipschitz import local
from jaxlab.lipschitz.graph import trace_chain

ORDER = ('sampled', 'bab', 'crown', 'recurjac', 'ibp', 'naive')
LABELS = {
  'sampled': 'sampled + PGD (lower)',
  'bab': 'BaB',
  'crown': 'CROWN-Jac',
  'recurjac': 'RecurJac-style',
  'ibp': 'IBP-Jac',
  'naive': 'naive Π‖W‖',
}


def _center(x0: str, task) -> jax.Array:
  """`'const:<v>'` (every input coordinate v, the paper's tiny setting) or `'test:<i>'`."""
  kind, _, value = x0.partition(':')
  shape = task.example_inputs(1).shape
  if kind == 'const':
    return jnp.full(shape, float(value), jnp.float32)
  if kind == 'test':
    return jnp.asarray(task.data.test_inputs[int(value)][None], jnp.float32)
  raise ConfigError(f"plugins.local_lipschitz.x0: expected 'const:<v>' or 'test:<i>', got {x0!r}")


def _key(method: str, eps: float) -> str:
  return f'lip/{method}/eps={eps:g}'


@PLUGINS.register('local_lipschitz')
def local_lipschitz_plugin(
  eps: Sequence[float] = (0.01, 0.1),
  x0: str = 'const:0.5',
  box: Sequence[float] = (-1.0, 2.0),
  methods: Sequence[str] = ('naive', 'ibp', 'recurjac', 'crown', 'bab'),
  bab_timeout: float = 10.0,
  num_samples: int = 10_000,
  pgd_steps: int = 50,
) -> Plugin:
  """Certifies the trained model at `x0` for each radius in `eps` (see the module docstring).

  Args:
    eps: ℓ∞ radii.
    x0: the centre, `'const:<v>'` or `'test:<i>'`.
    box: the data box intersected with the ball (the paper's tiny setting: [−1, 2]).
    methods: bound methods (`jaxlab.lipschitz.local.METHODS`).
    bab_timeout: BaB seconds per radius (shared by the classes).
    num_samples: uniform samples of the lower bound.
    pgd_steps: steps of each of the 16 PGD restarts of the lower bound (0: samples only).
  """
  eps = tuple(float(e) for e in eps)
  if not eps or any(e < 0 for e in eps):
    raise ValueError(f'eps: expected non-negative radii, got {eps}')
  bad = [m for m in methods if m not in local.METHODS]
  if bad:
    raise ValueError(f'methods: expected names in {local.METHODS}, got {bad}')
  if not x0.startswith(('const:', 'test:')):
    raise ValueError(f"x0: expected 'const:<v>' or 'test:<i>', got {x0!r}")

  def finalize(task, state, eval_batches) -> dict[str, float]:
    del eval_batches
    variables = {'params': jax.device_get(state.params), **jax.device_get(state.model_state)}
    center = _center(x0, task)
    chain = trace_chain(lambda x: task.forward(variables, x), center)
    out = {}
    for e in eps:
      xl, xu = local.input_box(center, e, tuple(box))
      key = jax.random.PRNGKey(0)
      results = local.compare_methods(
        chain,
        xl,
        xu,
        key,
        methods=methods,
        num_samples=num_samples,
        pgd_steps=pgd_steps,
        bab_timeout=bab_timeout,
      )
      for name, (bounds, seconds, exact) in results.items():
        out[_key(name, e)] = float(np.max(bounds))
        out[_key(name, e) + '/time'] = float(seconds)
        if exact is not None:
          out[_key(name, e) + '/exact'] = float(exact)
    top = max(eps)
    for other in ('naive', 'recurjac', 'sampled'):
      if _key(other, top) in out and _key('crown', top) in out:
        out[f'lip/crown_over_{other}'] = out[_key('crown', top)] / max(out[_key(other, top)], 1e-12)
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    names = [m for m in ORDER if _key(m, eps[0]) in final]
    header = '| method | ' + ' | '.join(f'L (ε={e:g}) | time (s)' for e in eps) + ' |'
    rule = '|---|' + '---|---|' * len(eps)
    rows = []
    for m in names:
      cells = []
      for e in eps:
        value = f'{final[_key(m, e)]:.4g}'
        if m == 'bab':
          value += ' (exact)' if final.get(_key(m, e) + '/exact') else ' (timed out)'
        cells.append(f'{value} | {final[_key(m, e) + "/time"]:.2f}')
      rows.append(f'| {LABELS[m]} | ' + ' | '.join(cells) + ' |')
    section = '\n'.join(
      [
        '## Local Lipschitz bounds (ℓ∞, L = max_j max_x ‖∇f_j(x)‖₁)',
        '',
        f'Centre `{x0}`, box {list(box)}; every row except the first is a sound upper bound. '
        'Expected order: sampled ≤ BaB ≤ CROWN-Jac ≤ RecurJac ≤ IBP-Jac ≤ naive. BaB is '
        '"exact" when it closed every domain of the classes that can attain the maximum. Times '
        'are wall-clock and the first radius includes one-off JIT compilation.',
        '',
        header,
        rule,
        *rows,
      ]
    )
    return ReportPart(sections=[section], plots=[_plot(workdir, final, names)])

  def _plot(workdir, final, names) -> pathlib.Path:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in names:
      ax.plot(eps, [final[_key(m, e)] for e in eps], marker='o', label=LABELS[m])
    ax.set_xscale('log' if min(eps) > 0 else 'linear')
    ax.set_yscale('log')
    ax.set_xlabel('ε (ℓ∞ radius)')
    ax.set_ylabel('L = max_j L_j')
    ax.legend(fontsize=7)
    ax.set_title('local Lipschitz bounds vs ε')
    fig.tight_layout()
    path = pathlib.Path(workdir) / 'local_lipschitz.png'
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

  return Plugin(finalize=finalize, report=report)
