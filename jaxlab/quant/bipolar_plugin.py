"""The `bipolar_int` plugin: after training, run the LM's matmuls in bipolar-INT W{b}A{a}.

  config.plugins.bipolar_int = ml_collections.ConfigDict({
    'weight_bits': (1, 2, 4),  # per-output-channel bipolar-INT weights (1 bit: α·sign(w))
    'act_bits': (4, 8),        # per-token bipolar-INT activations
    'method': 'int8',          # bipolar_matmul method: 'int8' | 'xnor' | 'pallas'
    'rules': (r'.*block_\\d+/.*/kernel',),  # which kernels (embed/unembed stay float)
    'timing_repeats': 3,
    'decode_steps': 32,        # greedy KV-cache decode steps timed (0 = scoring only)
  })

For every weight width `b` the matched kernels are quantized (`b = 1`: binarized with
`α = mean|w|`, the least-squares 1-bit scale; `b ≥ 2`: RTN on the bipolar grid
`s·{±1, ±3, …, ±(2^b − 1)}`, `s = max|w|/(2^b − 1)` per output channel), then for every
activation width `a` the LM is evaluated with each quantized matmul done as
`s_x·s_w·Σ_ij 2^{i+j}(X_i·W_j)` on ±1 planes (`jaxlab.quant.bipolar`; the weight planes
prepared once by `prepare_params`, the activation planes per call), swapped in through
`quantized_matmuls`. Final metrics (`bipolar/...`):
- eval bits per byte (per token for non-byte data) of fp32, weight-only W{b} and W{b}A{a};
- the exact bits per weight of the quantized kernels (codes + fp16 scales);
- full-sequence scoring throughput (tokens/s on the first eval batch, jitted, best of
  `timing_repeats`: the run least disturbed by other load) of fp32, bf16 and each W{b}A{a};
- greedy KV-cache decode throughput (`decode_steps` tokens after prompts cut from that batch,
  prefill excluded; `jaxlab.inference.decode_step` inside `quantized_matmuls`), and the fraction
  of greedy tokens equal to fp32's (`decode_agreement`);
- `bipolar/exact` = 1 when the bit-plane product equals the integer product on the LM's own
  first layer.

`speedup_vs_best_float` (and `decode_speedup_vs_best_float`) divide by the faster of fp32 and
bf16 (on a CPU without native bf16 matmuls bf16 can be the slower one, and beating a slow
baseline is no speedup).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from jaxlab.core.plugins import PLUGINS, Plugin, ReportPart
from jaxlab.inference import decode_step, forward_with_cache
from jaxlab.quant.bipolar import (
  METHODS,
  bipolar_dense,
  bipolar_matmul,
  prepare_params,
  quantize_activations,
)
from jaxlab.quant.model import (
  DEFAULT_RULES,
  dequantize,
  kernel_paths,
  matrix_leaf,
  quantize_params,
  quantized_matmuls,
)
from jaxlab.quant.tensor import binarize, bits_per_weight, is_quantized, quantize


def weight_quantizer(bits: int):
  """`binarize` for 1 bit, per-channel RTN on the bipolar grid otherwise."""
  return binarize if bits == 1 else (lambda w: quantize(w, bits))


def _eval_bits(logits_fn, params: Any, eval_batches: list) -> float:
  """Mean cross-entropy over the eval batches' (masked) targets, in bits."""
  total = count = 0.0
  for b in eval_batches:
    logits = logits_fn(params, jnp.asarray(b['inputs']))
    ce = np.asarray(
      optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(b['targets']))
    )
    mask = np.asarray(b.get('mask', np.ones_like(ce)), np.float64)
    total += float((ce * mask).sum())
    count += float(mask.sum())
  return total / max(count, 1.0) / math.log(2)


def _tokens_per_sec(fn, params: Any, tokens: jax.Array, repeats: int) -> float:
  jax.block_until_ready(fn(params, tokens))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(params, tokens))
    times.append(time.perf_counter() - start)
  return tokens.size / min(times)


