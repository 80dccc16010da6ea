"""Validation of a Config: every field's type, then the relations between fields that
the config decides alone. Each error names the key, the value and what is allowed
(ConfigError, exit 2 at the CLI). The rules that need the model, the optimizer or the
kernels (muP's base model, train.trainable's patterns, a ring block for the attention
backend, Step Law) are jaxlab.train.runnable.resolve's."""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import math

from jaxlab.config.hf import init_dir
from jaxlab.config.types import Config, ConfigError, OptimConfig, check_type, mixture_entries


def _require(cond: bool, message: str):
  if not cond:
    raise ConfigError(message)


def validate(cfg: Config) -> Config:
  """Type checks every field, then the relations between fields."""
  check_type('', cfg, Config)
  _check_finite(cfg)
  m, o, d, t, me = cfg.model, cfg.optim, cfg.data, cfg.train, cfg.mesh
  _check_sizes(cfg)
  for key, value in [('model.vocab_size', m.vocab_size), ('model.d_model', m.d_model),
                     ('model.n_layers', m.n_layers), ('model.n_heads', m.n_heads),
                     ('data.seq_len', d.seq_len), ('train.steps', t.steps),
                     ('train.batch_size', t.batch_size), ('train.log_every', t.log_every),
                     ('train.keep_checkpoints', t.keep_checkpoints),
                     ('model.scan_unroll', m.scan_unroll)]:
    _require(value >= 1, f'{key}={value} must be >= 1')
  for key, value in [('model.n_kv_heads', m.n_kv_heads), ('model.head_dim', m.head_dim),
                     ('model.d_ff', m.d_ff), ('optim.warmup_steps', o.warmup_steps),
                     ('train.eval_every', t.eval_every),
                     ('train.checkpoint_every', t.checkpoint_every), ('train.tokens', t.tokens),
                     ('train.spectral_every', t.spectral_every),
                     ('optim.weight_decay', o.weight_decay), ('optim.grad_clip', o.grad_clip)]:
    _require(value >= 0, f'{key}={value} must be >= 0')
  _require(t.eval_batches == 'all' or t.eval_batches >= 0,
           f'train.eval_batches={t.eval_batches} must be >= 0 or all')
  if t.batch_rule == 'fixed':   # else Step Law sets the batch; the run checks it on its mesh
    sizes = (me.data, me.fsdp, me.dcn_data, me.dcn_fsdp)
    check_microbatches(cfg, math.prod(sizes) if min(sizes) >= 1 else None)
  _require(m.kv_heads <= m.n_heads and m.n_heads % m.kv_heads == 0,
           f'model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={m.n_kv_heads} '
           '(grouped-query attention shares each kv head among n_heads/n_kv_heads query heads)')
  _require(m.head_dim > 0 or m.d_model % m.n_heads == 0,
           f'model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; '
           'change one of them or set model.head_dim explicitly')
  _require(m.dim_per_head % 2 == 0,
           f'head dim {m.dim_per_head} must be even for rotary embeddings (model.head_dim / '
           'model.d_model / model.n_heads)')
  _require(m.attention != 'tokamax' or importlib.util.find_spec('tokamax') is not None,
           "model.attention='tokamax' needs the tokamax package: pip install 'jaxlab[gpu]' "
           '(or pip install tokamax)')
  _require(m.init_std > 0, f'model.init_std={m.init_std} must be > 0')
  _require(m.rope_theta > 0, f'model.rope_theta={m.rope_theta} must be > 0')
  _require(m.norm_eps > 0, f'model.norm_eps={m.norm_eps} must be > 0')
  if m.rope_scaling == 'llama3':
    _require(m.rope_factor >= 1 and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor
             and m.rope_original_max_len >= 1,
             f'model.rope_scaling=llama3 needs model.rope_factor >= 1 (got {m.rope_factor}), '
             f'0 < model.rope_low_freq_factor ({m.rope_low_freq_factor}) < '
             f'model.rope_high_freq_factor ({m.rope_high_freq_factor}) and '
             f'model.rope_original_max_len >= 1 (got {m.rope_original_max_len})')
  if m.init:
    init_dir(m.init)   # its syntax; the folder's config.json is read by jaxlab.config.hf
  if t.trainable:
    _require(cfg.growth.optimizer != 'grow',
             'train.trainable freezes params, so the optimizer state changes shape at the '
             'growth event; use growth.optimizer=reset')
  _require(o.lr > 0, f'optim.lr={o.lr} must be > 0')
  _require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f'optim.b1={o.b1}, optim.b2={o.b2} must be in [0, 1)')
  _validate_optimizer(o)
  if m.parametrization == 'mup':
    _validate_mup(cfg)
  _require(0 <= o.final_lr_fraction <= 1,
           f'optim.final_lr_fraction={o.final_lr_fraction} must be in [0, 1]')
  _require(0 < o.decay_fraction <= 1,
           f'optim.decay_fraction={o.decay_fraction} must be in (0, 1]: the share of '
           'train.steps that optim.schedule=wsd spends decaying, at the end (e.g. 0.2)')
  _require(0 < d.val_fraction < 1, f'data.val_fraction={d.val_fraction} must be in (0, 1)')
  _require(d.shuffle_rows >= 0, f'data.shuffle_rows={d.shuffle_rows} must be >= 0')
  _require(d.source != 'tfds' or bool(d.tfds_name),
           "data.source='tfds' needs data.tfds_name (e.g. data.tfds_name=lm1b)")
  _validate_data_source(d)
  _validate_context(cfg)
  for group in (('data', 'fsdp', 'tensor'), ('dcn_data', 'dcn_fsdp', 'dcn_tensor')):
    sizes = {f'mesh.{k}': getattr(me, k) for k in group}
    for key, value in sizes.items():
      _require(value == -1 or value >= 1, f'{key}={value} must be >= 1 or -1 (the rest)')
    _require(list(sizes.values()).count(-1) <= 1,
             f'only one of {", ".join(sizes)} may be -1 (the rest); got {sizes}')
  _validate_growth(cfg)
  _validate_context_growth(cfg)
  _validate_trackers(t)
  _require(bool(cfg.name) and '/' not in cfg.name and '\0' not in cfg.name
           and cfg.name not in ('.', '..'),
           f'name={cfg.name!r} must be a non-empty directory name without "/"')
  _require(len(cfg.name.encode()) <= NAME_MAX,
           f'name= is {len(cfg.name.encode())} bytes long; a directory name may have at most '
           f'{NAME_MAX} (name={cfg.name[:40]!r}...)')
  return cfg


