"""Typed, frozen configuration.

Experiments are Python files that define ``config() -> Config``. Command-line
overrides ``key.sub=value`` are parsed to the field's declared type; anything
wrong (unknown key, bad value, inconsistent sizes) raises ``ConfigError`` naming
the key, the value and what is allowed -- before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
  """A user-facing configuration mistake (the CLI prints it and exits with 2)."""


@dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 257            # byte tokenizer: 256 bytes + BOS
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 0              # 0 -> n_heads (multi-head); < n_heads -> GQA
  head_dim: int = 0                # 0 -> d_model // n_heads
  d_ff: int = 0                    # 0 -> LLaMA's 8/3 * d_model rounded up to 64 (ff_dim)
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  remat: Literal['none', 'full', 'save_dots'] = 'none'
  dtype: Literal['float32', 'bfloat16'] = 'float32'   # compute dtype; params are float32
  attention: Literal['xla', 'cudnn', 'pallas', 'auto'] = 'xla'
  parametrization: Literal['sp', 'mup'] = 'sp'   # see jaxlab/models/parametrization.py
  init_std: float = 0.02           # embedding init std (and the readout's under tied embeddings)
  base_d_model: int = 0            # muP base width (0 -> d_model: width multiplier m = 1)
  base_d_ff: int = 0               # muP base d_ff (0 -> ff_dim * base_d_model / d_model)
  base_head_dim: int = 0           # muP base head dim (0 -> head_dim if set, else
                                   #   base_d_model // n_heads)
  zero_init_head: bool = False     # readout initialised to zero (muP's recommended option)
  zero_init_query: bool = False    # query projection initialised to zero

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def ff_dim(self) -> int:
    """SwiGLU hidden size: explicit, or LLaMA's 8/3 * d_model rounded up to 64."""
    if self.d_ff:
      return self.d_ff
    return 64 * math.ceil(8 * self.d_model / 3 / 64)


@dataclass(frozen=True)
class OptimConfig:
  name: str = 'adamw'              # adamp | sgdp | any optax optimizer by name (sgd, lion, ...)
  lr: float = 3e-3
  lr_rule: Literal['fixed', 'steplaw'] = 'fixed'   # steplaw: lr from Step Law (optim.lr=steplaw)
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1        # decoupled where the optimizer has it, else L2 (sgd, adam)
  wd_width_exponent: float = 0.0   # hidden matrices' decay x m^e (0 const, 0.5 Fan et al., 1 muP)
  momentum: float = 0.9            # sgd / sgdp (and other optax optimizers that take it)
  dampening: float = 0.0           # sgdp only
  nesterov: bool = False           # adamp / sgdp / sgd
  delta: float = 0.1               # adamp / sgdp: scale-invariance test threshold
  wd_ratio: float = 0.1            # adamp / sgdp: weight-decay factor where projected
  grad_noise_eta: float = 0.0      # Gaussian gradient noise, sigma_t^2 = eta / (1 + t)^gamma
  grad_noise_gamma: float = 0.55
  schedule: Literal['cosine', 'linear', 'constant'] = 'cosine'
  warmup_steps: int = 100
  final_lr_fraction: float = 0.1   # lr at the last step, as a fraction of lr
  grad_clip: float = 1.0           # global-norm clipping; 0 disables


@dataclass(frozen=True)
class DataConfig:
  source: Literal['embedded', 'tfds', 'files'] = 'embedded'
  tfds_name: str = ''              # e.g. 'lm1b' (needs a network the first time)
  tfds_train_split: str = 'train'
  tfds_val_split: str = 'test'
  text_key: str = 'text'
  files: tuple[str, ...] = ()      # local text files (data.files=a.txt,b.txt); one document per file
  val_fraction: float = 0.05       # files only: the last fraction of each file is validation
  tokenizer: str = 'byte'          # 'byte' or a path to a trained SentencePiece .model
  seq_len: int = 256
  seed: int = 0
  shuffle_rows: int = 1024         # packed rows shuffled within windows of this size (0: off)
  data_dir: str = ''               # '' -> $JAXLAB_DATA_DIR or ~/.cache/jaxlab/tensorflow_datasets


