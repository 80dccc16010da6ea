"""jaxlab.optim.step_law: the Step Law formulas, N, the CLI command and the config rules."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import pytest

from jaxlab.launch import cli
from jaxlab import config as config_lib
from jaxlab.launch import sweep_points
from jaxlab.config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig
from jaxlab.optim import non_embedding_params, steplaw
from jaxlab.optim.step_law import batch_sequences, resolve
from jaxlab.train import runnable

N, D = 1e9, 1e11


def load(experiment, overrides=()):
  """A config as every command resolves it: loaded, then the rules applied."""
  return runnable.resolve(config_lib.load(experiment, overrides))


def apply(cfg, overrides):
  return runnable.resolve(config_lib.apply_overrides(cfg, overrides))


def test_check_values():
  lr, batch = steplaw(N, D)
  assert lr == pytest.approx(1.79 * N ** -0.713 * D ** 0.307, rel=1e-12)
  assert batch == pytest.approx(0.58 * D ** 0.571, rel=1e-12)
  # docs/scaling_rules.md's check values, to the digits it gives (1.633e-3 and 1.1077e6 computed).
  assert lr == pytest.approx(1.63e-3, rel=3e-3)
  assert batch == pytest.approx(1.11e6, rel=3e-3)
  assert round(lr, 5) == 1.63e-3 and round(batch / 1e6, 2) == 1.11


def test_exponents():
  lr, batch = steplaw(N, D)
  lr2, batch2 = steplaw(N, 2 * D)
  assert batch2 / batch == pytest.approx(2 ** 0.571, rel=1e-12)
  assert lr2 / lr == pytest.approx(2 ** 0.307, rel=1e-12)
  lr3, batch3 = steplaw(2 * N, D)
  assert lr3 / lr == pytest.approx(2 ** -0.713, rel=1e-12)
  assert batch3 == batch                                  # B depends on D only
  assert isinstance(lr, float) and isinstance(batch, float)
  assert steplaw(1_000_000_000, 100_000_000_000) == steplaw(N, D)   # ints are fine


@pytest.mark.parametrize('n, d', [(0, D), (-1e9, D), (N, 0), (N, -5), (N, math.nan),
                                  (math.inf, D), (True, D), ('1e9', D)])
def test_rejects_bad_inputs(n, d):
  with pytest.raises(ValueError, match=r'steplaw: n_(params|tokens)=.* must be a finite number > 0'):
    steplaw(n, d)


def test_batch_sequences_rounds_to_at_least_one():
  assert batch_sequences(1107346.6, 256) == 4326
  assert batch_sequences(100.0, 256) == 1
  with pytest.raises(ValueError, match='seq_len=0'):
    batch_sequences(1e6, 0)


@pytest.mark.parametrize('cfg', [
    ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64),
    ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=2, d_ff=64, tie_embeddings=True),
    ModelConfig(vocab_size=64, d_model=48, n_layers=1, n_heads=2, head_dim=16),
])
def test_non_embedding_params_match_the_model(cfg):
  from jaxlab.models import Transformer
  shapes = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  params = shapes['params']
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  embedding = sum(math.prod(x.shape) for k in ('embed', 'head') if k in params
                  for x in jax.tree.leaves(params[k]))
  assert non_embedding_params(cfg) == total - embedding


def test_cli(capsys):
  assert cli.main(['steplaw', '--params', '1e9', '--tokens', '1e11']) == 0
  out = capsys.readouterr().out.splitlines()
  assert 'lr: 0.001632' in out
  assert 'batch_tokens: 1107715' in out
  assert 'batch_sequences: 4327 (seq_len 256)' in out   # DataConfig().seq_len = 256
  assert cli.main(['steplaw', '--params', '1_000_000_000', '--tokens', '1e11',
                   '--seq-len', '2048']) == 0
  assert 'batch_sequences: 541 (seq_len 2048)' in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize('argv, message', [
    (['--params', '0', '--tokens', '1e11'], "--params '0' is not valid: expected a number > 0"),
    (['--params', '1e9', '--tokens', 'lots'], "--tokens 'lots' is not valid"),
    (['--params', '1e9', '--tokens', '1e11', '--seq-len', '0.5'],
     "--seq-len '0.5' is not valid: expected an integer >= 1"),
])
def test_cli_errors(capsys, argv, message):
  assert cli.main(['steplaw'] + argv) == 2
  assert message in capsys.readouterr().err


def test_lr_rule_from_the_command_line():
  cfg = load('tiny', ['optim.lr=steplaw'])
  t = cfg.train
  assert cfg.optim.lr_rule == 'steplaw' and cfg.train.batch_rule == 'fixed'
  assert (t.steps, t.batch_size) == (20, 4)                 # tiny's, untouched
  budget = t.steps * t.batch_size * cfg.data.seq_len
  assert cfg.optim.lr == steplaw(non_embedding_params(cfg.model), budget)[0]
  # train.tokens, when set, is the budget D instead
  cfg = load('tiny', ['optim.lr=steplaw', 'train.tokens=1e6'])
  assert cfg.optim.lr == steplaw(non_embedding_params(cfg.model), 1e6)[0]
  assert cfg.train.steps == 20


@pytest.mark.parametrize('key', ['train.batch', 'train.batch_size'])
def test_batch_rule_from_the_command_line(key):
  cfg = load('tiny', [f'{key}=steplaw', 'train.tokens=2e6'])
  seq_len = cfg.data.seq_len
  batch = round(steplaw(non_embedding_params(cfg.model), 2e6)[1] / seq_len)
  assert cfg.train.batch_rule == 'steplaw' and cfg.train.tokens == 2_000_000
  assert cfg.train.batch_size == batch == 72
  assert cfg.train.steps == math.ceil(2e6 / (batch * seq_len))
  assert cfg.optim.lr_rule == 'fixed' and cfg.optim.lr == 1e-2   # tiny's lr stays


def test_both_rules_use_train_tokens():
  cfg = load('tiny', ['optim.lr=steplaw', 'train.batch=steplaw', 'train.tokens=2e6'])
  assert cfg.optim.lr == steplaw(non_embedding_params(cfg.model), 2e6)[0]


def test_rules_from_an_experiment_file(tmp_path):
  path = tmp_path / 'law.py'
  path.write_text(
      'from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig\n'
      'def config():\n'
      '  return Config(model=ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),\n'
      "                optim=OptimConfig(lr_rule='steplaw'), data=DataConfig(seq_len=32),\n"
      "                train=TrainConfig(batch_rule='steplaw', tokens=2_000_000))\n")
  cfg = load(str(path))
  n_params = non_embedding_params(cfg.model)
  assert n_params == 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32
  assert (cfg.optim.lr_rule, cfg.train.batch_rule) == ('steplaw', 'steplaw')
  assert cfg.optim.lr == steplaw(n_params, 2e6)[0]
  assert (cfg.train.batch_size, cfg.train.steps) == (72, math.ceil(2e6 / (72 * 32)))


def test_batch_rule_needs_train_tokens():
  with pytest.raises(ConfigError, match=r"train.batch_rule='steplaw' needs the token budget "
                                        r'train.tokens > 0 \(got train.tokens=0\)'):
    load('tiny', ['train.batch=steplaw'])


@pytest.mark.parametrize('overrides, message', [
    (['train.batch=steplaw', 'train.tokens=2e6', 'train.steps=50'],
     "train.steps=50 cannot be set under train.batch_rule='steplaw'"),
    (['train.batch=64'], "train.batch='64' is not allowed: train.batch takes only 'steplaw'"),
    (['optim.lr_rule=steplow'], "did you mean 'steplaw'?"),
    (['train.tokens=-1'], 'train.tokens=-1 must be >= 0'),
])
def test_rule_errors(overrides, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    load('tiny', overrides)


def test_a_number_sets_the_rule_back_to_fixed():
  cfg = load('tiny', ['optim.lr=steplaw', 'train.batch=steplaw', 'train.tokens=2e6',
                                 'optim.lr=1e-3', 'train.batch_size=8'])
  assert (cfg.optim.lr_rule, cfg.optim.lr) == ('fixed', 1e-3)
  assert (cfg.train.batch_rule, cfg.train.batch_size) == ('fixed', 8)


def test_round_trip_is_idempotent(tmp_path):
  cfg = load('tiny', ['optim.lr=steplaw', 'train.batch=steplaw', 'train.tokens=2e6',
                                 f'train.workdir={tmp_path}'])
  assert resolve(cfg) == cfg
  back = config_lib.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert back == cfg
  assert apply(back, []) == cfg
  run_dir = tmp_path / cfg.name                 # what the training loop writes and reloads
  run_dir.mkdir()
  (run_dir / 'config.json').write_text(json.dumps(cfg.to_dict()))
  assert load(str(run_dir)) == cfg
  lr_only = load('tiny', ['optim.lr=steplaw'])
  assert apply(config_lib.from_dict(lr_only.to_dict()), []) == lr_only


def test_rules_follow_changes():
  """A later override (a sweep point, a grown model) re-resolves the rules."""
  base = load('tiny', ['optim.lr=steplaw', 'train.batch=steplaw', 'train.tokens=2e6'])
  wider = apply(base, ['model.d_model=64'])
  assert wider.optim.lr == steplaw(non_embedding_params(wider.model), 2e6)[0] < base.optim.lr
  more = apply(base, ['train.tokens=8e6'])
  assert more.train.batch_size == round(steplaw(1, 8e6)[1] / 32)
  assert more.train.steps == math.ceil(8e6 / (more.train.batch_size * 32))
  sweep_dir, runs = sweep_points.sweep_configs('tiny', ['train.tokens=1e6,4e6'],
                                      ['optim.lr=steplaw', 'train.batch=steplaw',
                                       'train.tokens=2e6'])
  assert [c.train.batch_size for _, c in runs] == [
      round(steplaw(1, d)[1] / 32) for d in (1e6, 4e6)]


def test_unchanged_without_rules():
  cfg = Config(name='x', optim=OptimConfig(lr=1e-3), train=TrainConfig(tokens=123))
  assert resolve(cfg) is cfg
  assert dataclasses.replace(apply(cfg, []), name='x') == cfg
