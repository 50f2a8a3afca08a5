"""Tests for jaxlab.core.report."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest

from jaxlab.core import report

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _claim(**overrides):
  claim = ml_collections.ConfigDict(
    {
      'text': 'Model beats 1.2 bits per byte',
      'metric': 'eval/bpb',
      'op': '<',
      'target': 1.2,
      'paper_value': '1.06 bpb',
      'scale_note': '10M params instead of 1B',
    }
  )
  claim.update(overrides)
  return claim


def _records():
  records = [{'step': s, 'train/loss': 3.0 / s} for s in range(1, 201)]
  for s in (100, 200):
    records[s - 1]['eval/loss'] = 3.5 / s
  return records


@pytest.mark.parametrize('logy', [False, True])
def test_plot_curves_writes_png(tmp_path, logy):
  path = report.plot_curves(
    _records(), ['train/loss', 'eval/loss', 'absent'], tmp_path / 'plots' / 'loss.png', logy=logy
  )
  assert path == tmp_path / 'plots' / 'loss.png'
  data = path.read_bytes()
  assert data.startswith(_PNG_MAGIC) and len(data) > 1000


def test_plot_curves_errors_when_no_key_present(tmp_path):
  with pytest.raises(ValueError, match='none of the keys'):
    report.plot_curves(_records(), ['nope'], tmp_path / 'x.png')
  assert not (tmp_path / 'x.png').exists()


@pytest.mark.parametrize(
  'op, measured, held',
  [
    ('<', 1.1, True),
    ('<', 1.2, False),
    ('<=', 1.2, True),
    ('<=', 1.3, False),
    ('>', 1.3, True),
    ('>', 1.2, False),
    ('>=', 1.2, True),
    ('>=', 1.1, False),
    ('<', math.nan, False),
  ],
)
def test_check_claim_ops(op, measured, held):
  check = report.check_claim(_claim(op=op), {'eval/bpb': np.float64(measured)})
  assert check.held is held
  assert check.measured == pytest.approx(measured, nan_ok=True)
  assert check.verdict == ('held' if held else 'did NOT hold')
  assert (check.op, check.target, check.paper_value) == (op, 1.2, '1.06 bpb')


def test_check_claim_missing_metric_is_not_measured():
  check = report.check_claim(_claim(), {'eval/loss': 1.0})
  assert check.measured is None and check.held is None
  assert check.verdict == 'not measured'


def test_check_claim_without_text_is_none():
  assert report.check_claim(_claim(text=''), {'eval/bpb': 1.0}) is None
  assert report.check_claim({'text': ''}, {}) is None


def test_check_claim_bad_op_names_the_field():
  with pytest.raises(ValueError, match=r"claim\.op .*'=='"):
    report.check_claim(_claim(op='=='), {'eval/bpb': 1.0})


def test_format_number():
  assert report._format_number(np.int64(1000)) == '1000'
  assert report._format_number(20000.0) == '20000'
  assert report._format_number(1.234567) == '1.235'
  assert report._format_number(0.000123456) == '0.0001235'
  assert report._format_number(math.nan) == 'nan'


def _write(tmp_path, claim, **kwargs):
  plot = report.plot_curves(_records(), ['train/loss'], tmp_path / 'loss.png')
  config = ml_collections.ConfigDict({'model': {'width': 64}, 'lr': 3e-4})
  return report.write_report(
    tmp_path,
    title='Tiny run',
    config=config,
    final_metrics={'train/loss': 0.0151234, 'eval/bpb': 1.1, 'step': 2000.0},
    plots=[plot],
    claim=claim,
    **kwargs,
  ).read_text()


def test_write_report_held(tmp_path):
  claim = report.check_claim(_claim(), {'eval/bpb': 1.1})
  text = _write(tmp_path, claim, notes=['trained on CPU'])
  assert text.startswith('# Tiny run\n')
  assert '**held**' in text and 'The claim held.' in text
  assert 'Model beats 1.2 bits per byte' in text and '1.06 bpb' in text
  assert '10M params instead of 1B' in text and 'eval/bpb < 1.2' in text
  assert '| eval/bpb | 1.1 |' in text
  assert '| step | 2000 |' in text
  assert '| train/loss | 0.01512 |' in text
  assert text.index('| eval/bpb |') < text.index('| step |') < text.index('| train/loss |')
  assert '![loss](loss.png)' in text
  assert '"width": 64' in text
  assert '- trained on CPU' in text


def test_write_report_not_held_and_not_measured(tmp_path):
  text = _write(tmp_path, report.check_claim(_claim(op='>'), {'eval/bpb': 1.1}))
  assert '**did NOT hold**' in text
  text = _write(tmp_path, report.check_claim(_claim(), {}))
  assert '**not measured**' in text and 'eval/bpb = not measured' in text
  assert '## Notes' not in text


def test_write_report_without_claim(tmp_path):
  text = _write(tmp_path, None)
  assert 'declares no claim' in text
