"""Pruning by explaining (Yeom et al., 2021): LRP relevance as the pruning criterion.

The paper's resource-constrained transfer setting: a trained network is pruned by filters with
only a few reference samples and NOT fine-tuned. Here: train the VGG (no BatchNorm, as VGG-16)
for `steps`, prune channels one-shot at the last update with the scores of `score_examples`
reference images, evaluate as is:

  jaxlab sweep experiments/lrp_pruning.py:tiny --workdir runs/lrp_pruning \
      --grid plugins.prune.scorer=lrp,magnitude,snip,taylor \
      --grid plugins.prune.score_examples=4,16,64 --grid plugins.prune.sparsity=0.3,0.5

With fine-tuning instead: `--config.plugins.prune.when=after` (prune at 0.7 T, fine-tune).
"""

import ml_collections

import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
from jaxlab.tasks.classification import classification_config
from jaxlab.vision import vision_config

PAPER_ID = 'lrp_pruning'
TITLE = 'Pruning by explaining: LRP relevance as a filter pruning criterion'

SCALES = {
  # name: (data, channels, pool_after, steps)
  'tiny': ('digits', (16, 16, 32, 32), (1,), 400),
  'small': ('shapes', (32, 32, 64, 64, 128, 128), (1, 3), 1500),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/lrp_pruning.py: expected one of {sorted(SCALES)}, got {arg!r}')
  source, channels, pool_after, steps = SCALES[scale]
  model = vision_config('vgg', channels=channels, pool_after=pool_after, batch_norm=False)
  c = classification_config(source, model, steps=steps)
  c.plugins.prune = ml_collections.ConfigDict(
    {
      'scorer': 'lrp',
      'lrp_rule': 'composite',
      'granularity': 'channel',
      'allocator': 'global',
      'schedule': 'one_shot',
      'start': steps - 1,  # the last update: no fine-tuning
      'sparsity': 0.3,
      'score_examples': 16,
      # Every criterion's scores are divided by their layer's sum before the global ranking,
      # as the authors' code (seulkiyeom/LRP_pruning) does.
      'normalize': True,
      'exclude': '',
    }
  )
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'Without fine-tuning and with few reference samples, LRP-pruned networks keep '
      'more accuracy than weight-magnitude-pruned ones',
      'metric': 'eval/accuracy',
      'op': '>=',
      'target': 1.0,
      'paper_value': 'LRP clearly outperforms weight, gradient and Taylor criteria without '
      'fine-tuning on small transfer datasets (abstract; Figs. of Sec. 4)',
      'scale_note': f'{scale}: VGG {channels} (no BN) on {source}, trained {steps} steps from '
      'scratch then pruned (paper: ImageNet-pretrained VGG-16/AlexNet/ResNet transferred)',
      'baseline': 'plugins.prune.scorer=magnitude',
    }
  )
  return c
