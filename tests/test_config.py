import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from jaxlab import config as config_lib
from jaxlab.config import Config, ConfigError, ModelConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_override_parses_each_type():
  cfg = config_lib.load('tiny', ['model.d_model=64', 'optim.lr=1e-3', 'model.tie_embeddings=true',
                                 'model.remat=save_dots', 'train.steps=2e3',
                                 'data.source=files', 'data.files=a.txt,b.txt'])
  assert cfg.model.d_model == 64 and isinstance(cfg.model.d_model, int)
  assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
  assert cfg.model.tie_embeddings is True
  assert cfg.model.remat == 'save_dots'
  assert cfg.train.steps == 2000
  # data paths are made absolute once, against the directory the config is loaded in
  assert cfg.data.files == tuple(os.path.abspath(f) for f in ('a.txt', 'b.txt'))
  assert cfg.name == 'tiny'  # defaults to the experiment file's stem


@pytest.mark.parametrize('override, expected', [
    ('model.d_modle=64', "unknown config key 'model.d_modle'; did you mean 'model.d_model'?"),
    ('modle.d_model=64', "did you mean 'model.d_model'?"),
    ('model.remat=ful', "model.remat='ful' is not allowed: expected one of 'none', 'full', "
                        "'save_dots'; did you mean 'full'?"),
    ('train.steps=12.5', "train.steps='12.5' is not valid: expected an integer"),
    ('optim.lr=fast', "optim.lr='fast' is not valid: expected a number"),
    ('model.tie_embeddings=maybe', 'expected true or false'),
    ('model=3', 'model is a section'),
    ('train.steps', 'must look like key.sub=value'),
    ('model.n_kv_heads=3', 'model.n_heads=2 must be a multiple of model.n_kv_heads=3'),
    ('model.d_model=33', 'model.d_model=33 is not divisible by model.n_heads=2'),
    ('train.batch_size=0', 'train.batch_size=0 must be >= 1'),
    ('model.scan_unroll=0', 'model.scan_unroll=0 must be >= 1'),
    ('data.source=tfds', "data.source='tfds' needs data.tfds_name"),
    ('train.eval_batches=al', "train.eval_batches='al' is not valid: expected an integer or "
                              "one of 'all'"),
    ('train.eval_batches=-1', 'train.eval_batches=-1 must be >= 0 or all'),
])
def test_bad_overrides_name_key_value_and_allowed(override, expected):
  with pytest.raises(ConfigError) as err:
    config_lib.load('tiny', [override])
  assert expected in str(err.value)


def test_values_set_in_python_are_type_checked():
  bad = dataclasses.replace(Config(name='x'), model=dataclasses.replace(ModelConfig(), d_model='256'))
  with pytest.raises(ConfigError, match=r"model.d_model='256' is not valid: expected an integer"):
    config_lib.validate(bad)


def test_round_trip_through_dict():
  cfg = config_lib.load('tiny', ['data.source=files', 'data.files=a,b'])
  assert config_lib.from_dict(cfg.to_dict()) == cfg


def test_unknown_experiment_suggests_close_name():
  with pytest.raises(ConfigError, match="did you mean 'tiny'"):
    config_lib.load('tinyy', [])


def test_cli_config_error_exits_2_without_traceback():
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', 'model.d_modl=64'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "did you mean 'model.d_model'" in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_data_problems_fail_before_compile_with_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', 'train.eval_batches=100000',
                         f'train.workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert 'train.eval_batches=100000' in proc.stderr and 'Traceback' not in proc.stderr
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', 'data.tokenizer=/nope.model',
                         f'train.workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2 and "data.tokenizer='/nope.model'" in proc.stderr


def test_eval_batches_takes_a_count_or_all_and_round_trips():
  import json
  from jaxlab.config import from_dict
  assert config_lib.TrainConfig().eval_batches == 'all'
  for text, value in [('all', 'all'), ('5', 5), ('0', 0)]:
    cfg = config_lib.load('tiny', [f'train.eval_batches={text}'])
    assert cfg.train.eval_batches == value
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
