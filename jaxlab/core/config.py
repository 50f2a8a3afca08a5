"""Experiment configs: load `path/to/experiment.py[:arg]`, apply overrides, validate, save.

An experiment is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`,
usually built on `base_config()` (big_vision style). Command-line overrides
`--config.optim.lr=1e-3` go through ml_collections' own absl flag machinery, which parses each
value with the type of the field it replaces. `validate` then checks everything that can be
checked without compiling: unknown keys, types, shapes (width vs heads), the mesh against the
device count, batch vs data parallelism. Each error names the field, what was expected and what
came.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxlab.core.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'model')

# Logical axis name -> mesh axes (MaxText / flax lm1b style). Activations' batch dimension is
# split over data and fsdp; parameters' embed dimension over fsdp (ZeRO-3-like); the wide
# dimensions of attention and MLP over model (Megatron-like tensor parallelism).
DEFAULT_RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'model'),
  ('heads', 'model'),
  ('vocab', 'model'),
  ('kv', None),
  ('length', None),
)


def base_config() -> ml_collections.ConfigDict:
  """Every field the train loop reads, with its default. Experiments start from this."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = ml_collections.ConfigDict({'name': 'lm'})
  c.data = ml_collections.ConfigDict(
    {
      # lm: 'embedded' | 'text' | 'tokens' (.npy/.bin memmap) | 'synthetic';
      # classification: a `DATASETS` name ('digits', 'shapes', 'cifar10', 'npz', 'imagefolder')
      'source': 'embedded',
      'path': '',
      'synthetic': 'copy',  # with source='synthetic': copy | parity | associative_recall | ...
      'vocab_size': 0,  # needed for 'tokens' and 'synthetic'; byte-level text sets its own
      'token_dtype': 'uint16',  # dtype of a raw .bin token file
      'val_fraction': 0.05,  # held-out fraction (LM text; classification sets without a split)
      'train_tokens': 0,  # LM: train on the first this-many tokens of the train split; 0 = all
      'image_size': 0,  # classification: resize images to this many pixels a side; 0 = as is
      'seq_len': 128,
      'batch_size': 32,  # global batch, split over hosts and devices
      'eval_batches': 8,
    }
  )
  c.model = ml_collections.ConfigDict({'name': 'transformer'})
  c.optim = ml_collections.ConfigDict(
    {
      'name': 'adamw',  # 'adamw' | 'adam' | 'sgd' | 'lion'
      'lr': 1e-3,
      'schedule': 'cosine',  # 'cosine' | 'linear' | 'constant' (all after linear warmup)
      'warmup_steps': 100,
      'end_lr_fraction': 0.1,
      'b1': 0.9,
      'b2': 0.95,
      'eps': 1e-8,
      'weight_decay': 0.1,
      'clip_norm': 1.0,  # global-norm clipping; 0 disables
      'grad_accum_steps': 1,  # micro-batches per step (summed in a lax.scan)
    }
  )
  c.train = ml_collections.ConfigDict(
    {
      'steps': 1000,
      'log_every': 10,
      'eval_every': 200,
      'progress': True,
      'check_finite': True,  # stop on the first NaN/Inf loss, naming the leaf
    }
  )
  c.checkpoint = ml_collections.ConfigDict({'every': 500, 'keep': 3, 'async_save': True})
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'model': 1, 'rules': DEFAULT_RULES})
  # plugin name -> its kwargs (jaxlab.core.plugins); insertion order = wrapping order
  c.plugins = ml_collections.ConfigDict(sort_keys=False)
  c.metrics = ml_collections.ConfigDict({'tensorboard': True})
  # A config with a grid or points is a sweep (`jaxlab.core.sweep`): `jaxlab run` trains every
  # point in its own sub-workdir, then runs the analysis over the finished points.
  c.sweep = ml_collections.ConfigDict(
    {
      'grid': (),  # 'field=v1,v2,...' each: the Cartesian product over these fields
      'points': (),  # 'field=v field=v ...' each: an explicit list, crossed with the grid
      'vectorize': 1,  # >1: up to this many points differing only in VECTOR_FIELDS train as one
      'analysis': '',  # an ANALYSES name run over the finished points ('' = the table only)
    }
  )
  c.report = ml_collections.ConfigDict(
    {
      'paper': '',  # paper id in PAPERS.md, '' for none
      'title': '',
      'claim': {
        'text': '',  # the paper's claim in words; '' = none declared
        'metric': '',
        'op': '<',
        'target': 0.0,
        'paper_value': '',
        'scale_note': '',
        'baseline': '',  # '' = absolute; 'field=value' = relative to that sweep point
      },
    }
  )
  return c


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and applies `--config.a.b=value` overrides with type checking.

  Args:
    spec: the experiment file, optionally followed by `:arg` passed to `get_config(arg)`.
    overrides: command-line strings `--config.field=value`; of two for one field, the later
      wins.

  Returns:
    The resolved config (locked: no new fields can be added).

  Raises:
    ConfigError: the file is missing, has no `get_config`, or an override names an unknown
      field or has a value of the wrong type.
  """
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    raise ConfigError(
      f'config: expected an experiment file path[:arg], got {spec!r} ({path!r} is not a file)'
    )
  for o in overrides:
    if not o.startswith('--config.'):
      raise ConfigError(f'override: expected --config.<field>=<value>, got {o!r}')
  # A later override of a field replaces an earlier one (ml_collections would append a
  # repeated tuple override to the first instead).
  last = {o.removeprefix('--config.').partition('=')[0]: o for o in overrides}
  overrides = list(last.values())
  values = flags.FlagValues()
  argv = ['jaxlab', f'--config={spec}', *overrides]
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv, lock_config=True)
  try:
    values(argv)
  except (AttributeError, KeyError) as e:  # config_path's lookup of a field that does not exist
    detail = e.args[0] if e.args else ''
    detail = str(detail.args[0] if isinstance(detail, KeyError) else detail)
    field = _override_field(overrides, detail)
    hint = detail.partition('\n')[2]  # ml_collections' "Did you mean ..." when it has one
    raise ConfigError(f'{field}: no such field in {spec}. {hint}'.strip()) from None
  except flags.Error as e:
    raise ConfigError(_describe_flag_error(e)) from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config: {spec}: get_config failed: {e}') from None
  config = values.config
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
      f'config: {path}: get_config must return a ConfigDict, got {type(config).__name__}'
    )
  return config


def _override_field(overrides: Sequence[str], error: str) -> str:
  """The override naming the missing field in ml_collections' `'name'\nDid you mean ...`."""
  missing = error.partition('\n')[0].strip('"\' ')
  for o in overrides:
    name = o.split('=', 1)[0].removeprefix('--config.')
    if missing in name.split('.'):
      return name
  return missing