def _decode_fns(model, context, prompt_len: int, steps: int):
  """Jitted KV-cache prefill and greedy decode of `steps` tokens, each inside `context(params)`
  (each call builds fresh closures, so no jit cache is shared between matmul variants)."""

  def prefill(params, prompts):
    with context(params):
      positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
      logits, cache = forward_with_cache(model, params, prompts, positions)
    cache = jax.tree_util.tree_map(
      lambda a: jnp.pad(a, [(0, 0), (0, steps)] + [(0, 0)] * (a.ndim - 2)), cache
    )
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

  def decode(params, first, cache):
    def step(carry, _):
      token, position, cache = carry
      with context(params):
        logits, cache = decode_step(model, params, cache, token, position)
      nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return (nxt, position + 1, cache), nxt

    position = jnp.full(first.shape, prompt_len, jnp.int32)
    _, tokens = jax.lax.scan(step, (first, position, cache), None, length=steps)
    return tokens.T

  return jax.jit(prefill), jax.jit(decode)


def _decode_tokens_per_sec(
  model, context, params: Any, prompts: jax.Array, steps: int, repeats: int
) -> tuple[float, np.ndarray]:
  """Generated tokens per second of the decode loop alone (prefill excluded), and the tokens."""
  prefill, decode = _decode_fns(model, context, prompts.shape[1], steps)
  first, cache = jax.block_until_ready(prefill(params, prompts))
  tokens = jax.block_until_ready(decode(params, first, cache))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(decode(params, first, cache))
    times.append(time.perf_counter() - start)
  return first.size * steps / min(times), np.asarray(tokens)


def _exact_on_first_kernel(qparams: Any, rules: Sequence[str], a_bits: int) -> float:
  """1.0 when `bipolar_matmul` equals the int64 product for the first quantized kernel."""
  name = kernel_paths(qparams, rules)[0]
  leaf = qparams
  for key in name.split('/'):
    leaf = leaf[key]
  leaf = matrix_leaf(leaf)
  x = jax.random.normal(jax.random.key(0), (16, leaf.shape[0]))
  q, _ = quantize_activations(x, a_bits)
  w = leaf.levels()
  got = np.asarray(bipolar_matmul(q, w, a_bits, leaf.bits), np.int64)
  return float(np.array_equal(got, np.asarray(q, np.int64) @ np.asarray(w, np.int64)))


def bipolar_summary(
  task: Any,
  params: Any,
  eval_batches: list,
  weight_bits: Sequence[int],
  act_bits: Sequence[int],
  method: str,
  rules: Sequence[str],
  timing_repeats: int,
  decode_steps: int,
) -> dict[str, float]:
  """The plugin's final metrics (module docstring)."""
  model = task.model
  unit = 'bits_per_byte' if getattr(task, 'byte_level', True) else 'bits_per_token'
  float_fn = jax.jit(lambda p, x: model.apply({'params': p}, x))
  bf16_model = type(model)(dataclasses.replace(model.cfg, dtype='bfloat16'))
  bf16_params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  bf16_fn = jax.jit(lambda p, x: bf16_model.apply({'params': p}, x))
  tokens = jnp.asarray(eval_batches[0]['inputs'])
  fp32_tps = _tokens_per_sec(float_fn, params, tokens, timing_repeats)
  bf16_tps = _tokens_per_sec(bf16_fn, bf16_params, tokens, timing_repeats)
  out = {
    f'bipolar/fp32/{unit}': _eval_bits(float_fn, params, eval_batches),
    'bipolar/fp32/tokens_per_sec': fp32_tps,
    'bipolar/bf16/tokens_per_sec': bf16_tps,
  }
  float_ctx = lambda p: contextlib.nullcontext()  # noqa: E731
  prompts = tokens[:, : tokens.shape[1] - decode_steps]
  if decode_steps:
    fp32_dec, fp32_tokens = _decode_tokens_per_sec(
      model, float_ctx, params, prompts, decode_steps, timing_repeats
    )
    bf16_dec, _ = _decode_tokens_per_sec(
      bf16_model, float_ctx, bf16_params, prompts, decode_steps, timing_repeats
    )
    out['bipolar/fp32/decode_tokens_per_sec'] = fp32_dec
    out['bipolar/bf16/decode_tokens_per_sec'] = bf16_dec
  for wb in weight_bits:
    qparams = quantize_params(params, rules, weight_quantizer(wb))
    out[f'bipolar/w{wb}/bits_per_weight'] = bits_per_weight(qparams)
    out[f'bipolar/w{wb}a32/{unit}'] = _eval_bits(float_fn, dequantize(qparams), eval_batches)
    prepared = prepare_params(qparams, method)  # weight planes made once, offline
    for ab in act_bits:

      def fn(qp, x, ab=ab):
        with quantized_matmuls(qp, bipolar_dense(ab, method)):
          return model.apply({'params': qp}, x)

      fn = jax.jit(fn)
      tag = f'bipolar/w{wb}a{ab}'
      out[f'{tag}/{unit}'] = _eval_bits(fn, prepared, eval_batches)
      tps = _tokens_per_sec(fn, prepared, tokens, timing_repeats)
      out[f'{tag}/tokens_per_sec'] = tps
      out[f'{tag}/speedup_vs_fp32'] = tps / fp32_tps
      out[f'{tag}/speedup_vs_bf16'] = tps / bf16_tps
      out[f'{tag}/speedup_vs_best_float'] = tps / max(fp32_tps, bf16_tps)
      if decode_steps:
        ctx = lambda p, ab=ab: quantized_matmuls(p, bipolar_dense(ab, method))  # noqa: E731
        dec, generated = _decode_tokens_per_sec(
          model, ctx, prepared, prompts, decode_steps, timing_repeats
        )
        out[f'{tag}/decode_tokens_per_sec'] = dec
        out[f'{tag}/decode_agreement'] = float(np.mean(generated == fp32_tokens))
        out[f'{tag}/decode_speedup_vs_best_float'] = dec / max(fp32_dec, bf16_dec)
  wb, ab = max(weight_bits), max(act_bits)
  qparams = quantize_params(params, rules, weight_quantizer(wb))
  out['bipolar/exact'] = _exact_on_first_kernel(qparams, rules, ab)
  out['bipolar/quantized_weights'] = float(
    sum(
      x.num_weights
      for x in jax.tree_util.tree_leaves(qparams, is_leaf=is_quantized)
      if is_quantized(x)
    )
  )
  return out