def _validate_data_source(d):
  """Each source's keys go with that source only: a key another source reads would be
  ignored without a word (data.files without data.source=files trained on the embedded
  corpus)."""
  for key, value, owner in (('data.files', ','.join(d.files), 'files'),
                            ('data.path', d.path, 'prepared'),
                            ('data.mixture', ','.join(d.mixture), 'prepared')):
    _require(not value or d.source == owner,
             f'{key}={value} is read only with data.source={owner}, but data.source='
             f'{d.source}; add data.source={owner} or drop {key}')
  _require(d.source != 'files' or bool(d.files),
           "data.source='files' needs data.files=path1.txt,path2.txt")
  if d.source == 'prepared':
    _require(bool(d.path) != bool(d.mixture),
             'data.source=prepared needs one of data.path=DIR (a dataset `launch.py prepare '
             '--out DIR` wrote) or data.mixture=DIR:WEIGHT,...' + (
                 ', not both' if d.path else ''))
    mixture_entries(d.mixture)


def check_microbatches(cfg: Config, data_parallel: int | None):
  """train.microbatches splits every global batch into whole microbatches, each sharded
  evenly over the data-parallel devices (data x fsdp axes of the mesh; None: not known
  yet, as before the devices are); a run or compile checks again on its mesh."""
  k, b = cfg.train.microbatches, cfg.train.batch_size
  _require(k >= 1, f'train.microbatches={k} must be >= 1 (1: no gradient accumulation)')
  n = k * (data_parallel or 1)
  mesh = (f' x the data-parallel size {data_parallel} (data x fsdp axes of the mesh) = {n}'
          if data_parallel else '')
  _require(b % n == 0, f'train.batch_size={b} must be divisible by train.microbatches={k}'
           f'{mesh}: each microbatch is an equal share of the batch on every device')


