"""Data: byte tokenizer, corpora, labelled arrays (images), resumable batch iterators and
synthetic sequence tasks."""

from __future__ import annotations

from jaxlab.core.data import images, text
from jaxlab.core.data.arrays import (
  DATASETS,
  ArrayIterator,
  LabelledArrays,
  array_eval_batches,
  stratified_split,
)
from jaxlab.core.data.corpus import (
  embedded_corpus_text,
  load_corpus,
  load_text_file,
  load_token_file,
  train_val_split,
)
from jaxlab.core.data.iterator import WindowIterator, eval_batches
from jaxlab.core.data.synthetic import SYNTHETIC_TASKS, SyntheticIterator
from jaxlab.core.data.tokenizer import ByteTokenizer

__all__ = [
  'DATASETS',
  'SYNTHETIC_TASKS',
  'ArrayIterator',
  'LabelledArrays',
  'array_eval_batches',
  'images',
  'text',
  'stratified_split',
  'ByteTokenizer',
  'SyntheticIterator',
  'WindowIterator',
  'embedded_corpus_text',
  'eval_batches',
  'load_corpus',
  'load_text_file',
  'load_token_file',
  'train_val_split',
]
