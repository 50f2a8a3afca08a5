"""Token corpora: an embedded default, user text files, and memory-mapped token files.

The embedded corpus is CPython's own help text (`pydoc_data.topics`), so every machine with the
same Python has the same ~465 KB of English without a download. Token files are memory-mapped
so a corpus larger than RAM trains without being read in full.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from jaxlab.core.data.tokenizer import ByteTokenizer

SOURCES = ('embedded', 'text', 'tokens')
TOKEN_FILE_SUFFIXES = ('.npy', '.bin')


@functools.cache
def embedded_corpus_text() -> str:
  """Returns CPython's pydoc topics joined in sorted key order: the same text everywhere."""
  from pydoc_data.topics import topics

  return '\n\n'.join(topics[key] for key in sorted(topics))


def _existing_file(path: str | os.PathLike) -> Path:
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'no such file: {str(path)!r}')
  if not path.is_file():
    raise ValueError(f'expected a file, got a directory or special file: {str(path)!r}')
  return path


def load_text_file(path: str | os.PathLike) -> str:
  """Returns the contents of a UTF-8 text file."""
  path = _existing_file(path)
  try:
    return path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{str(path)!r} is not valid UTF-8 text: {e}') from None


def load_token_file(path: str | os.PathLike, dtype: str = 'uint16') -> np.ndarray:
  """Memory-maps a 1-D array of token ids without reading it into memory.

  Args:
    path: a `.npy` file (dtype and shape from its header) or a `.bin` file of raw token ids
      with no header, as written by nanoGPT's `prepare.py`.
    dtype: the integer dtype of a `.bin` file; ignored for `.npy`.

  Returns:
    A read-only `np.memmap` of the token ids.
  """
  path = Path(path)
  if path.suffix not in TOKEN_FILE_SUFFIXES:
    raise ValueError(
      f'{str(path)!r}: expected a token file with suffix in {TOKEN_FILE_SUFFIXES}, '
      f'got {path.suffix!r}'
    )
  path = _existing_file(path)
  if path.suffix == '.npy':
    tokens = np.load(path, mmap_mode='r')
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(
        f'{str(path)!r}: expected a 1-D integer token array, '
        f'got shape {tokens.shape} dtype {tokens.dtype}'
      )
    return tokens
  if not np.issubdtype(np.dtype(dtype), np.integer):
    raise ValueError(f'{str(path)!r}: expected an integer token dtype, got {dtype!r}')
  itemsize = np.dtype(dtype).itemsize
  size = path.stat().st_size
  if size == 0 or size % itemsize:
    raise ValueError(
      f'{str(path)!r}: expected a non-empty multiple of {itemsize} bytes ({dtype} tokens), '
      f'got {size} bytes'
    )
  return np.memmap(path, dtype=dtype, mode='r')


def train_val_split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Splits off the last `round(len * val_fraction)` tokens as validation (views, no copy)."""
  if tokens.ndim != 1:
    raise ValueError(f'expected a 1-D token array, got shape {tokens.shape}')
  if not 0 < val_fraction < 1:
    raise ValueError(f'val_fraction: expected a number in (0, 1), got {val_fraction}')
  n_val = round(len(tokens) * val_fraction)
  n_train = len(tokens) - n_val
  if n_val == 0 or n_train == 0:
    raise ValueError(
      f'val_fraction={val_fraction} of {len(tokens)} tokens leaves {n_train} train and '
      f'{n_val} validation tokens; expected both non-empty'
    )
  return tokens[:n_train], tokens[n_train:]


def load_corpus(
  source: str, path: str = '', val_fraction: float = 0.05, dtype: str = 'uint16'
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a corpus as (train, validation) token arrays.

  Args:
    source: 'embedded' (byte-tokenized `embedded_corpus_text()`; `path` is ignored), 'text'
      (the byte-tokenized UTF-8 file at `path`) or 'tokens' (the memory-mapped token file at
      `path`, see `load_token_file`).
    path: the file for 'text' and 'tokens'.
    val_fraction: the fraction of tokens, taken from the end, held out for validation.
    dtype: the token dtype of a raw `.bin` file.

  Returns:
    `(train, val)`: 1-D integer arrays, views of one token array.
  """
  if source not in SOURCES:
    raise ValueError(f'source: expected one of {SOURCES}, got {source!r}')
  if source != 'embedded' and not path:
    raise ValueError(f'source={source!r} needs a file path, got {path!r}')
  if source == 'embedded':
    tokens = ByteTokenizer().encode(embedded_corpus_text())
  elif source == 'text':
    tokens = ByteTokenizer().encode(load_text_file(path))
  else:
    tokens = load_token_file(path, dtype)
  return train_val_split(tokens, val_fraction)