def _ratio(final: Mapping[str, float], key: str, base: str) -> str:
  return f'{final[key] / final[base]:.2f}' if key in final and base in final else '—'


def bipolar_report(
  workdir: pathlib.Path,
  final: Mapping[str, float],
  weight_bits: Sequence[int],
  act_bits: Sequence[int],
  method: str,
) -> ReportPart:
  """A table of every W{b}A{a} (bits/weight, quality, throughput) and a bits-vs-quality plot."""
  unit = 'bits_per_byte' if 'bipolar/fp32/bits_per_byte' in final else 'bits_per_token'
  fp32 = final[f'bipolar/fp32/{unit}']
  decode = 'bipolar/fp32/decode_tokens_per_sec' in final
  best_score = max(final['bipolar/fp32/tokens_per_sec'], final['bipolar/bf16/tokens_per_sec'])
  header = (
    f'| format | bits/weight | eval {unit.replace("_", " ")} | Δ vs fp32 | scoring tokens/s | '
    '× fp32 | × bf16 | × best float |'
  )
  if decode:
    header += ' decode tokens/s | × best float | greedy tokens = fp32 |'
  rows = [header, '| ' + ' | '.join(['---'] * (header.count('|') - 1)) + ' |']

  def row(name: str, bpw: str, quality: str, tag: str) -> str:
    cells = [name, bpw, quality]
    key = f'{tag}/tokens_per_sec'
    cells += [f'{final[key]:.0f}' if key in final else '—']
    cells += [_ratio(final, key, f'bipolar/{b}/tokens_per_sec') for b in ('fp32', 'bf16')]
    cells += [f'{final[key] / best_score:.2f}' if key in final else '—']
    if decode:
      dkey = f'{tag}/decode_tokens_per_sec'
      best_dec = max(
        final['bipolar/fp32/decode_tokens_per_sec'], final['bipolar/bf16/decode_tokens_per_sec']
      )
      agree = final.get(f'{tag}/decode_agreement')
      cells += [
        f'{final[dkey]:.0f}' if dkey in final else '—',
        f'{final[dkey] / best_dec:.2f}' if dkey in final else '—',
        '—' if agree is None else f'{100 * agree:.1f}%',
      ]
    return '| ' + ' | '.join(cells) + ' |'

  rows.append(row('fp32', '32', f'{fp32:.4f} | —', 'bipolar/fp32'))
  rows.append(row('bf16', '16', '— | —', 'bipolar/bf16'))
  for wb in weight_bits:
    bpw = f'{final[f"bipolar/w{wb}/bits_per_weight"]:.3f}'
    v = final[f'bipolar/w{wb}a32/{unit}']
    rows.append(row(f'W{wb} (weights only, float matmul)', bpw, f'{v:.4f} | {v - fp32:+.4f}', '-'))
    for ab in act_bits:
      t = f'bipolar/w{wb}a{ab}'
      v = final[f'{t}/{unit}']
      rows.append(row(f'W{wb}A{ab} bipolar-INT', bpw, f'{v:.4f} | {v - fp32:+.4f}', t))
  exact = 'yes' if final['bipolar/exact'] == 1.0 else 'NO'
  timing = (
    'Scoring = one jitted full-sequence forward of the first eval batch; decode = a jitted '
    'greedy KV-cache decode loop (`jaxlab.inference.decode_step`, prefill excluded) continuing '
    'prompts cut from that batch; both best of the timed repeats'
    if decode
    else 'Throughput is full-sequence scoring (one jitted forward of the first eval batch, '
    'best of the timed repeats), not KV-cache decoding'
  )
  section = (
    '## Bipolar-INT bit-plane inference\n\n'
    f'The quantized kernels ({final["bipolar/quantized_weights"]:.0f} weights of the blocks; '
    'embeddings and norms stay float) run as `s_x·s_w·Σ_ij 2^(i+j)·(X_i·W_j)` on ±1 bit '
    f'planes, method `{method}`, weight planes prepared once. Bit-plane product equal to the '
    f'integer product on the first layer: {exact}. Bits/weight count the packed codes and the '
    'fp16 per-channel scales. '
    f"{timing}, on this run's device; the paper's speedups come from bit-level tensor-core "
    'kernels, which XLA on a CPU does not have.\n\n' + '\n'.join(rows)
  )
  fig = Figure(figsize=(5, 3.5))
  ax = fig.subplots()
  for ab in act_bits:
    ax.plot(
      weight_bits, [final[f'bipolar/w{wb}a{ab}/{unit}'] for wb in weight_bits], 'o-', label=f'A{ab}'
    )
  ax.plot(
    weight_bits,
    [final[f'bipolar/w{wb}a32/{unit}'] for wb in weight_bits],
    's--',
    label='A32 (weights only)',
  )
  ax.axhline(fp32, color='k', lw=0.8, label='fp32')
  ax.set_xlabel('weight bits')
  ax.set_ylabel(f'eval {unit.replace("_", " ")}')
  ax.set_xticks(list(weight_bits))
  ax.legend()
  fig.tight_layout()
  path = pathlib.Path(workdir) / 'bipolar_int.png'
  fig.savefig(path, dpi=100)
  return ReportPart([section], [path])


