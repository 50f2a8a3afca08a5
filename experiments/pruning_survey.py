"""A survey on deep neural network pruning (Cheng, Zhang & Shi, 2023): the comparison, regenerated.

One sweep over criterion x timing x granularity x sparsity, same model, data and seed:

  jaxlab sweep experiments/pruning_survey.py:tiny --workdir runs/survey_unstructured \
      --grid plugins.prune.scorer=magnitude,random,snip,grasp,synflow,taylor \
      --grid plugins.prune.when=init,during,after --grid plugins.prune.sparsity=0.5,0.8,0.95
  jaxlab sweep experiments/pruning_survey.py:tiny --workdir runs/survey_structured \
      --config.plugins.prune.granularity=channel \
      --grid plugins.prune.scorer=magnitude,random,snip,synflow,taylor,lrp \
      --grid plugins.prune.when=init,during,after --grid plugins.prune.sparsity=0.5,0.8

(LRP scores units, so it runs with channel groups only.) `small` uses the procedural `shapes`
images and a wider VGG. Each point's report has sparsity, nonzero parameters, FLOPs (sparse
contraction count) and, for channel groups, the physically cropped model.
"""

import ml_collections

import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
from jaxlab.tasks.classification import classification_config
from jaxlab.vision import vision_config

PAPER_ID = 'pruning_survey'
TITLE = 'Pruning survey: criteria x timing x granularity x sparsity on one model'

SCALES = {
  # name: (data, channels, pool_after, steps)
  'tiny': ('digits', (16, 16, 32, 32), (1,), 300),
  'small': ('shapes', (32, 32, 64, 64, 128, 128), (1, 3), 1500),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(
      f'experiments/pruning_survey.py: expected one of {sorted(SCALES)}, got {arg!r}'
    )
  source, channels, pool_after, steps = SCALES[scale]
  c = classification_config(
    source, vision_config('vgg', channels=channels, pool_after=pool_after), steps=steps
  )
  c.plugins.prune = ml_collections.ConfigDict(
    {'scorer': 'magnitude', 'granularity': 'unstructured', 'when': 'after', 'sparsity': 0.8}
  )
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'A pruning criterion keeps more accuracy than random pruning at the same '
      'sparsity, timing and granularity (the baseline every comparison in the survey includes)',
      'metric': 'eval/accuracy',
      'op': '>=',
      'target': 1.0,
      'paper_value': 'qualitative (the comparisons and recommendations of the survey)',
      'scale_note': f'{scale}: VGG {channels} on {source}, {steps} steps, one seed '
      '(survey: ResNet/VGG on CIFAR-10/ImageNet, numbers collected from many papers)',
      'baseline': 'plugins.prune.scorer=random',
    }
  )
  return c