def _describe_flag_error(e: flags.Error) -> str:
  msg = str(e)
  # absl says "flag --config.a=abc: invalid literal for int() ..."; name the field first.
  if msg.startswith('flag --'):
    head, _, why = msg.partition(': ')
    field, _, value = head.removeprefix('flag --config.').partition('=')
    return f'{field}: could not use {value!r} ({why})'
  return f'command line: {msg}'


def validate(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Checks the generic fields (mesh, data, optim, train); tasks check their own sections.

  Raises:
    ConfigError: naming the first bad field, what was expected and what came.
  """
  base = base_config()
  for section in ('data', 'optim', 'train', 'checkpoint', 'metrics', 'report', 'mesh', 'sweep'):
    _check_fields(config[section], base[section], section)
  for key in config:
    if key not in base:
      raise ConfigError(f'{key}: unknown top-level field; expected one of {sorted(base)}')

  mesh_shape(config.mesh, device_count)  # raises on a bad mesh
  d, o, t = config.data, config.optim, config.train
  _positive(
    config,
    'data.seq_len',
    'data.batch_size',
    'data.eval_batches',
    'train.steps',
    'train.log_every',
    'train.eval_every',
    'checkpoint.every',
    'checkpoint.keep',
    'optim.grad_accum_steps',
  )
  if not o.lr > 0:
    raise ConfigError(f'optim.lr: expected a positive learning rate, got {o.lr!r}')
  if o.warmup_steps < 0 or o.warmup_steps > t.steps:
    raise ConfigError(
      f'optim.warmup_steps: expected 0..train.steps={t.steps}, got {o.warmup_steps}'
    )
  batch_shards = _batch_shards(config, device_count)
  if d.batch_size % (o.grad_accum_steps * batch_shards):
    raise ConfigError(
      f'data.batch_size: expected a multiple of optim.grad_accum_steps x (mesh.data x '
      f'mesh.fsdp) = {o.grad_accum_steps} x {batch_shards}, got {d.batch_size}'
    )
  if config.report.claim.op not in ('<', '<=', '>', '>='):
    raise ConfigError(
      f"report.claim.op: expected one of '<', '<=', '>', '>=', got {config.report.claim.op!r}"
    )


def mesh_shape(mesh: ml_collections.ConfigDict, device_count: int) -> dict[str, int]:
  """Resolves `config.mesh` (one axis may be -1, "the rest") against the device count."""
  unknown = sorted(set(mesh) - set(MESH_AXES) - {'rules'})
  if unknown:
    raise ConfigError(f'mesh.{unknown[0]}: unknown mesh axis; expected {MESH_AXES}')
  sizes = {a: mesh[a] for a in MESH_AXES}
  rest = [a for a, s in sizes.items() if s == -1]
  if len(rest) > 1:
    raise ConfigError(f'mesh: expected at most one axis = -1, got {rest}')
  for a, s in sizes.items():
    if s != -1 and s < 1:
      raise ConfigError(f'mesh.{a}: expected a positive size or -1, got {s}')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if rest:
    if device_count % fixed:
      raise ConfigError(
        f'mesh.{rest[0]}: -1 needs the device count ({device_count}) to be a '
        f'multiple of the other axes ({fixed})'
      )
    sizes[rest[0]] = device_count // fixed
  elif fixed != device_count:
    raise ConfigError(
      f'mesh: expected data x fsdp x model = {device_count} devices, got {sizes} = {fixed}'
    )
  return sizes


def _batch_shards(config: ml_collections.ConfigDict, device_count: int) -> int:
  sizes = mesh_shape(config.mesh, device_count)
  return sizes['data'] * sizes['fsdp']


def _check_fields(
  got: ml_collections.ConfigDict, want: ml_collections.ConfigDict, prefix: str
) -> None:
  """Fields of `got` must exist in `want` (recursively): catches typos in experiment files."""
  for key in got:
    if key not in want:
      raise ConfigError(f'{prefix}.{key}: unknown field; expected one of {sorted(want)}')
    if isinstance(want[key], ml_collections.ConfigDict):
      _check_fields(got[key], want[key], f'{prefix}.{key}')
    elif not _same_kind(want[key], got[key]):
      raise ConfigError(
        f'{prefix}.{key}: expected {type(want[key]).__name__}, got '
        f'{got[key]!r} ({type(got[key]).__name__})'
      )


def _same_kind(default: object, value: object) -> bool:
  """Whether `value` may replace `default` (an int may stand for a float, not a bool)."""
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def _positive(config: ml_collections.ConfigDict, *fields: str) -> None:
  for field in fields:
    section, key = field.split('.')
    value = config[section][key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'{field}: expected a positive integer, got {value!r}')


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
  """Writes the resolved config as `workdir/config.json`."""
  path = pathlib.Path(workdir) / 'config.json'
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  return path


def config_from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads a `config.json` written by `save_config` (tuples come back as lists)."""
  return ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))
