"""PreCropping (Cai et al., 2022): structured pruning at initialisation at the layerwise
densities of an unstructured PaI method.

  jaxlab sweep experiments/precropping.py:tiny --workdir runs/precropping \
      --grid plugins.prune.granularity=unstructured,channel \
      --grid plugins.prune.pai_scorer=snip,synflow --grid plugins.prune.sparsity=0.5,0.8,0.9
  python benchmarks/precrop_speed.py      # step time: cropped dense vs masked unstructured

`granularity=unstructured` is the PaI method itself (SNIP or SynFlow pruning the initial
weights globally); `granularity=channel` crops channels so each layer keeps about the density
the PaI method gave it (`jaxlab.sparsity.precrop`), training a dense, narrower network (here as
the full-width network with those channels masked, which computes and trains the same; the
report's `crop/*` metrics are the physically cropped model).
"""

import ml_collections

import jaxlab.sparsity.plugin  # noqa: F401  (registers the prune plugin)
from jaxlab.tasks.classification import classification_config
from jaxlab.vision import vision_config

PAPER_ID = 'precropping'
TITLE = 'PreCropping: channel pruning at initialisation following PaI layerwise densities'

SCALES = {
  # name: (data, model, steps)
  'tiny': ('digits', vision_config('vgg', channels=(16, 16, 32, 32), pool_after=(1,)), 300),
  'small': ('shapes', vision_config('resnet', widths=(16, 32, 64), blocks_per_stage=2), 1500),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(f'experiments/precropping.py: expected one of {sorted(SCALES)}, got {arg!r}')
  source, model, steps = SCALES[scale]
  c = classification_config(source, model, steps=steps)
  c.plugins.prune = ml_collections.ConfigDict(
    {
      'allocator': 'precrop',
      'pai_scorer': 'snip',
      'granularity': 'channel',
      'scorer': 'magnitude',  # which channels go (at random init any choice is equivalent)
      'when': 'init',
      'sparsity': 0.8,
    }
  )
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'The channel-cropped network matches the unstructured PaI network of the same '
      'layerwise densities (accuracy within 2%), while being dense',
      'metric': 'eval/accuracy',
      'op': '>=',
      'target': 0.98,
      'paper_value': 'similar or better accuracy than SNIP/SynFlow at equal params on CIFAR-10 '
      '(ResNet, ShuffleNet, MobileNet; abstract)',
      'scale_note': f'{scale}: {model.name} on {source}, {steps} steps, one seed',
      'baseline': 'plugins.prune.granularity=unstructured',
    }
  )
  return c
