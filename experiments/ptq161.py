"""PTQ1.61: sub-2-bit post-training quantization of the foundation LM, against RTN, GPTQ and
binarization at their exact storage cost.

Trains `experiments/lm.py` at the same scale, then the `ptq` plugin quantizes every linear layer
of the transformer blocks with each method and reports validation bits/byte and exact bits per
weight (masks, scales and zero-points included):

  jaxlab run experiments/ptq161.py:tiny --workdir runs/ptq161        # CPU, ~5-10 minutes
  jaxlab run experiments/ptq161.py:gpu --workdir runs/ptq161_gpu \
      --config.data.source=tokens --config.data.path=train.bin --config.data.vocab_size=50304
      # lm.py:gpu on one GPU; it needs a real corpus (the embedded one's validation split is
      # smaller than one batch of 64 x 1025)

Only the post-training part is new: `--config.plugins.ptq.methods=fp32,ptq161` runs a subset.
"""

import ml_collections

import jaxlab.quant.ptq_plugin  # noqa: F401  (registers the ptq plugin)
from jaxlab.tasks.language_modeling import lm_config

PAPER_ID = 'ptq161'
TITLE = 'PTQ1.61: extremely low-bit post-training quantization of LLM weights'

# name: (RTN/GPTQ group size, calibration sequences, reconstruction epochs, batch, LoRA steps)
SCALES = {
  'tiny': (64, 32, 20, 1, 100),
  'gpu': (128, 64, 20, 1, 500),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/ptq161.py: expected a scale in {sorted(SCALES)}, got {arg!r}')
  group_size, calib, epochs, batch, lora_steps = SCALES[scale]
  c = lm_config(scale)
  c.plugins.ptq = ml_collections.ConfigDict(
    {
      'methods': 'fp32,rtn4,rtn3,rtn2,gptq4,gptq3,gptq2,binary,ptq161,ptq161_pp',
      'rules': (r'.*block_\d+/.*/kernel',),
      'group_size': group_size,
      'calib_sequences': calib,
      'calib_seed': 1234,
      'fraction': 0.2,
      'salient_bits': 4,
      'epochs': epochs,
      'batch_size': batch,
      'lr_scale': 5e-4,
      'lr_rotate': 1e-3,
      'lora_rank': 8 if scale == 'tiny' else 64,
      'lora_steps': lora_steps,
      'lora_lr': 1e-3 if scale == 'tiny' else 1e-4,
    }
  )
  width, depth = c.model.width, c.model.depth
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'PTQ1.61 (20% salient input channels at 4 bits, the rest binarized with '
      'block-reconstructed scales, ~1.6 bits/weight) beats the previous ≤2-bit methods: '
      'its validation bits/byte over the best of RTN-2, GPTQ-2 and binarization is below 1',
      'metric': 'ptq/sub2bit_ratio',
      'op': '<',
      'target': 1.0,
      'paper_value': 'LLaMA-7B…65B, LLaMA-2: lower WikiText2/C4 perplexity at 1.61 bits than '
      'PB-LLM (2.7 real bits) and BiLLM (2.1) (abstract and result tables; numbers not '
      'copied here)',
      'scale_note': f'{scale}: {width}-wide, {depth}-block byte-level LM on the embedded corpus '
      f'(paper: 7B-70B LLMs); at this width the per-output-channel scales cost much more per '
      'weight than at 4096, so the real bits/weight are reported next to each number',
      'baseline': '',
    }
  )
  return c
