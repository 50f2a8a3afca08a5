"""8 fake CPU devices: a (data=2, fsdp=2, model=2) run equals the single-device run, and the
parameters really are split as the logical-axis rules say."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxlab.core import metrics as metrics_lib
from tests.conftest import LM, REPO, TINY, run_cli

EIGHT = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
MESH = ['--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.model=2']
# heads and mlp divisible by model=2, width by fsdp=2, batch by data*fsdp=4.
RUN = [
  'run',
  f'{LM}:tiny',
  *TINY,
  '--config.train.steps=5',
  '--config.model.heads=4',
  '--config.checkpoint.every=5',
]


def _losses(workdir) -> list[float]:
  return [
    r['train/loss'] for r in metrics_lib.read_jsonl(workdir / 'metrics.jsonl') if 'train/loss' in r
  ]


@pytest.mark.parametrize('mixer', ['attention', 'paralstm'])
def test_sharded_run_matches_single_device(tmp_path, mixer):
  run = [*RUN, f'--config.model.mixer={mixer}']
  single = run_cli(*run, '--workdir', str(tmp_path / 'one'), env={'XLA_FLAGS': ''})
  assert single.returncode == 0, single.stderr[-2000:]
  sharded = run_cli(*run, *MESH, '--workdir', str(tmp_path / 'eight'), env=EIGHT)
  assert sharded.returncode == 0, sharded.stderr[-2000:]
  one, eight = _losses(tmp_path / 'one'), _losses(tmp_path / 'eight')
  assert len(one) == len(eight) == 5
  assert eight == pytest.approx(one, rel=1e-5)


_INSPECT = """
import json, jax, jax.numpy as jnp
import jaxlab.tasks
from jaxlab.core import optim, sharding
from jaxlab.core.config import load_config
from jaxlab.core.task import build_task
from jaxlab.core.train_state import create_train_state
config = load_config(sys.argv[1], sys.argv[2:])
task = build_task(config)
tx, _ = optim.make_optimizer(config.optim, config.train.steps)
mesh = sharding.make_mesh(config.mesh)
state, _ = create_train_state(lambda: task.init_params(jax.random.key(0)), tx, mesh,
                              sharding.rules_from_config(config.mesh))
p = state.params['block_0']
mu = state.opt_state[1][0].mu['block_0']  # clip, (adam, ...) -> adam state
out = {
  'n_devices': jax.device_count(),
  'query': [str(s) for s in p['attention']['query']['kernel'].sharding.spec],
  'query_shard': list(p['attention']['query']['kernel'].addressable_shards[0].data.shape),
  'wi': [str(s) for s in p['ffn']['wi']['kernel'].sharding.spec],
  'wi_mu': [str(s) for s in mu['ffn']['wi']['kernel'].sharding.spec],
  'embed': [str(s) for s in state.params['embed']['embedding'].sharding.spec],
}
print(json.dumps(out))
"""


def test_parameters_are_sharded_as_the_rules_say():
  args = [f'{LM}:tiny', *TINY, '--config.model.heads=4', *MESH]
  out = subprocess.run(
    [sys.executable, '-c', 'import sys\n' + _INSPECT, *args],
    cwd=REPO,
    env={**os.environ, **EIGHT},
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got['n_devices'] == 8
  # query kernel (embed, heads, kv) -> (fsdp, model, None): width 32/2, heads 4/2, head_dim 8.
  assert got['query'] == ['fsdp', 'model', 'None']
  assert got['query_shard'] == [16, 2, 8]
  assert got['wi'] == ['fsdp', 'model']  # (embed, mlp)
  assert got['wi_mu'] == got['wi']  # Adam's moments are sharded like their parameters
  assert got['embed'] == ['model', 'fsdp']  # (vocab, embed)
