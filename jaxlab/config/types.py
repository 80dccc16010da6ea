"""Configuration types: typed, frozen dataclasses (ModelConfig, OptimConfig, DataConfig,
MeshConfig, TrainConfig, GrowthConfig, Config), ConfigError, and the type checks that
every field goes through.

The bottom of jaxlab's layers: everything imports these from here (or through
`jaxlab.config`, which re-exports them); this module imports nothing of jaxlab.
"""
from __future__ import annotations

import dataclasses
import math
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
  rope_scaling: Literal['none', 'llama3'] = 'none'   # llama3: Llama 3.1's frequency-dependent
  rope_factor: float = 8.0         #   RoPE scaling (rope_type llama3 in a HF config): long
  rope_low_freq_factor: float = 1.0    # wavelengths / factor, short ones kept, smooth between;
  rope_high_freq_factor: float = 4.0   # the defaults are Llama 3.1's
  rope_original_max_len: int = 8192    # original_max_position_embeddings
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  remat: Literal['none', 'full', 'save_dots'] = 'none'
  scan_unroll: int = 1             # layers per iteration of the layer scan: 1 compiles one
                                   #   layer (fast compile at any depth); >= n_layers unrolls
                                   #   it, like a Python loop over layers (faster step, longer
                                   #   compile; params keep the stacked layout either way)
  dtype: Literal['float32', 'bfloat16'] = 'float32'   # compute dtype; params are float32
  attention: Literal['xla', 'cudnn', 'pallas', 'splash', 'tokamax', 'auto'] = 'xla'
  qk_norm: bool = False            # RMSNorm (learned gain) on q and k per head, before RoPE
  parametrization: Literal['sp', 'mup'] = 'sp'   # see jaxlab/models/parametrization.py
  init_std: float = 0.02           # embedding init std (and the readout's under tied embeddings)
  readout_init: Literal['mup', 'fan_in', 'zero'] = 'mup'   # untied head's init: microsoft/
                                   #   mup's MuReadout (std constant in width), fan_in^-1/2, 0
  base_d_model: int = 0            # muP base width (0 -> d_model: every multiplier is 1)
  base_n_heads: int = 0            # muP base model sizes; 0 -> derived from base_d_model by
  base_head_dim: int = 0           #   the rules the model uses (explicit head_dim: fixed, heads
  base_d_ff: int = 0               #   scale; else heads fixed; d_ff: its ratio, or LLaMA's rule)
  zero_init_query: bool = False    # query projection initialised to zero
  init: str = ''                   # '' (init from the parametrization) or 'hf:DIR': start from a
                                   #   Hugging Face checkpoint (jaxlab.interop.hf)

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
  vector_weight_decay: bool = True # decay the embedding and the readout too; false: only the
                                   #   hidden matrices (Fan et al.'s lambda_1 = 0 for vectors)
  momentum: float = 0.9            # sgd / sgdp (and other optax optimizers that take it)
  dampening: float = 0.0           # sgdp only
  nesterov: bool = False           # adamp / sgdp / sgd
  delta: float = 0.1               # adamp / sgdp: scale-invariance test threshold
  wd_ratio: float = 0.1            # adamp / sgdp: weight-decay factor where projected
  grad_noise_eta: float = 0.0      # Gaussian gradient noise, sigma_t^2 = eta / (1 + t)^gamma
  grad_noise_gamma: float = 0.55
  schedule: Literal['cosine', 'linear', 'constant', 'wsd'] = 'cosine'   # wsd: warmup-stable-
                                   #   decay (constant lr, then decay_shape over the last steps)
  warmup_steps: int = 100
  decay_fraction: float = 0.2      # wsd: share of train.steps spent decaying, at the end
  decay_shape: Literal['linear', 'cosine', '1-sqrt'] = '1-sqrt'   # wsd: the decay's shape
  final_lr_fraction: float = 0.1   # lr at the last step, as a fraction of lr
  grad_clip: float = 1.0           # global-norm clipping; 0 disables
  moments_dtype: Literal['float32', 'bfloat16'] = 'float32'   # storage of the first moment
                                   #   (optax's mu_dtype; AdamP's m, SGDP's buffer): computed
                                   #   in float32 either way; Adam's second moment stays float32


