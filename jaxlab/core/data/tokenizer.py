"""Byte-level tokenizer: no vocabulary file, no training, and every string round-trips.

Ids 0..255 are the UTF-8 bytes of the text, so any text (any language, emoji, code) is
representable and a model's bits-per-byte is directly comparable across corpora. Three special
ids follow the bytes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


class ByteTokenizer:
  """Byte-level tokenizer: ids 0..255 are the UTF-8 bytes; then specials."""

  PAD: int = 256
  BOS: int = 257
  EOS: int = 258
  vocab_size: int = 259

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Returns the UTF-8 bytes of `text` as int32 ids, optionally framed by BOS/EOS."""
    ids = np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32)
    head = [self.BOS] if bos else []
    tail = [self.EOS] if eos else []
    if head or tail:
      ids = np.concatenate([np.array(head, np.int32), ids, np.array(tail, np.int32)])
    return ids

  def decode(self, ids: ArrayLike) -> str:
    """Returns the text of a 1-D id sequence, dropping every id that is not a byte.

    Ids >= 256 (the specials, or the padding ids of a model whose vocabulary was rounded up)
    are dropped; a byte sequence that is not valid UTF-8 (e.g. a sample cut mid-character)
    decodes with U+FFFD replacement characters instead of raising.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(f'expected a 1-D integer id sequence, got shape {ids.shape} {ids.dtype}')
    if ids.size and ids.min() < 0:
      raise ValueError(f'expected non-negative token ids, got {int(ids.min())}')
    data = ids[ids < 256].astype(np.uint8)
    return data.tobytes().decode('utf-8', errors='replace')
