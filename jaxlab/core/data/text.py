"""Text classification from the embedded corpus: which help topic a window of bytes comes from.

`corpus_topics` (a `DATASETS` source for the classification task): the embedded corpus is
CPython's help text, one document per topic (`pydoc_data.topics`). The `TOPIC_CLASSES` longest
topics are the classes; each is cut into non-overlapping windows of `data.seq_len` bytes, every
class keeps as many windows as the shortest of them has (balanced classes), and a stratified
`data.val_fraction` of the windows is held out. Inputs are int32 byte ids `[N, seq_len]`.

Windows of one topic are neighbours in the same document, so a held-out window shares vocabulary
and style with training windows of its topic: this is topic identification of real English
prose and code, not generalisation to unseen documents.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxlab.core.data.arrays import DATASETS, LabelledArrays, stratified_split
from jaxlab.core.data.tokenizer import ByteTokenizer

TOPIC_CLASSES = 8


def topic_windows(
  seq_len: int, classes: int = TOPIC_CLASSES
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Byte windows `[N, seq_len]` of the `classes` longest help topics, their labels and names."""
  from pydoc_data.topics import topics  # noqa: PLC0415 (the corpus module imports it the same way)

  if seq_len <= 0:
    raise ValueError(f'data.seq_len: expected a positive window length, got {seq_len}')
  names = sorted(topics, key=lambda k: (-len(topics[k]), k))[:classes]
  encoded = [ByteTokenizer().encode(topics[k]) for k in names]
  per_class = min(len(e) // seq_len for e in encoded)
  if per_class < 2:
    raise ValueError(
      f'data.seq_len: {seq_len} bytes leaves fewer than 2 windows of some topic; use a shorter one'
    )
  x = np.stack([e[: per_class * seq_len].reshape(per_class, seq_len) for e in encoded])
  y = np.repeat(np.arange(classes, dtype=np.int32), per_class)
  return x.reshape(-1, seq_len).astype(np.int32), y, names


@DATASETS.register('corpus_topics')
def load_corpus_topics(cfg: ml_collections.ConfigDict) -> LabelledArrays:
  """The `TOPIC_CLASSES`-way topic classification of `data.seq_len`-byte windows."""
  x, y, _ = topic_windows(cfg.seq_len)
  train, test = stratified_split(y, cfg.val_fraction, seed=0)
  return LabelledArrays('corpus_topics', x[train], y[train], x[test], y[test], TOPIC_CLASSES)
