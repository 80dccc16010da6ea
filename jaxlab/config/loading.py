"""Typed, frozen configuration: loading, overrides and validation.

The dataclasses live in jaxlab.config.types and are re-exported here. Experiments are Python files that define ``config() -> Config``. Command-line
overrides ``key.sub=value`` are parsed to the field's declared type; anything
wrong (unknown key, bad value, inconsistent sizes) raises ``ConfigError`` naming
the key, the value and what is allowed -- before anything is compiled.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import pathlib
import traceback
import types
import typing
from typing import Literal

from jaxlab.config import hf
from jaxlab.config.checks import validate
from jaxlab.config.types import (Config, ConfigError, DataConfig, ModelConfig, all_keys,
                                 check_type, describe, fields_of, is_url, parse_ranges,
                                 union_args)

# A run directory holds its Config as config.json (Config.to_dict(), plus the history of
# the changes accepted on resume: jaxlab.rundir.directory).
CONFIG_FILE = 'config.json'
HISTORY_KEY = 'history'


# ----------------------------------------------------------------------------- parsing

def _parse(key: str, text: str, tp):
  """Parses the override text of `key` to type `tp`, or raises ConfigError."""
  def bad():
    return ConfigError(f'{key}={text!r} is not valid: expected {describe(tp)}')
  if union_args(tp):   # e.g. int | Literal['all']: the first arm that parses the text
    for arm in union_args(tp):
      try:
        return _parse(key, text, arm)
      except ConfigError:
        pass
    raise bad()
  origin = typing.get_origin(tp)
  if origin is Literal:
    allowed = typing.get_args(tp)
    if text in allowed:
      return text
    close = difflib.get_close_matches(text, [str(a) for a in allowed], n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    raise ConfigError(f'{key}={text!r} is not allowed: expected {describe(tp)}{hint}')
  if origin is tuple:
    if typing.get_args(tp)[0] is int:   # integer lists take ranges: 0-23,8-31
      return parse_ranges(text, key)
    return tuple(_parse(key, t.strip(), typing.get_args(tp)[0]) for t in text.split(',') if t.strip())
  if tp is bool:
    low = text.lower()
    if low in ('true', '1', 'yes', 'on'):
      return True
    if low in ('false', '0', 'no', 'off'):
      return False
    raise bad()
  if tp is int:
    try:
      return int(text.replace('_', ''))
    except ValueError:
      try:
        value = float(text)
      except ValueError:
        raise bad() from None
      if not value.is_integer():
        raise bad() from None
      return int(value)
  if tp is float:
    try:
      value = float(text)
    except ValueError:
      raise bad() from None
    if not math.isfinite(value):   # inf, nan, and 1e400 (which parses as inf)
      raise ConfigError(f'{key}={text!r} is not valid: expected a finite number')
    return value
  if tp is str:
    return text
  raise ConfigError(f'{key} cannot be set from the command line (type {tp})')


def _unknown(key: str) -> ConfigError:
  keys = all_keys(Config)
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  hint = f'did you mean {close[0]!r}?' if close else 'known keys: ' + ', '.join(keys)
  return ConfigError(f'unknown config key {key!r}; {hint}')


def _set(obj, path: list[str], text: str, full_key: str):
  name = path[0]
  types_ = fields_of(type(obj))
  if name not in types_:
    raise _unknown(full_key)
  tp = types_[name]
  if len(path) == 1:
    if dataclasses.is_dataclass(tp):
      raise ConfigError(f'{full_key} is a section; set one of its keys, e.g. {full_key}.'
                        f'{next(iter(fields_of(tp)))}=...')
    return dataclasses.replace(obj, **{name: _parse(full_key, text, tp)})
  if not dataclasses.is_dataclass(tp):
    raise _unknown(full_key)
  return dataclasses.replace(obj, **{name: _set(getattr(obj, name), path[1:], text, full_key)})


# `optim.lr=steplaw` sets optim.lr_rule and `train.batch=steplaw` (or train.batch_size=
# steplaw) sets train.batch_rule; a number for optim.lr / train.batch_size sets the rule
# back to 'fixed' (the last override wins).
_RULE_KEYS = {'optim.lr': 'optim.lr_rule', 'train.batch': 'train.batch_rule',
              'train.batch_size': 'train.batch_rule'}


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
  """Applies `key.sub=value` overrides (and model.init=hf:DIR's architecture), then
  validates. `optim.lr=steplaw` / `train.batch=steplaw` set the rules; their values come
  from jaxlab.train.runnable.resolve (Step Law needs the model's parameter count)."""
  steps_set = None
  explicit = set()
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'override {item!r} must look like key.sub=value (e.g. train.steps=100)')
    key, text = item.split('=', 1)
    key, text = key.strip(), text.strip()
    rule = _RULE_KEYS.get(key)
    if rule and text == 'steplaw':
      key = rule
    elif key == 'train.batch':
      raise ConfigError(f"train.batch={text!r} is not allowed: train.batch takes only 'steplaw'; "
                        'set a fixed batch with train.batch_size=N')
    elif rule:
      cfg = _set(cfg, rule.split('.'), 'fixed', rule)
    if key == 'train.steps':
      steps_set = text
    explicit.add(key)
    cfg = _set(cfg, key.split('.'), text, key)
  if cfg.model.init:   # the architecture comes from the checkpoint (jaxlab.config.hf)
    check_type('', cfg, Config)
    cfg = hf.resolve_init(cfg, explicit)
  cfg = _absolute_data_paths(cfg)
  if steps_set is not None and cfg.train.batch_rule == 'steplaw':
    raise ConfigError(f"train.steps={steps_set} cannot be set under train.batch_rule='steplaw' "
                      '(steps = train.tokens / (batch_size x data.seq_len)); set train.tokens, '
                      'or train.batch_size=N for a fixed batch')
  validate(cfg)
  return cfg


def _absolute_data_paths(cfg: Config) -> Config:
  """data.files, data.path, data.mixture's directories, a tokenizer path and data.data_dir
  made absolute (against the current directory, once: config.json records them so, and a
  run resumed from elsewhere reads the same files); URLs stay as they are."""
  def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
  def place(path: str) -> str:   # a URL stays as it is
    return path if not path or is_url(path) else absolute(path)
  d = cfg.data
  data = dataclasses.replace(
      d, files=tuple(absolute(f) for f in d.files), path=place(d.path),
      mixture=tuple(place(p) + text[len(p):] for p, text in
                    ((m.rpartition(':')[0], m) for m in d.mixture)),
      tokenizer=d.tokenizer if d.tokenizer == 'byte' else absolute(d.tokenizer),
      data_dir=absolute(d.data_dir) if d.data_dir else '')
  return cfg if data == d else dataclasses.replace(cfg, data=data)


# ----------------------------------------------------------------------------- loading

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parents[2] / 'experiments'   # <checkout>/experiments


def experiment_names() -> list[str]:
  """The experiments under experiments/: the .py files that define config()."""
  if not EXPERIMENTS_DIR.is_dir():
    return []
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob('*.py') if 'def config(' in p.read_text())


