"""`launch.py show EXP [key=value ...]`: the resolved config with the changed fields
marked, the counts, the growth phases; in this process (no run, nothing compiled)."""
import re

import jax
import jax.numpy as jnp
import pytest

from jaxlab import config as config_lib
from jaxlab.growth import plan
from jaxlab.launch import cli
from jaxlab.models import Transformer
from jaxlab.models.flops import count_params, flops_per_token
from jaxlab.optim import non_embedding_params

GROWTH = ['growth.method=stack', 'growth.factor=2', 'growth.at_tokens=256']   # tiny: step 2
FIELD = re.compile(r'^ ([* ]) (\S+) +(\S+)(?: +\(default (.+)\))?$')


def show(capsys, *argv):
  code = cli.main(['show', *argv])
  out, err = capsys.readouterr()
  return code, out, err


def fields(out: str) -> dict[str, tuple[bool, str, str | None]]:
  """{dotted key: (marked, value, default shown)} from the config part of the output."""
  found, section = {}, None
  for line in out.split('\n\n')[0].splitlines()[1:]:
    if not line.startswith(' '):
      section = line.rstrip(':')
      continue
    mark, name, value, default = FIELD.match(line).groups()
    key = name if section == 'run' else f'{section}.{name}'
    found[key] = (mark == '*', value, default)
  return found


def test_show_marks_exactly_the_changed_fields(capsys):
  # tiny sets keep_checkpoints=3, the default: set, but not changed, so not marked
  code, out, err = show(capsys, 'tiny', 'model.qk_norm=true', 'train.trackers=jsonl')
  assert code == 0, err
  got = fields(out)
  assert list(got) == list(config_lib.flatten(config_lib.Config().to_dict()))   # every field
  marked = {k: (v, d) for k, (m, v, d) in got.items() if m}
  assert marked == {
      'name': ('tiny', "''"), 'model.d_model': ('32', '256'), 'model.n_layers': ('2', '4'),
      'model.n_heads': ('2', '4'), 'model.d_ff': ('64', '0'), 'model.qk_norm': ('true', 'false'),
      'optim.lr': ('0.01', '0.003'), 'optim.warmup_steps': ('2', '100'),
      'data.seq_len': ('32', '256'), 'train.steps': ('20', '1000'),
      'train.batch_size': ('4', '16'), 'train.log_every': ('2', '10'),
      'train.eval_every': ('10', '100'), 'train.eval_batches': ('2', 'all'),
      'train.checkpoint_every': ('5', '200'), 'train.trackers': ('jsonl', 'jsonl,tensorboard')}
  assert got['train.keep_checkpoints'] == (False, '3', None)
  assert got['growth.method'] == (False, 'none', None)


def test_show_counts_are_the_librarys(capsys):
  code, out, err = show(capsys, 'tiny', *GROWTH)
  assert code == 0, err
  cfg = config_lib.load('tiny', GROWTH)
  variables = jax.eval_shape(Transformer(cfg.model).init, jax.random.key(0),
                             jnp.zeros((1, 1), jnp.int32))
  n_all = count_params(variables['params'])       # what a run counts from its state
  assert n_all == plan.n_params(cfg.model)
  tail = out.split('\n\n')[1].splitlines()
  assert tail[0] == (f'params: {n_all:,} all; {non_embedding_params(cfg.model):,} without '
                     'embedding and head')
  assert tail[1] == 'tokens per step: 128 (train.batch_size 4 x data.seq_len 32); 2,560 in 20 steps'
  per_step = [flops_per_token(p.model, 32) * 128 for p in plan.phases(cfg)]
  total = 2 * per_step[0] + 18 * per_step[1]      # the small model for 2 steps, then 18
  assert tail[2] == (f'FLOPs per step: {per_step[1]:.4g} (d32 L2 H2/2 F64); {total:.4g} for '
                     'the run')


def test_show_prints_a_growth_runs_phases(capsys):
  code, out, err = show(capsys, 'tiny', *GROWTH)
  assert code == 0, err
  table = out.split('\n\n')[1].splitlines()[3:]
  assert table[0] == 'phases: 2 (growth.method=stack)'
  rows = [line.split() for line in table[2:]]
  assert [r[:2] for r in rows] == [['0', '-'], ['2', 'grow']]
  assert [' '.join(r[2:6]) for r in rows] == ['d32 L1 H2/2 F64', 'd32 L2 H2/2 F64']
  assert rows[1][6] == f'{plan.n_params(config_lib.load("tiny", []).model):,}'


@pytest.mark.parametrize('argv, error', [
    (['model.d_modle=64'], "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
    (['growth.method=stack', 'growth.at_tokens=256', 'growth.factor=1'],   # the growth plan's
     "growth.method='stack': the source model equals the target (set growth.factor, "
     'growth.n_layers or growth.d_model ...)')], ids=['key', 'plan'])
def test_show_bad_input_is_one_line_and_exit_2(capsys, argv, error):
  code, out, err = show(capsys, 'tiny', *argv)
  assert (code, out, err) == (2, '', f'error: {error}\n')
