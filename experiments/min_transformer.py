"""Reducing the transformer to a minimum (Bermeitinger et al., 2024): attention-only classifiers.

One model (`jaxlab.nn.min_attention`, 'min_transformer') whose `model.reduction` removes, in
turn, (a) the MLP ('no_mlp'), (b) `W_v`, `W_o` and the separate `W_q`, `W_k` ('collapsed':
one `W_qk` per head, values = inputs) and (c) half of `W_qk` ('symmetric'). Accuracy against
parameter count is a sweep, on real 8x8 digit images (2x2 patches) and on topic classification
of 64-byte windows of the embedded corpus ('corpus_topics'):

  jaxlab sweep experiments/min_transformer.py:tiny --workdir runs/min_transformer \
      --grid data.source=digits,corpus_topics \
      --grid model.reduction=none,no_mlp,collapsed,symmetric

`params/count` and `eval/accuracy` of every point are in the sweep's table; the claim row
divides each reduced model's accuracy by the original's on the same data. The paper's MNIST and
CIFAR-10 runs: `--config.data.source=npz --config.data.path=mnist.npz` (patch 4 or 7) at the
'small' scale.
"""

import ml_collections

import jaxlab.core.data.text  # noqa: F401  (registers the corpus_topics source)
import jaxlab.nn.min_attention  # noqa: F401  (registers the min_transformer model)
from jaxlab.nn.min_attention import min_transformer_config
from jaxlab.tasks.classification import classification_config

PAPER_ID = 'min_transformer'
TITLE = 'Reducing the transformer to a minimum: no MLP, collapsed W_qk, symmetric similarity'

SCALES = {
  # name: (width, depth, heads, mlp_dim, max_len, steps, batch, lr); max_len: positions for
  # 64-byte windows and 8x8 images in 2x2 patches (tiny), 28x28 images in 2x2 patches (small)
  'tiny': (64, 2, 2, 256, 64, 300, 64, 3e-3),
  'small': (128, 4, 4, 512, 256, 3000, 128, 1e-3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = arg or 'tiny'
  if scale not in SCALES:
    raise ValueError(
      f'experiments/min_transformer.py: expected a scale in {sorted(SCALES)}, got {arg!r}'
    )
  width, depth, heads, mlp, max_len, steps, batch, lr = SCALES[scale]
  model = min_transformer_config(
    width=width,
    depth=depth,
    heads=heads,
    mlp_dim=mlp,
    reduction='symmetric',
    patch_size=2,
    max_len=max_len,
  )
  c = classification_config('digits', model, steps=steps, batch_size=batch, lr=lr)
  c.data.seq_len = 64  # corpus_topics: bytes per window (images ignore it)
  c.report.paper = PAPER_ID
  c.report.title = f'{TITLE} — {scale}'
  c.report.claim = ml_collections.ConfigDict(
    {
      'text': 'Attention-only reduced transformers classify about as well as the original '
      'with up to 90% fewer parameters (accuracy within 5% of the original)',
      'metric': 'eval/accuracy',
      'op': '>=',
      'target': 0.95,  # ratio to the original ('none') on the same data
      'paper_value': 'MNIST and CIFAR-10: similar accuracy, up to 90% fewer parameters (abstract)',
      'scale_note': f'{scale}: {depth} layers x {width} wide, {heads} heads, {steps} steps; '
      'digits (1,797 8x8 images) and 8-topic byte windows instead of MNIST/CIFAR-10',
      'baseline': 'model.reduction=none',
    }
  )
  return c