def profile_range(spec: str) -> tuple[int, int] | None:
  """train.profile_steps 'A-B' as (A, B); None for ''. Raises ConfigError."""
  if not spec:
    return None
  lo, sep, hi = spec.partition('-')
  ok = sep and lo.strip().isdigit() and hi.strip().isdigit() and 1 <= int(lo) <= int(hi)
  _require(bool(ok), f"train.profile_steps={spec!r} must be 'A-B' with 1 <= A <= B "
           "(steps A to B, both traced), e.g. train.profile_steps=10-12")
  return int(lo), int(hi)


def _validate_trackers(t):
  _require('jsonl' in t.trackers,
           f"train.trackers={','.join(t.trackers)} must include jsonl: metrics.jsonl is the "
           'run\'s record (reports, fits and a resume read it); add trackers to it, e.g. '
           'train.trackers=jsonl,tensorboard,wandb')
  _require('wandb' not in t.trackers or importlib.util.find_spec('wandb') is not None,
           "train.trackers=...,wandb needs the wandb package: pip install -e '.[wandb]'")
  span = profile_range(t.profile_steps)
  _require(span is None or span[1] <= t.steps,
           f'train.profile_steps={t.profile_steps} ends after the run (train.steps={t.steps})')
  _require(t.profile_process >= -1,
           f'train.profile_process={t.profile_process} must be a process index, or -1 for all')


# A file name's longest length on Linux / macOS file systems (NAME_MAX).
NAME_MAX = 255
# Every size is a dimension of an array (or a factor of one) that XLA indexes with int32
# in places (a Python int passed to a jitted function must fit one): 2^31 - 1 at most.
MAX_SIZE = 2**31 - 1


def _check_finite(cfg: Config):
  """inf / 1e400 parse as floats but are never a meaningful setting; nan fails every
  comparison, so the range checks below would let it through in places."""
  def walk(obj, prefix):
    for f in dataclasses.fields(obj):
      value, key = getattr(obj, f.name), f'{prefix}{f.name}'
      if dataclasses.is_dataclass(value):
        walk(value, key + '.')
      elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f'{key}={value} is not valid: expected a finite number')
  walk(cfg, '')


def _check_sizes(cfg: Config):
  m, g = cfg.model, cfg.growth
  sizes = [('model.vocab_size', m.vocab_size), ('model.d_model', m.d_model),
           ('model.n_layers', m.n_layers), ('model.n_heads', m.n_heads),
           ('model.n_kv_heads', m.n_kv_heads), ('model.head_dim', m.head_dim),
           ('model.d_ff', m.d_ff), ('model.base_d_model', m.base_d_model),
           ('model.base_d_ff', m.base_d_ff), ('model.base_head_dim', m.base_head_dim),
           ('data.seq_len', cfg.data.seq_len), ('train.batch_size', cfg.train.batch_size),
           ('growth.n_layers', g.n_layers), ('growth.d_model', g.d_model),
           ('growth.n_heads', g.n_heads), ('growth.n_kv_heads', g.n_kv_heads),
           ('growth.d_ff', g.d_ff)]
  for key, value in sizes:
    _require(value <= MAX_SIZE, f'{key}={value} is too large: sizes must be <= {MAX_SIZE} '
             '(2^31 - 1, the largest array dimension XLA indexes everywhere)')
  if m.n_heads > 0:
    heads = m.n_heads * m.dim_per_head
    _require(heads <= MAX_SIZE, f'model.n_heads x head dim = {heads} is too large: must be <= '
             f'{MAX_SIZE}')