def resolve_experiment(experiment: str) -> pathlib.Path:
  """'demo', 'experiments/demo.py' or any path to a .py file -> the file's path."""
  path = pathlib.Path(experiment)
  candidates = [path, EXPERIMENTS_DIR / path, EXPERIMENTS_DIR / f'{experiment}.py']
  for cand in candidates:
    if cand.is_file() and cand.suffix == '.py':
      return cand.resolve()
  known = experiment_names()
  close = difflib.get_close_matches(path.stem, known, n=1)
  hint = f'; did you mean {close[0]!r}?' if close else (f'; known: {", ".join(known)}' if known else '')
  raise ConfigError(f'experiment {experiment!r} not found (a .py file defining config()){hint}')


def load_module(experiment: str) -> types.ModuleType:
  """Imports an experiment file. A file that fails to import (a syntax error, an
  exception at import) is the user's to fix: ConfigError naming the file and line."""
  path = resolve_experiment(experiment)
  spec = importlib.util.spec_from_file_location(f'jaxlab_experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  with _experiment_errors(path, 'importing it'):
    spec.loader.exec_module(module)
  if not callable(getattr(module, 'config', None)):
    raise ConfigError(f'experiment {str(path)!r} must define config() returning a jaxlab Config')
  return module


@contextlib.contextmanager
def _experiment_errors(path: pathlib.Path, doing: str):
  """Turns an exception raised by the experiment's own code into one line naming the file
  and the line in it (ConfigError passes through unchanged)."""
  try:
    yield
  except ConfigError:
    raise
  except SyntaxError as err:
    raise ConfigError(f'experiment {str(path)!r} has a syntax error at line {err.lineno}: '
                      f'{err.msg}') from None
  except Exception as err:
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if pathlib.Path(f.filename).resolve() == path]
    where = f' (line {frames[-1].lineno}: {frames[-1].line})' if frames else ''
    message = str(err).splitlines()[0] if str(err) else ''
    raise ConfigError(f'experiment {str(path)!r} raised {type(err).__name__} while '
                      f'{doing}{where}: {message}') from None


