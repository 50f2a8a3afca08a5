"""Config loading, typed overrides and validation: every bad config fails before training."""

from __future__ import annotations

import pathlib

import ml_collections
import pytest

from jaxlab.core.config import base_config, config_from_json, load_config, mesh_shape, save_config
from jaxlab.core.errors import ConfigError
from jaxlab.core.train import train_and_evaluate
from tests.conftest import LM, REPO, tiny_config


def test_overrides_apply_with_the_field_type():
  c = load_config(
    f'{LM}:tiny',
    [
      '--config.optim.lr=0.5',
      '--config.model.width=64',
      '--config.train.progress=false',
      '--config.data.source=text',
    ],
  )
  assert c.optim.lr == 0.5 and isinstance(c.optim.lr, float)
  assert c.model.width == 64 and isinstance(c.model.width, int)
  assert c.train.progress is False
  assert c.data.source == 'text'


def test_arg_selects_the_scale():
  assert load_config(f'{LM}:small').model.width > load_config(f'{LM}:tiny').model.width


@pytest.mark.parametrize(
  'override, field',
  [
    ('--config.train.steps=many', '^train.steps'),
    ('--config.optim.lr=fast', '^optim.lr'),
    ('--config.model.widht=64', '^model.widht'),
    ('--config.nosuch.field=1', '^nosuch'),
  ],
)
def test_bad_override_names_the_field(override, field):
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    load_config(f'{LM}:tiny', [override])


def test_missing_file_and_bad_arg():
  with pytest.raises(ConfigError, match='not a file'):
    load_config('experiments/nope.py:tiny')
  with pytest.raises(ConfigError, match='expected a scale'):
    load_config(f'{LM}:huge')


@pytest.mark.parametrize(
  'overrides, field',
  [
    (['--config.model.width=33'], 'model.width'),  # not divisible by heads=2
    (['--config.model.heads=4', '--config.model.width=12'], 'model.heads'),  # odd head_dim
    (['--config.model.ffn=moe'], 'model.ffn'),
    (['--config.model.activation=swish2'], 'model.activation'),
    (['--config.mesh.data=3'], 'mesh'),  # 3 devices requested, 1 present
    (['--config.mesh.fsdp=-1'], 'mesh'),  # two axes = -1
    (['--config.data.batch_size=7', '--config.optim.grad_accum_steps=2'], 'data.batch_size'),
    (['--config.data.seq_len=64'], 'data.seq_len'),  # longer than model.max_len=32
    (['--config.data.source=tokens', '--config.data.path=t.npy'], 'data.vocab_size'),
    (['--config.data.source=tokens'], 'data.path'),
    (['--config.data.source=text', '--config.data.path=/no/such.txt'], 'data'),
    (['--config.optim.name=adagrad'], 'optim.name'),
    (['--config.optim.warmup_steps=100'], 'optim.warmup_steps'),  # more than train.steps
    (['--config.train.steps=0'], 'train.steps'),
    (['--config.report.claim.op=~'], 'report.claim.op'),
  ],
)
def test_bad_config_fails_before_training(overrides, field, workdir: pathlib.Path):
  config = tiny_config(*overrides)
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    train_and_evaluate(config, workdir)
  assert not (workdir / 'checkpoints').exists()  # nothing was trained


def test_experiment_file_typos_and_types_are_caught(tmp_path: pathlib.Path, workdir):
  exp = tmp_path / 'exp.py'
  exp.write_text(
    'from tests.conftest import tiny_config\n'
    'def get_config(arg=None):\n'
    '  c = tiny_config()\n'
    '  c.unlock()\n'
    '  if arg == "typo": c.train.stpes = 5\n'
    '  if arg == "type": c.train.log_every = "often"\n'
    '  if arg == "top": c.trian = 1\n'
    '  return c\n'
  )
  for arg, field in [('typo', 'train.stpes'), ('type', 'train.log_every'), ('top', 'trian')]:
    with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
      train_and_evaluate(load_config(f'{exp}:{arg}'), workdir)


def test_mesh_shape_resolves_the_rest():
  mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 2, 'model': 2})
  assert mesh_shape(mesh, 8) == {'data': 2, 'fsdp': 2, 'model': 2}
  with pytest.raises(ConfigError, match='mesh'):
    mesh_shape(mesh, 6)


def test_config_json_round_trip(tmp_path):
  c = base_config()
  c.optim.lr = 0.25
  path = save_config(c, tmp_path)
  back = config_from_json(path)
  assert back.optim.lr == 0.25 and back.model.name == 'transformer'


def test_a_later_override_of_a_field_wins():
  # Also for tuples, which ml_collections' flags would otherwise concatenate.
  c = load_config(f'{LM}:tiny', ['--config.optim.lr=1e-3', '--config.optim.lr=2e-3'])
  assert c.optim.lr == 2e-3
  spec = f'{REPO}/experiments/precropping.py:tiny'
  c = load_config(spec, ['--config.model.channels=(8, 8)', '--config.model.channels=(4, 6)'])
  assert tuple(c.model.channels) == (4, 6)
