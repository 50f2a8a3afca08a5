"""Feature-collapse diagnostics: how diverse are a model's token representations, layer by layer.

PanGu-π (Wang et al., 2023, Sec. 3) observes *feature collapse* in deep transformers: token
representations grow alike with depth (the rank collapse of Dong et al., 2021, "Attention is not
all you need"). Two measures of a layer's representations `H: [N tokens, d]`:

- **effective rank** (Roy & Vetterli, 2007): `exp(-Σ_k p_k log p_k)`, `p_k = s_k / Σ_j s_j` over
  the singular values `s` of `H`; between 1 (rank one) and `min(N, d)` (flat spectrum).
- **diversity**: `||H - 1 h̄ᵀ||_F / ||H||_F`, the relative distance to the nearest matrix whose
  rows are all equal (`h̄` the mean row); 0 is complete collapse.

The plugin 'feature_collapse' measures both after training, for the embedding output (layer 0)
and every block's output (`block_i`, layer i+1), on the first evaluation batches, plus the
forward latency of the jitted model on one batch (the inference cost of an architecture change).
"""

from __future__ import annotations

import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart

_BLOCK = re.compile(r'block_(\d+)')


def effective_rank(h: jax.Array) -> jax.Array:
  """Roy & Vetterli's effective rank `exp(entropy(s / Σ s))` of a `[N, d]` matrix."""
  s = jnp.linalg.svd(h.astype(jnp.float32), compute_uv=False)
  p = s / jnp.maximum(s.sum(), 1e-30)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(entropy)


def diversity(h: jax.Array) -> jax.Array:
  """`||H - 1 h̄ᵀ||_F / ||H||_F` of a `[N, d]` matrix (0: every row the same)."""
  h = h.astype(jnp.float32)
  return jnp.linalg.norm(h - h.mean(axis=0)) / jnp.maximum(jnp.linalg.norm(h), 1e-30)


def layer_representations(model: Any, variables: Any, inputs: jax.Array) -> list[jax.Array]:
  """`[N, d]` token representations after the embedding and after each `block_i`, in order.

  Works for any model whose embedding module is named 'embed' (or none) and whose blocks are
  submodules named `block_0, block_1, ...` (the transformer LM, the min-attention classifier).
  """

  def wanted(module, method: str) -> bool:
    name = module.name or ''  # the top-level module has no name
    return method == '__call__' and (name == 'embed' or bool(_BLOCK.fullmatch(name)))

  _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=wanted))(
    variables, inputs
  )
  captured = state['intermediates']
  layers = []
  if 'embed' in captured:
    layers.append(captured['embed']['__call__'][0])
  blocks = sorted((k for k in captured if _BLOCK.fullmatch(k)), key=lambda k: int(k[6:]))
  layers += [captured[k]['__call__'][0] for k in blocks]
  return [x.reshape(-1, x.shape[-1]) for x in layers]


def collapse_metrics(model: Any, variables: Any, inputs: jax.Array) -> dict[str, float]:
  """`collapse/erank_{i}`, `collapse/diversity_{i}` per layer and `collapse/erank_last`."""
  out = {}
  layers = layer_representations(model, variables, inputs)
  measures = jax.jit(lambda hs: [(effective_rank(h), diversity(h)) for h in hs])(layers)
  for i, (erank, div) in enumerate(measures):
    out[f'collapse/erank_{i}'] = float(erank)
    out[f'collapse/diversity_{i}'] = float(div)
  out['collapse/erank_last'] = out[f'collapse/erank_{len(layers) - 1}']
  return out


def forward_latency_ms(model: Any, variables: Any, inputs: jax.Array, reps: int = 5) -> float:
  """Median wall time in ms of the jitted forward pass on `inputs` (after one warm-up call)."""
  fwd = jax.jit(lambda v, x: model.apply(v, x))
  jax.block_until_ready(fwd(variables, inputs))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fwd(variables, inputs))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


@PLUGINS.register('feature_collapse')
def feature_collapse(batches: int = 1, latency_reps: int = 5) -> Plugin:
  """After training: effective rank and diversity per layer on the first `batches` evaluation
  batches (tokens pooled), and the forward latency over `latency_reps` timed calls."""
  if batches < 1 or latency_reps < 1:
    raise ValueError(f'expected batches >= 1 and latency_reps >= 1, got {batches}, {latency_reps}')

  def finalize(task, state, eval_batches: list) -> dict[str, float]:
    variables = {'params': state.params, **(state.model_state or {})}
    inputs = jnp.concatenate([jnp.asarray(b['inputs']) for b in eval_batches[:batches]])
    final = collapse_metrics(task.model, variables, inputs)
    one = jnp.asarray(eval_batches[0]['inputs'])
    final['latency/forward_ms'] = forward_latency_ms(task.model, variables, one, latency_reps)
    return final

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    n = sum(1 for k in final if k.startswith('collapse/erank_') and k[15:].isdigit())
    rows = [
      [
        'embedding' if i == 0 else f'block {i - 1}',
        f'{final[f"collapse/erank_{i}"]:.2f}',
        f'{final[f"collapse/diversity_{i}"]:.3f}',
      ]
      for i in range(n)
    ]
    table = '\n'.join(
      '| ' + ' | '.join(r) + ' |'
      for r in [['Layer', 'Effective rank', 'Diversity'], ['---'] * 3, *rows]
    )
    section = (
      '## Feature collapse (PanGu-π Sec. 3)\n\n'
      'Effective rank (Roy & Vetterli) and diversity `||H - mean||/||H||` of the token '
      f'representations after each layer, on {batches} evaluation batch(es).\n\n{table}\n\n'
      f'Forward latency (jitted, one evaluation batch, median of {latency_reps}): '
      f'{final["latency/forward_ms"]:.2f} ms.'
    )
    from jaxlab.core import report as report_lib  # noqa: PLC0415 (matplotlib, only here)

    records = [{'layer': i, 'effective rank': final[f'collapse/erank_{i}']} for i in range(n)]
    plot = report_lib.plot_curves(
      records,
      ['effective rank'],
      workdir / 'effective_rank.png',
      title='effective rank of token representations',
      xkey='layer',
    )
    return ReportPart(sections=[section], plots=[plot])

  return Plugin(finalize=finalize, report=report)