@dataclass(frozen=True)
class DataConfig:
  source: Literal['embedded', 'tfds', 'files', 'prepared'] = 'embedded'
  tfds_name: str = ''              # e.g. 'lm1b' (needs a network the first time)
  tfds_train_split: str = 'train'
  tfds_val_split: str = 'test'
  text_field: str = 'text'         # the field holding the text (tfds features, .jsonl keys,
                                   #   .parquet columns)
  files: tuple[str, ...] = ()      # local files (data.files=a.txt,b.jsonl.gz,c.parquet): a .txt is
                                   #   one document, a .jsonl line or a .parquet row is one
  val_fraction: float = 0.05       # files only: the last fraction of each file is validation
  path: str = ''                   # prepared: a dataset `launch.py prepare --out` wrote (a local
                                   #   directory, or a URL etils.epath reads: gs://...)
  mixture: tuple[str, ...] = ()    # prepared: DIR:WEIGHT,... (weights > 0, normalised to sum
                                   #   to 1), datasets sharing one tokenizer (jaxlab.data.mixture)
  tokenizer: str = 'byte'          # 'byte', a SentencePiece .model, or a Hugging Face
                                   #   tokenizer.json (or a directory holding one); prepared:
                                   #   the dataset's (left at 'byte', it is taken from there)
  seq_len: int = 256
  seed: int = 0
  shuffle_rows: int = 1024         # packed rows shuffled within windows of this size (0: off)
  packing: Literal['rows', 'lanes'] = 'rows'   # rows: the grain pipeline (packed rows,
                                   #   shuffled); lanes: batch_size contiguous document streams
                                   #   (jaxlab.data.lanes), what growth.seq_lens always uses
  data_dir: str = ''               # '' -> $JAXLAB_DATA_DIR or ~/.cache/jaxlab/tensorflow_datasets
  accept_changes: bool = False     # resume although data.files (or the tokenizer) changed since
                                   #   the run started: the change is recorded in config.json's
                                   #   history, and the run trains on the data as it is now