def _check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
  widths = tuple(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else ()
  if not widths or any(not isinstance(b, int) or not 1 <= b <= 8 for b in widths):
    raise ValueError(f'{name}: expected a non-empty sequence of ints in [1, 8], got {widths!r}')
  return widths


@PLUGINS.register('bipolar_int')
def bipolar_int(
  weight_bits: Sequence[int] = (1, 2, 4),
  act_bits: Sequence[int] = (4, 8),
  method: str = 'int8',
  rules: Sequence[str] = DEFAULT_RULES,
  timing_repeats: int = 3,
  decode_steps: int = 32,
  config: Any = None,
) -> Plugin:
  """After training, evaluates and times the LM with bipolar-INT W{b}A{a} matmuls.

  `config` (given by `build_plugins`) is only read to check `decode_steps < data.seq_len`.
  """
  weight_bits = _check_widths('weight_bits', weight_bits)
  act_bits = _check_widths('act_bits', act_bits)
  if method not in METHODS:
    raise ValueError(f'method: expected one of {METHODS}, got {method!r}')
  if timing_repeats < 1:
    raise ValueError(f'timing_repeats: expected a positive int, got {timing_repeats}')
  if decode_steps < 0:
    raise ValueError(
      f'decode_steps: expected an int >= 0 (0 = no decode timing), got {decode_steps}'
    )
  if config is not None and decode_steps >= config.data.seq_len:
    raise ValueError(
      f'decode_steps: expected fewer than data.seq_len={config.data.seq_len} (the prompts are '
      f'the first seq_len - decode_steps tokens of an eval batch), got {decode_steps}'
    )
  rules = tuple(rules)

  def finalize(task, state, eval_batches) -> dict[str, float]:
    params = jax.device_get(state.params)
    return bipolar_summary(
      task,
      params,
      eval_batches,
      weight_bits,
      act_bits,
      method,
      rules,
      timing_repeats,
      decode_steps,
    )

  def report(workdir: pathlib.Path, final: Mapping[str, float]) -> ReportPart:
    return bipolar_report(workdir, final, weight_bits, act_bits, method)

  return Plugin(finalize=finalize, report=report)
