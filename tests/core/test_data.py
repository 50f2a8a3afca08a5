"""Tests for jaxlab.core.data: tokenizer, corpora, resumable iterators, synthetic tasks."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from jaxlab.core import data
from jaxlab.core.data import synthetic
from jaxlab.core.data.corpus import load_token_file

# ----------------------------------------------------------------------------- tokenizer


def _random_text(rnd: random.Random, length: int) -> str:
  """Random code points from every plane, surrogates excluded, plus common hard cases."""
  pieces = ['😀', '👩‍👩‍👧', '漢字', 'e\u0301', '\u0000', '\U0010ffff', 'ß', '\n']
  out = []
  for _ in range(length):
    if rnd.random() < 0.2:
      out.append(rnd.choice(pieces))
    else:
      cp = rnd.randrange(0x110000 - 0x800)
      out.append(chr(cp if cp < 0xD800 else cp + 0x800))  # skip U+D800..U+DFFF
  return ''.join(out)


def test_tokenizer_round_trips_arbitrary_unicode():
  tok = data.ByteTokenizer()
  rnd = random.Random(0)
  for _ in range(300):
    text = _random_text(rnd, rnd.randrange(0, 40))
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert len(ids) == len(text.encode('utf-8'))
    assert ids.max(initial=0) < 256
    assert tok.decode(ids) == text
    assert tok.decode(list(ids)) == text


def test_tokenizer_specials_are_framed_and_dropped():
  tok = data.ByteTokenizer()
  assert (tok.PAD, tok.BOS, tok.EOS, tok.vocab_size) == (256, 257, 258, 259)
  ids = tok.encode('hé', bos=True, eos=True)
  np.testing.assert_array_equal(ids, [tok.BOS, ord('h'), 0xC3, 0xA9, tok.EOS])
  assert tok.decode(np.concatenate([ids, [tok.PAD, tok.PAD]])) == 'hé'
  assert tok.decode(ids[:-2]) == 'h\ufffd'  # a character cut in half decodes, replaced
  with pytest.raises(ValueError, match='non-negative'):
    tok.decode([-1])


# ----------------------------------------------------------------------------- corpus


def test_embedded_corpus_is_large_deterministic_english():
  text = data.embedded_corpus_text()
  from pydoc_data.topics import topics

  assert text == '\n\n'.join(topics[k] for k in sorted(topics))
  raw = text.encode('utf-8')
  assert len(raw) > 400_000
  assert sum(b < 128 for b in raw) / len(raw) > 0.99
  words = text.lower().split()
  for word in ('the', 'of', 'is', 'and'):
    assert words.count(word) > 500
  train, val = data.load_corpus('embedded')
  np.testing.assert_array_equal(np.concatenate([train, val]), data.ByteTokenizer().encode(text))


def test_train_val_split_sizes_and_views():
  tokens = np.arange(1000)
  train, val = data.train_val_split(tokens, 0.1)
  assert (len(train), len(val)) == (900, 100)
  np.testing.assert_array_equal(np.concatenate([train, val]), tokens)  # disjoint, in order
  assert np.shares_memory(train, tokens) and np.shares_memory(val, tokens)
  train, val = data.train_val_split(np.arange(7), 0.3)  # round(2.1) = 2
  assert (len(train), len(val)) == (5, 2)
  for bad in (0.0, 1.0, -0.5):
    with pytest.raises(ValueError, match='val_fraction'):
      data.train_val_split(tokens, bad)
  with pytest.raises(ValueError, match='non-empty'):
    data.train_val_split(np.arange(10), 0.01)


def test_load_text_file(tmp_path):
  path = tmp_path / 'a.txt'
  path.write_text('héllo wörld\n' * 100, encoding='utf-8')
  assert data.load_text_file(path) == 'héllo wörld\n' * 100
  train, val = data.load_corpus('text', str(path), val_fraction=0.25)
  assert data.ByteTokenizer().decode(np.concatenate([train, val])) == 'héllo wörld\n' * 100
  with pytest.raises(FileNotFoundError, match='missing.txt'):
    data.load_text_file(tmp_path / 'missing.txt')
  (tmp_path / 'bad.txt').write_bytes(b'\xff\xfe\x00abc')
  with pytest.raises(ValueError, match='bad.txt'):
    data.load_text_file(tmp_path / 'bad.txt')


def test_token_files_are_memory_mapped(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 50_000, 10_000).astype(np.uint16)
  np.save(tmp_path / 't.npy', tokens)
  tokens.tofile(tmp_path / 't.bin')
  for name in ('t.npy', 't.bin'):
    arr = load_token_file(tmp_path / name)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, tokens)
    train, val = data.load_corpus('tokens', str(tmp_path / name), val_fraction=0.1)
    assert isinstance(train, np.memmap) and isinstance(val, np.memmap)
    assert (len(train), len(val)) == (9000, 1000)
  tokens.astype(np.int32).tofile(tmp_path / 'wide.bin')
  np.testing.assert_array_equal(load_token_file(tmp_path / 'wide.bin', dtype='int32'), tokens)


def test_token_file_errors(tmp_path):
  np.save(tmp_path / 'matrix.npy', np.zeros((4, 4), np.int32))
  with pytest.raises(ValueError, match=r'expected a 1-D integer.*got shape \(4, 4\)'):
    load_token_file(tmp_path / 'matrix.npy')
  np.save(tmp_path / 'floats.npy', np.zeros(8, np.float32))
  with pytest.raises(ValueError, match='float32'):
    load_token_file(tmp_path / 'floats.npy')
  (tmp_path / 'tokens.txt').write_text('1 2 3')
  with pytest.raises(ValueError, match=r"'\.txt'.*'\.npy', '\.bin'|'\.npy', '\.bin'.*'\.txt'"):
    load_token_file(tmp_path / 'tokens.txt')
  (tmp_path / 'odd.bin').write_bytes(b'\x00\x01\x02')
  with pytest.raises(ValueError, match='odd.bin'):
    load_token_file(tmp_path / 'odd.bin')
  with pytest.raises(FileNotFoundError, match='nope.bin'):
    load_token_file(tmp_path / 'nope.bin')


def test_load_corpus_errors():
  with pytest.raises(ValueError, match="'embedded', 'text', 'tokens'"):
    data.load_corpus('web')
  with pytest.raises(ValueError, match='path'):
    data.load_corpus('text')


# ----------------------------------------------------------------------------- iterator


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def _starts(batches):
  """Window starts of batches over `np.arange` tokens (token value == position)."""
  return np.concatenate([b['inputs'][:, 0] for b in batches])


def test_windows_are_shifted_slices_of_the_corpus():
  train, _ = data.load_corpus('embedded')
  seq_len, kw = 64, dict(batch_size=8, seq_len=64, seed=3)
  batches = _take(data.WindowIterator(train, **kw), 5)
  positions = _take(data.WindowIterator(np.arange(len(train)), **kw), 5)  # same order
  for batch, pos in zip(batches, positions, strict=True):
    assert batch['inputs'].dtype == np.int32 and batch['inputs'].shape == (8, seq_len)
    np.testing.assert_array_equal(pos['targets'], pos['inputs'] + 1)
    for row, start in enumerate(pos['inputs'][:, 0]):
      np.testing.assert_array_equal(pos['inputs'][row], np.arange(start, start + seq_len))
      np.testing.assert_array_equal(batch['inputs'][row], train[start : start + seq_len])
      np.testing.assert_array_equal(batch['targets'][row], train[start + 1 : start + seq_len + 1])


def test_seed_determines_batches():
  tokens = np.arange(5000)
  kw = dict(batch_size=4, seq_len=16)
  a = _take(data.WindowIterator(tokens, seed=1, **kw), 10)
  _assert_same_batches(a, _take(data.WindowIterator(tokens, seed=1, **kw), 10))
  c = _take(data.WindowIterator(tokens, seed=2, **kw), 10)
  assert not np.array_equal(_starts(a), _starts(c))


def test_every_window_used_once_per_epoch_with_shifting_offsets():
  n, seq_len = 1003, 10
  it = data.WindowIterator(np.arange(n), batch_size=7, seq_len=seq_len, seed=0)
  stream = _starts(_take(it, 100))  # 700 windows, ~7 epochs; batches straddle epochs
  offsets = []
  while True:
    offset = int(stream[0]) % seq_len
    count = (n - offset - 1) // seq_len
    if len(stream) < count:
      break
    epoch, stream = stream[:count], stream[count:]
    np.testing.assert_array_equal(np.sort(epoch), offset + seq_len * np.arange(count))
    assert not np.array_equal(epoch, np.sort(epoch))  # shuffled
    assert epoch.max() + seq_len + 1 <= n
    offsets.append(offset)
  assert len(offsets) >= 6 and len(set(offsets)) > 1


def test_resume_from_state_in_new_iterator_matches():
  tokens = np.arange(2000)
  kw = dict(batch_size=6, seq_len=32, seed=7)  # ~62 windows per epoch: ~10 batches
  for k in (0, 3, 10, 11):
    original = data.WindowIterator(tokens, **kw)
    _take(original, k)
    state = json.loads(json.dumps(original.get_state()))
    resumed = data.WindowIterator(tokens, **kw)
    resumed.set_state(state)
    start_epoch = state['epoch']
    expected = _take(original, 22)  # two epochs' worth
    assert original.get_state()['epoch'] >= start_epoch + 2
    _assert_same_batches(_take(resumed, 22), expected)
    assert resumed.get_state() == original.get_state()


def test_set_state_validates():
  it = data.WindowIterator(np.arange(500), batch_size=2, seq_len=8, seed=0)
  with pytest.raises(ValueError, match=r"expected keys \['epoch', 'index'\]"):
    it.set_state({'index': 3})
  with pytest.raises(ValueError, match='integer'):
    it.set_state({'epoch': 0, 'index': 'x'})
  with pytest.raises(ValueError, match='past the'):
    it.set_state({'epoch': 0, 'index': 10_000})
  it.set_state({'epoch': np.int64(2), 'index': 5})
  assert it.get_state() == {'epoch': 2, 'index': 5}


def test_hosts_partition_the_global_batch():
  tokens = np.arange(3000)
  kw = dict(batch_size=8, seq_len=16, seed=5)
  single = _take(data.WindowIterator(tokens, **kw), 30)
  for count in (2, 4, 8):
    hosts = [
      _take(data.WindowIterator(tokens, process_index=i, process_count=count, **kw), 30)
      for i in range(count)
    ]
    for step, batch in enumerate(single):
      for key in ('inputs', 'targets'):
        parts = [h[step][key] for h in hosts]
        assert parts[0].shape == (8 // count, 16)
        np.testing.assert_array_equal(np.concatenate(parts), batch[key])


def test_iterator_errors():
  with pytest.raises(ValueError, match='at least seq_len \\+ 1 = 17 tokens'):
    data.WindowIterator(np.arange(16), batch_size=2, seq_len=16, seed=0)
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    data.WindowIterator(np.arange(100), batch_size=4, seq_len=4, seed=0, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    data.WindowIterator(
      np.arange(100), batch_size=4, seq_len=4, seed=0, process_index=2, process_count=2
    )


def test_tiny_corpus_batches_span_epochs():
  it = data.WindowIterator(np.arange(17), batch_size=5, seq_len=16, seed=0)  # one window
  for batch in _take(it, 3):
    np.testing.assert_array_equal(batch['inputs'], np.tile(np.arange(16), (5, 1)))
  assert it.get_state() == {'epoch': 15, 'index': 0}


def test_eval_batches_in_order_and_deterministic():
  tokens = np.arange(1000)
  batches = data.eval_batches(tokens, batch_size=4, seq_len=10)
  assert len(batches) == 999 // 10 // 4  # 24; the remainder is dropped
  np.testing.assert_array_equal(_starts(batches), 10 * np.arange(96))
  for batch in batches:
    np.testing.assert_array_equal(batch['targets'], batch['inputs'] + 1)
    assert batch['inputs'].dtype == np.int32
  _assert_same_batches(batches, data.eval_batches(tokens, batch_size=4, seq_len=10))
  _assert_same_batches(
    batches[:3], data.eval_batches(tokens, batch_size=4, seq_len=10, max_batches=3)
  )
  hosts = [
    data.eval_batches(tokens, batch_size=4, seq_len=10, process_index=i, process_count=2)
    for i in range(2)
  ]
  for step, batch in enumerate(batches):
    np.testing.assert_array_equal(
      np.concatenate([h[step]['inputs'] for h in hosts]), batch['inputs']
    )
  assert len(data.eval_batches(np.arange(41), batch_size=4, seq_len=10)) == 1
  with pytest.raises(ValueError, match='at least batch_size x seq_len \\+ 1 = 41 tokens.*got 40'):
    data.eval_batches(np.arange(40), batch_size=4, seq_len=10)


# ----------------------------------------------------------------------------- synthetic


def _task(name, seed=0, batch_size=16, seq_len=32, vocab_size=20):
  fn = data.SYNTHETIC_TASKS.get(name)
  return fn(np.random.default_rng(seed), batch_size, seq_len, vocab_size)


@pytest.mark.parametrize('name', ['copy', 'parity', 'associative_recall', 'selective_copy'])
def test_synthetic_shapes_dtypes_determinism(name):
  batch = _task(name)
  assert set(batch) == {'inputs', 'targets', 'mask'}
  assert batch['inputs'].dtype == batch['targets'].dtype == np.int32
  assert batch['mask'].dtype == np.float32
  for value in batch.values():
    assert value.shape == (16, 32)
  assert batch['inputs'].min() >= 0 and batch['inputs'].max() < 20
  assert batch['targets'].min() >= 0 and batch['targets'].max() < 20
  assert set(np.unique(batch['mask'])) <= {0.0, 1.0} and batch['mask'].sum() > 0
  _assert_same_batches([batch], [_task(name)])
  assert not np.array_equal(batch['inputs'], _task(name, seed=1)['inputs'])
  with pytest.raises(ValueError, match=f'{name}: expected seq_len >= '):
    _task(name, seq_len=0)


def test_copy_answers():
  v, length = 20, 31
  batch = _task('copy', seq_len=length, vocab_size=v)
  k = length // 2
  x, t, m = batch['inputs'], batch['targets'], batch['mask']
  assert (x[:, :k] < v - 3).all()
  assert (x[:, k] == synthetic.delimiter_id(v)).all()
  np.testing.assert_array_equal(t[:, k : 2 * k], x[:, :k])  # the copy is the source
  np.testing.assert_array_equal(x[:, k + 1 :], t[:, k:-1])  # inputs are targets shifted
  expected_mask = np.zeros_like(m)
  expected_mask[:, k : 2 * k] = 1
  np.testing.assert_array_equal(m, expected_mask)
  with pytest.raises(ValueError, match='copy: expected vocab_size >= 5, got 4'):
    _task('copy', vocab_size=4)


def test_parity_answers():
  batch = _task('parity', vocab_size=2)
  x, t = batch['inputs'], batch['targets']
  assert set(np.unique(x)) == {0, 1}
  for row in range(x.shape[0]):
    acc = 0
    for pos in range(x.shape[1]):
      acc ^= int(x[row, pos])
      assert t[row, pos] == acc
  assert (batch['mask'] == 1).all()


def test_associative_recall_answers():
  v = 40
  batch = _task('associative_recall', seq_len=31, vocab_size=v)
  x, t, m = batch['inputs'], batch['targets'], batch['mask']
  for row in range(x.shape[0]):
    (answer_pos,) = np.flatnonzero(m[row])
    assert x[row, answer_pos - 1] == synthetic.query_id(v)
    pairs = x[row, : answer_pos - 1]
    keys, values = pairs[0::2], pairs[1::2]
    assert len(np.unique(keys)) == len(keys) == 14
    (match,) = np.flatnonzero(keys == x[row, answer_pos])
    assert t[row, answer_pos] == values[match]
    assert (x[row, answer_pos + 1 :] == synthetic.blank_id(v)).all()
  # With few keys, the number of pairs is capped and keys stay distinct.
  small = _task('associative_recall', seq_len=64, vocab_size=9)
  assert small['mask'][:, 7].all() and small['mask'].sum() == 16  # 3 keys: 3 pairs, query, key


def test_selective_copy_answers():
  v, length = 12, 64
  batch = _task('selective_copy', seq_len=length, vocab_size=v)
  x, t, m = batch['inputs'], batch['targets'], batch['mask']
  k = 16
  np.testing.assert_array_equal(m[:, -k:], 1)
  assert m[:, :-k].sum() == 0
  assert (x[:, -k:] == synthetic.delimiter_id(v)).all()
  for row in range(x.shape[0]):
    region = x[row, :-k]
    scattered = region[region != synthetic.blank_id(v)]
    np.testing.assert_array_equal(scattered, t[row, -k:])
  first_pos = np.argmax(x[:, :-k] != synthetic.blank_id(v), axis=1)
  assert len(np.unique(first_pos)) > 1  # positions are random, not a fixed layout


def test_synthetic_iterator_resume_and_hosts():
  kw = dict(batch_size=8, seq_len=24, vocab_size=16, seed=3)
  it = data.SyntheticIterator('associative_recall', **kw)
  first = _take(it, 5)
  expected = data.SYNTHETIC_TASKS.get('associative_recall')(
    np.random.default_rng([3, 2]), 8, 24, 16
  )
  _assert_same_batches([first[2]], [expected])
  state = json.loads(json.dumps(it.get_state()))
  assert state == {'index': 5}
  resumed = data.SyntheticIterator('associative_recall', **kw)
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 4), _take(it, 4))
  hosts = [
    _take(data.SyntheticIterator('associative_recall', process_index=i, process_count=4, **kw), 5)
    for i in range(4)
  ]
  for step, batch in enumerate(first):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), batch[key])
  other = _take(data.SyntheticIterator('associative_recall', **{**kw, 'seed': 4}), 1)
  assert not np.array_equal(other[0]['inputs'], first[0]['inputs'])
  with pytest.raises(ValueError, match=r"expected keys \['index'\]"):
    resumed.set_state({'epoch': 0, 'index': 1})


def test_synthetic_iterator_errors():
  with pytest.raises(KeyError, match='synthetic task'):
    data.SyntheticIterator('sorting', batch_size=2, seq_len=8, vocab_size=8, seed=0)
  with pytest.raises(ValueError, match='selective_copy: expected vocab_size >= 5'):
    data.SyntheticIterator('selective_copy', batch_size=2, seq_len=8, vocab_size=3, seed=0)


def test_train_tokens_is_a_fixed_data_budget():
  """`data.train_tokens`: every training window lies in the first `train_tokens` tokens."""
  from jaxlab.core.errors import ConfigError
  from jaxlab.core.task import build_task
  from tests.conftest import tiny_config

  budget = 4 * 33  # four windows of seq_len + 1
  task = build_task(tiny_config(f'--config.data.train_tokens={budget}'))
  full_train, _ = data.load_corpus('embedded', '', val_fraction=0.05)
  allowed = {bytes(full_train[i : i + 33]) for i in range(budget - 32)}
  it = task.train_iterator(0, 0, 1)
  for _ in range(6):  # several epochs of the budget
    b = next(it)
    for row_in, row_out in zip(b['inputs'], b['targets'], strict=True):
      assert bytes(np.append(row_in, row_out[-1]).astype(full_train.dtype)) in allowed
  too_many = full_train.size + 1
  with pytest.raises(ConfigError, match='data.train_tokens'):
    build_task(tiny_config(f'--config.data.train_tokens={too_many}'))