@dataclass(frozen=True)
class MeshConfig:
  """Axis sizes within a slice / node (ICI), times dcn_* sizes across slices / nodes
  (DCN); one of data / fsdp / tensor (and one dcn_*) may be -1 = what the others leave.
  context (x dcn_context) splits the sequence: ring attention, jaxlab/kernels/ring_attention.py.
  The rest says how processes find each other (jaxlab.parallel.mesh.initialize)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  context: int = 1                 # sequence parallelism (ring attention); >= 1, never -1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  dcn_context: int = 1
  distributed: Literal['auto', 'on', 'off'] = 'auto'  # auto: when a cluster is detected
  coordinator_address: str = ''    # host:port of process 0; '' -> $JAX_COORDINATOR_ADDRESS / auto
  num_processes: int = 0           # 0 -> $JAX_NUM_PROCESSES / auto-detected
  process_id: int = -1             # -1 -> $JAX_PROCESS_ID / auto-detected


@dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 16             # global, in sequences of data.seq_len tokens
  microbatches: int = 1            # gradient accumulation: each step runs the global batch as
                                   #   this many sequential microbatches (one optimizer update;
                                   #   jaxlab/train/step.py); batch_size must divide by it x the
                                   #   data-parallel size
  batch_rule: Literal['fixed', 'steplaw'] = 'fixed'  # steplaw: batch_size and steps from
                                   #   Step Law and train.tokens (train.batch=steplaw)
  tokens: int = 0                  # token budget D of the steplaw rules (0 -> steps x
                                   #   batch_size x data.seq_len); see jaxlab/optim/steplaw.py
  seed: int = 0                    # parameter init
  log_every: int = 10
  eval_every: int = 100            # 0 disables periodic eval (eval still runs at the end)
  eval_batches: int | Literal['all'] = 'all'   # validation batches per eval: all = every
                                   #   token of the split, the same at each eval; 0 = no eval
  checkpoint_every: int = 200      # 0 -> only at the end
  keep_checkpoints: int = 3
  checkpoint_dir: str = ''         # '' -> <run dir>/checkpoints; else <this>/<name> (gs://...)
  async_checkpoint: bool = True
  workdir: str = 'runs'
  mirror_dir: str = ''             # '' -> none; else the run dir is copied to <this>/<name>
                                   # (gs://..., file:///...; jaxlab.rundir.mirror)
  spectral_every: int = 0          # log each matrix's top singular value every K steps and
                                   #   at the end (jaxlab/diagnostics/spectral.py); 0 = off
  weight_stats: bool = False       # weight norm and effective step of the norm-fed matrices
  eval_positions: bool = False     # the last eval also logs val_loss_pos/<lo>-<hi>: the loss
                                   #   by the context a target had in its document piece
                                   #   (train/step.py POSITION_EDGES)
                                   #   in every step (jaxlab/diagnostics/weights.py)
  trainable: str = ''              # '' = every param trains; else what trains, the rest frozen
                                   #   (no update, no optimizer state): globs over param paths,
                                   #   layers[RANGES][/GLOB], or 'new' (jaxlab/optim/trainable.py)
  trackers: tuple[Literal['jsonl', 'tensorboard', 'wandb'], ...] = ('jsonl', 'tensorboard')
                                   # where logged records go, on
                                   #   process 0: jsonl (metrics.jsonl, always), tensorboard,
                                   #   wandb (jaxlab/rundir/trackers.py)
  wandb_project: str = 'jaxlab'
  wandb_entity: str = ''           # '' -> W&B's default entity
  wandb_run_id: str = ''           # '' -> drawn at the run's first start, kept in wandb.json
  profile_steps: str = ''          # 'A-B': a jax.profiler trace of steps A..B in <run dir>/profile
  profile_process: int = 0         # the process that traces; -1 = every process


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
  source: str = ''                 # set by launch.py grow: the command that grew this run's
                                   #   first checkpoint (it never starts from random init)
  depth_grouping: Literal['adjacent', 'stride'] = 'adjacent'   # 'vcycle': which layers merge:
                                   #   i*k..i*k+k-1, or i, i+L_small, ... (the authors' scripts)
  # Context-length growth (jaxlab.growth.plan, jaxlab.data.lanes): the sequence length of
  # each phase, the last = data.seq_len; phase k > 0 starts once seq_at_tokens[k - 1]
  # training tokens have been seen. Tokens per step stay constant: a phase at length L
  # trains train.batch_size x data.seq_len / L rows. rope_theta: RoPE's base per phase
  # (the last = model.rope_theta); () keeps model.rope_theta throughout.
  seq_lens: tuple[int, ...] = ()
  seq_at_tokens: tuple[int, ...] = ()
  rope_theta: tuple[float, ...] = ()


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



# ------------------------------------------------------------------------- int ranges

def parse_ranges(text: str, key: str) -> tuple[int, ...]:
  """'0-23,8-31' -> (0, 1, ..., 23, 8, ..., 31): comma-separated integers or inclusive
  ranges a-b (a <= b), in the order given; ConfigError naming `key` otherwise."""
  out: list[int] = []
  for item in (t.strip() for t in text.split(',')):
    if not item:
      continue
    lo, sep, hi = item.partition('-')
    try:
      a, b = int(lo), int(hi) if sep else int(lo)
    except ValueError:
      raise ConfigError(f'{key}={text!r}: {item!r} is not an integer or a range a-b '
                        '(e.g. 0-23,8-31)') from None
    if a < 0 or b < a:
      raise ConfigError(f'{key}={text!r}: the range {item!r} must be a-b with 0 <= a <= b')
    out.extend(range(a, b + 1))
  if not out:
    raise ConfigError(f'{key}={text!r} lists no integers (e.g. 0-23,8-31)')
  return tuple(out)


# ------------------------------------------------------------------------- data places

def is_url(path: str) -> bool:
  """Whether a data or run place is a URL (gs://..., file:///...) rather than a path on
  this machine."""
  return '://' in path


def mixture_entries(mixture: tuple[str, ...]) -> list[tuple[str, float]]:
  """data.mixture ('DIR:WEIGHT', ...) -> [(DIR, weight)] with the weights normalised to
  sum to 1; ConfigError naming the entry otherwise."""
  out = []
  for item in mixture:
    where, sep, text = item.rpartition(':')
    try:
      weight = float(text) if sep and where and not text.startswith('//') else None
    except ValueError:
      weight = None
    if weight is None or not math.isfinite(weight) or weight <= 0:
      raise ConfigError(f'data.mixture entry {item!r} must be DIR:WEIGHT with a weight > 0 '
                        '(e.g. data.mixture=web:0.7,code:0.3; weights are normalised)')
    out.append((where, weight))
  paths = [p for p, _ in out]
  if len(set(paths)) != len(paths):
    raise ConfigError(f'data.mixture names a dataset twice ({",".join(mixture)}); give each '
                      'once, with its whole weight')
  total = sum(w for _, w in out)
  return [(p, w / total) for p, w in out]


# ------------------------------------------------------------------------- type checks

def fields_of(cls) -> dict[str, typing.Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def union_args(tp) -> tuple:
  """The arms of a union type (`int | Literal['all']`), else ()."""
  return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def describe(tp) -> str:
  if union_args(tp):
    return ' or '.join(describe(a) for a in union_args(tp))
  if typing.get_origin(tp) is Literal:
    return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
  if typing.get_origin(tp) is tuple:
    return 'a comma-separated list of ' + describe(typing.get_args(tp)[0])
  if dataclasses.is_dataclass(tp):
    return f'a {tp.__name__} section'
  return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}.get(
      tp, str(tp))


def check_type(key: str, value, tp):
  """Checks a value set in Python code (an experiment file) against its field type."""
  if union_args(tp):
    for arm in union_args(tp):
      try:
        return check_type(key, value, arm)
      except ConfigError:
        pass
    raise ConfigError(f'{key}={value!r} is not valid: expected {describe(tp)}')
  origin = typing.get_origin(tp)
  if origin is Literal:
    if value not in typing.get_args(tp):
      raise ConfigError(f'{key}={value!r} is not allowed: expected {describe(tp)}')
    return
  if origin is tuple:
    if not isinstance(value, tuple):
      raise ConfigError(f'{key}={value!r} is not valid: expected a tuple')
    for i, v in enumerate(value):
      check_type(f'{key}[{i}]', v, typing.get_args(tp)[0])
    return
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, tp):
      raise ConfigError(f'{key} must be a {tp.__name__}, got {type(value).__name__}')
    for name, sub in fields_of(tp).items():
      check_type(f'{key}.{name}' if key else name, getattr(value, name), sub)
    return
  ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    ok = True
  if not ok:
    raise ConfigError(f'{key}={value!r} is not valid: expected {describe(tp)}')


def all_keys(cls, prefix='') -> list[str]:
  keys = []
  for name, tp in fields_of(cls).items():
    if dataclasses.is_dataclass(tp):
      keys += all_keys(tp, f'{prefix}{name}.')
    else:
      keys.append(prefix + name)
  return keys