@dataclass(frozen=True)
class MeshConfig:
  """Axis sizes within a slice / node (ICI), times dcn_* sizes across slices / nodes
  (DCN); one of data / fsdp / tensor (and one dcn_*) may be -1 = what the others leave.
  The rest says how processes find each other (jaxlab.parallel.mesh.initialize)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  distributed: Literal['auto', 'on', 'off'] = 'auto'  # auto: when a cluster is detected
  coordinator_address: str = ''    # host:port of process 0; '' -> $JAX_COORDINATOR_ADDRESS / auto
  num_processes: int = 0           # 0 -> $JAX_NUM_PROCESSES / auto-detected
  process_id: int = -1             # -1 -> $JAX_PROCESS_ID / auto-detected


@dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 16             # global, in sequences of data.seq_len tokens
  batch_rule: Literal['fixed', 'steplaw'] = 'fixed'  # steplaw: batch_size and steps from
                                   #   Step Law and train.tokens (train.batch=steplaw)
  tokens: int = 0                  # token budget D of the steplaw rules (0 -> steps x
                                   #   batch_size x data.seq_len); see jaxlab/optim/steplaw.py
  seed: int = 0                    # parameter init
  log_every: int = 10
  eval_every: int = 100            # 0 disables periodic eval (eval still runs at the end)
  eval_batches: int = 8
  checkpoint_every: int = 200      # 0 -> only at the end
  keep_checkpoints: int = 3
  checkpoint_dir: str = ''         # '' -> <run dir>/checkpoints; else <this>/<name> (gs://...)
  async_checkpoint: bool = True
  workdir: str = 'runs'
  spectral_every: int = 0          # log each matrix's top singular value every K steps and
                                   #   at the end (jaxlab/diagnostics/spectral.py); 0 = off


@dataclass(frozen=True)
class GrowthConfig:
  """One model-growth event inside a run (or a multi-level V-cycle).

  `model` is always the final (target) model. The source model trained before the
  event has the sizes below; 0 means: n_layers = model.n_layers / factor for depth
  methods (and for 'vcycle', where every width dim is also divided by factor), else
  the target's size.
  """
  method: Literal['none', 'stack', 'interleave', 'layers', 'zero', 'random', 'split',
                  'vcycle'] = 'none'
  at_tokens: int = 0               # grow once this many training tokens have been seen
  timing: Literal['tokens', 'auto'] = 'tokens'   # auto: Du et al.'s fitted rule
  factor: int = 4                  # growth factor (the paper's g = 4)
  n_layers: int = 0                # source model sizes (0: see above)
  d_model: int = 0
  n_heads: int = 0
  n_kv_heads: int = 0
  d_ff: int = 0
  layers: tuple[int, ...] = ()     # 'layers' (and optionally zero/random): src index per dst layer
  width_method: Literal['auto', 'split', 'zero', 'random'] = 'auto'   # auto: from method
  optimizer: Literal['reset', 'grow'] = 'reset'   # fresh moments + lr re-warmup, or grown moments
  ramp_steps: int = 0              # 'random': blend new layers in over this many steps
  small_tokens: int = 0            # 'vcycle': tokens trained on the coarsest model
  levels: int = 1                  # 'vcycle': coarse levels below the model (recursive V-cycle)
  alpha: float = 0.25              # 'vcycle': interpolation weight of the de-coalesced model
  grouping: Literal['stride', 'adjacent'] = 'stride'   # 'vcycle': which units merge


@dataclass(frozen=True)
class Config:
  name: str = ''                   # run directory name; '' -> the experiment file's stem
  model: ModelConfig = field(default_factory=ModelConfig)
  optim: OptimConfig = field(default_factory=OptimConfig)
  data: DataConfig = field(default_factory=DataConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  train: TrainConfig = field(default_factory=TrainConfig)
  growth: GrowthConfig = field(default_factory=GrowthConfig)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- parsing

def _fields(cls) -> dict[str, typing.Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(tp) -> str:
  if typing.get_origin(tp) is Literal:
    return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
  if typing.get_origin(tp) is tuple:
    return 'a comma-separated list of ' + _describe(typing.get_args(tp)[0])
  if dataclasses.is_dataclass(tp):
    return f'a {tp.__name__} section'
  return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}.get(
      tp, str(tp))


def _parse(key: str, text: str, tp):
  """Parses the override text of `key` to type `tp`, or raises ConfigError."""
  def bad():
    return ConfigError(f'{key}={text!r} is not valid: expected {_describe(tp)}')
  origin = typing.get_origin(tp)
  if origin is Literal:
    allowed = typing.get_args(tp)
    if text in allowed:
      return text
    close = difflib.get_close_matches(text, [str(a) for a in allowed], n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    raise ConfigError(f'{key}={text!r} is not allowed: expected {_describe(tp)}{hint}')
  if origin is tuple:
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
      return float(text)
    except ValueError:
      raise bad() from None
  if tp is str:
    return text
  raise ConfigError(f'{key} cannot be set from the command line (type {tp})')


def _check_type(key: str, value, tp):
  """Checks a value set in Python code (an experiment file) against its field type."""
  origin = typing.get_origin(tp)
  if origin is Literal:
    if value not in typing.get_args(tp):
      raise ConfigError(f'{key}={value!r} is not allowed: expected {_describe(tp)}')
    return
  if origin is tuple:
    if not isinstance(value, tuple):
      raise ConfigError(f'{key}={value!r} is not valid: expected a tuple')
    for i, v in enumerate(value):
      _check_type(f'{key}[{i}]', v, typing.get_args(tp)[0])
    return
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, tp):
      raise ConfigError(f'{key} must be a {tp.__name__}, got {type(value).__name__}')
    for name, sub in _fields(tp).items():
      _check_type(f'{key}.{name}' if key else name, getattr(value, name), sub)
    return
  ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    ok = True
  if not ok:
    raise ConfigError(f'{key}={value!r} is not valid: expected {_describe(tp)}')


def _all_keys(cls, prefix='') -> list[str]:
  keys = []
  for name, tp in _fields(cls).items():
    if dataclasses.is_dataclass(tp):
      keys += _all_keys(tp, f'{prefix}{name}.')
    else:
      keys.append(prefix + name)
  return keys


def _unknown(key: str) -> ConfigError:
  keys = _all_keys(Config)
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  hint = f'did you mean {close[0]!r}?' if close else 'known keys: ' + ', '.join(keys)
  return ConfigError(f'unknown config key {key!r}; {hint}')


def _set(obj, path: list[str], text: str, full_key: str):
  name = path[0]
  types_ = _fields(type(obj))
  if name not in types_:
    raise _unknown(full_key)
  tp = types_[name]
  if len(path) == 1:
    if dataclasses.is_dataclass(tp):
      raise ConfigError(f'{full_key} is a section; set one of its keys, e.g. {full_key}.'
                        f'{next(iter(_fields(tp)))}=...')
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
  """Applies `key.sub=value` overrides, then the steplaw rules (jaxlab.optim.steplaw.resolve),
  then validates."""
  steps_set = None
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
    cfg = _set(cfg, key.split('.'), text, key)
  if cfg.optim.lr_rule == 'steplaw' or cfg.train.batch_rule == 'steplaw':
    if steps_set is not None and cfg.train.batch_rule == 'steplaw':
      raise ConfigError(f"train.steps={steps_set} cannot be set under train.batch_rule='steplaw' "
                        '(steps = train.tokens / (batch_size x data.seq_len)); set train.tokens, '
                        'or train.batch_size=N for a fixed batch')
    from jaxlab.optim.steplaw import resolve   # only here: jaxlab.optim imports jax
    _check_type('', cfg, Config)
    cfg = resolve(cfg)
  validate(cfg)
  return cfg


def validate(cfg: Config) -> Config:
  """Type checks every field, then the relations between fields (jaxlab.config_checks)."""
  from jaxlab import config_checks
  return config_checks.validate(cfg)


# ----------------------------------------------------------------------------- loading

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'experiments'


def resolve_experiment(experiment: str) -> pathlib.Path:
  """'demo', 'experiments/demo.py' or any path to a .py file -> the file's path."""
  path = pathlib.Path(experiment)
  candidates = [path, EXPERIMENTS_DIR / path, EXPERIMENTS_DIR / f'{experiment}.py']
  for cand in candidates:
    if cand.is_file() and cand.suffix == '.py':
      return cand.resolve()
  known = sorted(p.stem for p in EXPERIMENTS_DIR.glob('*.py')) if EXPERIMENTS_DIR.is_dir() else []
  close = difflib.get_close_matches(path.stem, known, n=1)
  hint = f'; did you mean {close[0]!r}?' if close else (f'; known: {", ".join(known)}' if known else '')
  raise ConfigError(f'experiment {experiment!r} not found (a .py file defining config()){hint}')