def _validate_context(cfg: Config):
  """mesh.context x mesh.dcn_context devices split the sequence (ring attention, zigzag
  layout: 2 chunks per device)."""
  me = cfg.mesh
  for key in ('context', 'dcn_context'):
    _require(getattr(me, key) >= 1, f'mesh.{key}={getattr(me, key)} must be >= 1 (the '
             'sequence is split over mesh.context x mesh.dcn_context devices; -1 is not allowed)')
  n = me.context * me.dcn_context
  if n == 1:
    return
  _require(cfg.data.seq_len % (2 * n) == 0,
           f'data.seq_len={cfg.data.seq_len} must be a multiple of {2 * n} under mesh.context='
           f'{me.context} x mesh.dcn_context={me.dcn_context}: ring attention gives each of '
           f'the {n} devices two chunks of the sequence')


def _validate_optimizer(o: OptimConfig):
  if o.name not in ('adamw', 'adamp', 'sgdp'):   # anything else: an optax optimizer by name
    import optax   # only here: the common names need no jax import to be checked
    names = sorted(n for n in dir(optax) if not n.startswith('_') and n.islower()
                   and callable(getattr(optax, n)) and
                   'learning_rate' in inspect.signature(getattr(optax, n)).parameters)
    if o.name not in names:
      close = difflib.get_close_matches(o.name, names + ['adamp', 'sgdp'], n=3)
      raise ConfigError(f'optim.name={o.name!r} is not adamp, sgdp or an optax optimizer'
                        + (f'; did you mean {", ".join(close)}?' if close else
                           f' (optax has: {", ".join(names)})'))
  _require(0 <= o.momentum < 1, f'optim.momentum={o.momentum} must be in [0, 1)')
  _require(o.dampening == 0 or o.name == 'sgdp', 'optim.dampening applies to sgdp only')
  _require(o.delta > 0 and 0 <= o.wd_ratio <= 1,
           f'optim.delta={o.delta} must be > 0 and optim.wd_ratio={o.wd_ratio} in [0, 1]')
  _require(o.grad_noise_eta >= 0 and o.grad_noise_gamma >= 0,
           f'optim.grad_noise_eta={o.grad_noise_eta} and optim.grad_noise_gamma='
           f'{o.grad_noise_gamma} must be >= 0')


def _validate_mup(cfg: Config):
  """muP's base sizes (whether they make a whole base model, and the optimizer's family,
  are jaxlab.models.parametrization's to say: jaxlab.train.runnable.resolve)."""
  for key in ('base_d_model', 'base_n_heads', 'base_head_dim', 'base_d_ff'):
    _require(getattr(cfg.model, key) >= 0, f'model.{key}={getattr(cfg.model, key)} must be >= 0')


def _validate_growth(cfg: Config):
  g, m = cfg.growth, cfg.model
  if g.method == 'none':
    return
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  total = cfg.train.steps * tokens_per_step
  _require(g.factor >= 1, f'growth.factor={g.factor} must be >= 1')
  for key in ('at_tokens', 'n_layers', 'd_model', 'n_heads', 'n_kv_heads', 'd_ff', 'ramp_steps',
              'small_tokens'):
    _require(getattr(g, key) >= 0, f'growth.{key}={getattr(g, key)} must be >= 0')
  if g.timing == 'tokens':
    _require(0 < g.at_tokens < total,
             f'growth.at_tokens={g.at_tokens} must be in (0, {total}) = (0, train.steps x '
             f'train.batch_size x data.seq_len); or set growth.timing=auto')
  else:
    _require(g.at_tokens == 0, 'growth.at_tokens and growth.timing=auto exclude each other')
  _require(g.method in ('layers', 'zero', 'random') or not g.layers,
           f'growth.layers is used by methods layers, zero and random, not {g.method!r}')
  _require(g.method != 'layers' or bool(g.layers),
           "growth.method='layers' needs growth.layers=i0,i1,... (a source index per target layer)")
  _require(g.layers == () or len(g.layers) == m.n_layers,
           f'growth.layers has {len(g.layers)} entries; it needs one per target layer '
           f'(model.n_layers={m.n_layers})')
  _require(g.method == 'random' or g.ramp_steps == 0,
           f'growth.ramp_steps applies to method random only, not {g.method!r}')
  _require(g.levels >= 1, f'growth.levels={g.levels} must be >= 1')
  _require(g.method == 'vcycle' or g.levels == 1, 'growth.levels applies to method vcycle only')
  _require(g.levels == 1 or not (g.n_layers or g.d_model or g.n_heads or g.n_kv_heads or g.d_ff),
           'growth.levels > 1 coarsens every level by growth.factor; leave the source sizes '
           '(growth.n_layers, growth.d_model, ...) at 0')
  if g.method == 'vcycle':
    _require(g.small_tokens > 0, "growth.method='vcycle' needs growth.small_tokens > 0")
    _require(0 <= g.alpha <= 1, f'growth.alpha={g.alpha} must be in [0, 1]')
  else:
    _require(g.small_tokens == 0, 'growth.small_tokens applies to method vcycle only')


