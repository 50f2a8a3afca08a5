"""The `prepack` plugin: after training, prefill prompts drawn from the validation text
prepacked and padded to the longest, and report time, memory and whether generations agree.

  config.plugins.prepack = ml_collections.ConfigDict({'num_prompts': 32, 'gen_steps': 8})

For each prompt-length distribution (`jaxlab.inference.measure.sample_lengths`) it draws
`num_prompts` lengths in `[1, max_prompt_len]`, cuts each prompt from a random place in the
validation tokens, and records `prepack/<distribution>/<metric>`: the times and XLA peak
memory of both prefills and their ratios (`speedup = padded / packed time`,
`memory_ratio = padded / packed bytes`), the token slots each used, the largest difference of
the last-token logits and KV caches, and `generations_agree`, the fraction of prompts whose
`gen_steps` greedy tokens are identical after either prefill.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.inference.measure import DISTRIBUTIONS, compare_prefill, sample_lengths
from jaxlab.nn.transformer import AttentionInputs

_COLUMNS = (
  ('prompts', 'prompts', '{:.0f}'),
  ('tokens', 'tokens', '{:.0f}'),
  ('padded_slots', 'padded slots', '{:.0f}'),
  ('packed_slots', 'packed slots', '{:.0f}'),
  ('padded_s', 'padded ms', '{:.2f}', 1e3),
  ('packed_s', 'packed ms', '{:.2f}', 1e3),
  ('speedup', 'speedup', '{:.2f}×'),
  ('padded_peak_bytes', 'padded MB', '{:.2f}', 1e-6),
  ('packed_peak_bytes', 'packed MB', '{:.2f}', 1e-6),
  ('memory_ratio', 'memory ratio', '{:.2f}×'),
  ('temp_ratio', 'temporaries ratio', '{:.2f}×'),
  ('max_logit_diff', 'max |Δlogit|', '{:.1e}'),
  ('generations_agree', 'generations agree', '{:.0%}'),
)


def draw_prompts(
  tokens: np.ndarray, lengths: Sequence[int], rng: np.random.Generator
) -> list[np.ndarray]:
  """One prompt of each length, cut from a random place in `tokens` (1-D)."""
  if max(lengths) > tokens.size:
    raise ValueError(
      f'draw_prompts: expected at least {max(lengths)} validation tokens, got {tokens.size}'
    )
  starts = rng.integers(0, tokens.size - np.asarray(lengths) + 1)
  return [tokens[s : s + n].astype(np.int32) for s, n in zip(starts, lengths, strict=True)]


@PLUGINS.register('prepack')
def prepack(
  num_prompts: int = 32,
  max_prompt_len: int = 0,
  distributions: Sequence[str] = DISTRIBUTIONS,
  gen_steps: int = 8,
  repeats: int = 5,
  seed: int = 0,
  task: Any = None,
) -> Plugin:
  """Prepacked vs padded prefill of the trained LM (Prepacking, Zhao et al., 2024).

  Args:
    num_prompts: prompts per batch.
    max_prompt_len: the longest prompt; 0 for the model's `max_len`.
    distributions: prompt-length distributions, each measured on its own batch.
    gen_steps: greedy tokens generated after each prefill (to compare them).
    repeats: timed prefill calls (the median is reported).
    seed: the seed of lengths and prompt positions.
    task: the LM task; its model is checked (shapes only) to accept packed inputs, so a
      recurrent mixer fails before training rather than after.
  """
  for d in distributions:
    if d not in DISTRIBUTIONS:
      raise ValueError(f'distributions: expected names in {DISTRIBUTIONS}, got {d!r}')
  if num_prompts < 1 or gen_steps < 1 or repeats < 1 or max_prompt_len < 0:
    raise ValueError(
      'expected num_prompts, gen_steps, repeats >= 1 and max_prompt_len >= 0, got '
      f'{num_prompts}, {gen_steps}, {repeats}, {max_prompt_len}'
    )
  if task is not None:
    tokens = jnp.zeros((1, 2), jnp.int32)
    attn = AttentionInputs(jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32), 'write')
    jax.eval_shape(functools.partial(task.model.init, attn=attn), jax.random.key(0), tokens)

  def finalize(task: Any, state: Any, eval_batches: list) -> dict[str, float]:
    model, params = task.model, jax.device_get(state.params)
    text = np.concatenate([np.asarray(b['inputs']).reshape(-1) for b in eval_batches])
    max_len = max_prompt_len or model.cfg.max_len
    rng = np.random.default_rng(seed)
    out = {}
    for dist in distributions:
      prompts = draw_prompts(text, sample_lengths(dist, num_prompts, max_len, rng), rng)
      stats = compare_prefill(model, params, prompts, gen_steps=gen_steps, repeats=repeats)
      out.update({f'prepack/{dist}/{k}': v for k, v in stats.items()})
    return out

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    dists = [d for d in distributions if f'prepack/{d}/speedup' in final]
    if not dists:
      return ReportPart([], [])
    return ReportPart([report_table(final, dists)], [plot_ratios(final, dists, workdir)])

  return Plugin(finalize=finalize, report=report)


def report_table(final: Mapping[str, float], dists: Sequence[str]) -> str:
  """The markdown section: one row per prompt-length distribution."""
  header = '| lengths | ' + ' | '.join(c[1] for c in _COLUMNS) + ' |'
  lines = [
    '## Prefill: prepacked vs padded to the longest prompt',
    '',
    f'Measured on {jax.devices()[0].device_kind} ({jax.default_backend()}); time is the median '
    "of the compiled prefill, memory is XLA's `memory_analysis()` of it (arguments + outputs "
    '+ temporaries; the temporaries ratio compares the temporaries alone). Slots are the token '
    'positions computed (rows × row length).',
    '',
    header,
    '|' + '---|' * (len(_COLUMNS) + 1),
  ]
  for d in dists:
    cells = [
      c[2].format(final[f'prepack/{d}/{c[0]}'] * (c[3] if len(c) > 3 else 1)) for c in _COLUMNS
    ]
    lines.append(f'| {d} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot_ratios(final: Mapping[str, float], dists: Sequence[str], workdir: pathlib.Path):
  """Bar chart of the speedup and memory ratio (padded / prepacked) per distribution."""
  fig = Figure(figsize=(6, 3.5), layout='constrained')
  ax = fig.add_subplot()
  x = np.arange(len(dists))
  for i, (key, label) in enumerate((('speedup', 'prefill speedup'), ('memory_ratio', 'memory'))):
    ax.bar(x + (i - 0.5) * 0.35, [final[f'prepack/{d}/{key}'] for d in dists], 0.35, label=label)
  ax.axhline(1.0, color='k', lw=0.8)
  ax.set_xticks(x, dists)
  ax.set_ylabel('padded / prepacked')
  ax.set_title('Prepacking: gain over padding to the longest prompt')
  ax.legend()
  path = workdir / 'prepacking.png'
  fig.savefig(path, dpi=120)
  return path