def load_module(experiment: str) -> types.ModuleType:
  path = resolve_experiment(experiment)
  spec = importlib.util.spec_from_file_location(f'jaxlab_experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'config', None)):
    raise ConfigError(f'experiment {str(path)!r} must define config() returning a jaxlab Config')
  return module


def load_run_dir(run_dir: str | pathlib.Path) -> Config:
  """The config of an existing run directory (its config.json), placed where it lies."""
  import json
  run_dir = pathlib.Path(run_dir)
  try:
    cfg = from_dict(json.loads((run_dir / 'config.json').read_text()))
  except (json.JSONDecodeError, TypeError) as err:
    raise ConfigError(f'{run_dir / "config.json"} is not a jaxlab config ({err})') from None
  return dataclasses.replace(cfg, name=run_dir.resolve().name, train=dataclasses.replace(
      cfg.train, workdir=str(run_dir.parent)))


def load(experiment_path: str, overrides: typing.Iterable[str] = ()) -> Config:
  """Loads an experiment file's config() -- or a run directory's config.json, to continue
  that run -- and applies `key.sub=value` overrides."""
  if (pathlib.Path(experiment_path) / 'config.json').is_file():
    return apply_overrides(validate(load_run_dir(experiment_path)), list(overrides))
  module = load_module(experiment_path)
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
  types_ = _fields(cls)
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