def _validate_context_growth(cfg: Config):
  """growth.seq_lens / seq_at_tokens / rope_theta: a context-length schedule (plan.py)."""
  g, d, t = cfg.growth, cfg.data, cfg.train
  if not g.seq_lens:
    _require(not g.seq_at_tokens and not g.rope_theta,
             'growth.seq_at_tokens and growth.rope_theta need growth.seq_lens (the sequence '
             'length of each phase, the last = data.seq_len)')
    return
  lens = g.seq_lens
  _require(len(lens) >= 2, f'growth.seq_lens={",".join(map(str, lens))} needs at least two '
           'lengths (the first phase\'s ... the last = data.seq_len)')
  _require(lens[-1] == d.seq_len, f'growth.seq_lens ends with {lens[-1]}; the last length is '
           f'the run\'s data.seq_len={d.seq_len}')
  _require(all(a < b for a, b in zip(lens, lens[1:])),
           f'growth.seq_lens={",".join(map(str, lens))} must increase strictly')
  _require(all(d.seq_len % n == 0 and n >= 1 for n in lens),
           f'growth.seq_lens={",".join(map(str, lens))}: every length must divide data.seq_len='
           f'{d.seq_len} (a phase at length L trains train.batch_size x data.seq_len / L rows, '
           'so tokens per step stay constant)')
  n_ctx = cfg.mesh.context * cfg.mesh.dcn_context
  _require(n_ctx == 1 or all(n % (2 * n_ctx) == 0 for n in lens),
           f'growth.seq_lens={",".join(map(str, lens))}: every length must be a multiple of '
           f'{2 * n_ctx} under mesh.context x mesh.dcn_context={n_ctx} (ring attention)')
  at = g.seq_at_tokens
  total = t.steps * t.batch_size * d.seq_len
  _require(len(at) == len(lens) - 1,
           f'growth.seq_at_tokens has {len(at)} entries; it needs one per length after the '
           f'first ({len(lens) - 1}): the training tokens at which each starts')
  _require(all(0 < a < total for a in at) and all(a < b for a, b in zip(at, at[1:])),
           f'growth.seq_at_tokens={",".join(map(str, at))} must increase strictly within '
           f'(0, {total}) = (0, train.steps x train.batch_size x data.seq_len)')
  _require(not g.rope_theta or len(g.rope_theta) == len(lens),
           f'growth.rope_theta has {len(g.rope_theta)} entries; it needs one per length in '
           f'growth.seq_lens ({len(lens)}), or none to keep model.rope_theta')
  _require(all(x > 0 for x in g.rope_theta),
           f'growth.rope_theta={",".join(map(str, g.rope_theta))} must be > 0')
  _require(not g.rope_theta or g.rope_theta[-1] == cfg.model.rope_theta,
           f'growth.rope_theta ends with {g.rope_theta[-1]:g}, but the final model\'s '
           f'model.rope_theta={cfg.model.rope_theta:g}: set model.rope_theta='
           f'{g.rope_theta[-1]:g} (model is the final model)' if g.rope_theta else '')
  _require(g.method == 'none',
           f'growth.seq_lens with growth.method={g.method!r}: context growth and model growth '
           'in one run are not supported; grow the model first (or from a checkpoint with '
           'launch.py grow) and the context in a run of its own')