def read_config_file(run_dir: str | pathlib.Path) -> tuple[dict, list] | None:
  """(config dict, history) from a run directory's config.json, or None when there is none."""
  path = pathlib.Path(run_dir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    data = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
    raise ConfigError(f'{path} cannot be read as a jaxlab config ({err}); move it '
                      'away or pick another name=') from None
  if not isinstance(data, dict):
    raise ConfigError(f'{path} holds {type(data).__name__}, not a jaxlab config; '
                      'move it away or pick another name=')
  history = data.pop(HISTORY_KEY, [])
  return data, history if isinstance(history, list) else []


def load_run_dir(run_dir: str | pathlib.Path) -> Config:
  """The config of an existing run directory (its config.json), placed where it lies: a
  copied run directory continues under its new name."""
  run_dir = pathlib.Path(run_dir)
  found = read_config_file(run_dir)
  if found is None:
    raise ConfigError(f'{run_dir}: no {CONFIG_FILE} there (not a jaxlab run directory)')
  try:
    cfg = from_dict(found[0])
  except (TypeError, AttributeError) as err:
    raise ConfigError(f'{run_dir / CONFIG_FILE} is not a jaxlab config ({err})') from None
  return dataclasses.replace(cfg, name=run_dir.resolve().name, train=dataclasses.replace(
      cfg.train, workdir=str(run_dir.resolve().parent)))


def load(experiment_path: str, overrides: typing.Iterable[str] = ()) -> Config:
  """Loads an experiment file's config() -- or a run directory's config.json, to continue
  that run -- and applies `key.sub=value` overrides."""
  if (pathlib.Path(experiment_path) / CONFIG_FILE).is_file():
    return apply_overrides(validate(load_run_dir(experiment_path)), list(overrides))
  module = load_module(experiment_path)
  with _experiment_errors(resolve_experiment(experiment_path), 'running config()'):
    cfg = module.config()
  if not isinstance(cfg, Config):
    raise ConfigError(f'config() in {experiment_path!r} returned {type(cfg).__name__}, '
                      'expected jaxlab.config.Config')
  if not cfg.name:
    cfg = dataclasses.replace(cfg, name=resolve_experiment(experiment_path).stem)
  validate(cfg)
  return apply_overrides(cfg, list(overrides))


def from_dict(data: dict, cls=Config):
  """Inverse of Config.to_dict (used to read a run's config.json back)."""
  kwargs = {}
  types_ = fields_of(cls)
  data = _migrated(data, cls)
  for name, value in data.items():
    if name not in types_:
      raise ConfigError(f'unknown config key {name!r} in {cls.__name__}')
    tp = types_[name]
    if dataclasses.is_dataclass(tp):
      value = from_dict(value, tp)
    elif typing.get_origin(tp) is tuple:
      value = tuple(value)
    kwargs[name] = value
  return cls(**kwargs)


def flatten(data: dict, prefix: str = '') -> dict:
  """A config dict (as config.json holds it) by dotted key: {'model.d_model': 256, ...}."""
  out = {}
  for k, v in data.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def _migrated(data: dict, cls) -> dict:
  """Keys renamed since a config.json was written: model.zero_init_head=true is
  model.readout_init='zero'; data.text_key is data.text_field."""
  if cls is ModelConfig and 'zero_init_head' in data:
    data = dict(data)
    if data.pop('zero_init_head'):
      data['readout_init'] = 'zero'
  if cls is DataConfig and 'text_key' in data:
    data = dict(data)
    data.setdefault('text_field', data.pop('text_key'))
    data.pop('text_key', None)
  return data
