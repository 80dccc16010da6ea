"""A run's growth plan: which model trains when, read from the config's growth section.

A run is a list of phases. Without growth there is one phase (the model). With a growth
method there are two: the source model from step 0, the target (`model`) from the
growth step on. A V-cycle (jaxlab.growth.multilevel.vcycle_schedule) goes down one
level per coalesce event (each level trains at_tokens first), trains the coarsest level
for small_tokens, then comes back up one level per interpolate event (de-coalesce, and
interpolate into that level's model as it was when it was coalesced); with
growth.levels = 1 that is: big, small, big again.

The growth step is the first step at which `at_tokens` training tokens have been seen
(rounded up to a whole step). The transition happens after that step's update and
before its checkpoint, so a checkpoint at step s holds the model of the phase that
contains s -- that is how a resumed run knows which model to restore.
"""
from __future__ import annotations

import dataclasses
import math

from jaxlab.config.types import Config, ConfigError, ModelConfig
from jaxlab.growth import multilevel
from jaxlab.growth.depth import METHODS as DEPTH_METHODS
from jaxlab.growth.timing import growth_timing
from jaxlab.models import schema
_WIDTH_FOR = {'zero': 'zero', 'random': 'random'}   # any other method widens by 'split'


@dataclasses.dataclass(frozen=True)
class Phase:
  start_step: int
  model: ModelConfig
  event: str | None      # None (first phase), 'grow', 'coalesce', 'interpolate' or 'context'
  level: int = 0         # V-cycle level (0: the model); levels above it are stashed
  seq_len: int = 0       # 0: data.seq_len; else this phase's length (context growth)

  def length(self, cfg: Config) -> int:
    """The sequence length this phase trains at."""
    return self.seq_len or cfg.data.seq_len

  def rows(self, cfg: Config) -> int:
    """Rows per global batch: train.batch_size x data.seq_len / length (tokens per step
    stay constant under context growth)."""
    return cfg.train.batch_size * cfg.data.seq_len // self.length(cfg)


def width_method_for(method: str) -> str:
  """The width operator that goes with a growth method ('split' unless zero / random)."""
  return _WIDTH_FOR.get(method, 'split')


def depth_method_for(method: str) -> str:
  """The depth operator that goes with a growth method ('stack' for width-only ones)."""
  return method if method in DEPTH_METHODS else 'stack'


def width_method(cfg: Config) -> str:
  g = cfg.growth
  return g.width_method if g.width_method != 'auto' else width_method_for(g.method)


def source_model(cfg: Config) -> ModelConfig:
  """The model trained before the growth event (the coarse model of a V-cycle)."""
  g, m = cfg.growth, cfg.model
  f = g.factor
  vcycle = g.method == 'vcycle'
  if g.n_layers:
    n_layers = g.n_layers
  elif g.method == 'layers':
    n_layers = max(g.layers) + 1
  elif g.method in DEPTH_METHODS or vcycle:
    if m.n_layers % f:
      raise ConfigError(f'growth.factor={f} does not divide model.n_layers={m.n_layers}: the '
                        'source model would not be 1/factor of the target; pick a factor that '
                        'divides it or set growth.n_layers')
    n_layers = m.n_layers // f
  else:
    n_layers = m.n_layers
  if g.layers and max(g.layers) >= n_layers:
    raise ConfigError(f'growth.layers refers to source layer {max(g.layers)}, but the source '
                      f'model has {n_layers} layers (growth.n_layers, else max index + 1 for '
                      "method 'layers', else model.n_layers / growth.factor)")
  if (g.method in DEPTH_METHODS or vcycle) and n_layers > m.n_layers:
    raise ConfigError(f'the source model would have {n_layers} layers, more than the target '
                      f'model.n_layers={m.n_layers}: growth only adds layers '
                      '(growth.layers / growth.n_layers)')

  def width(explicit: int, target: int, name: str) -> int:
    if explicit:
      return explicit
    if not vcycle:
      return target
    if target % f:
      raise ConfigError(f'growth.method=vcycle divides {name}={target} by growth.factor={f}; '
                        f'it is not divisible: set growth.{name.split(".")[-1]} explicitly')
    return target // f

  if n_layers < 1:
    raise ConfigError(f'the source model would have {n_layers} layers (model.n_layers='
                      f'{m.n_layers} / growth.factor={f}); lower growth.factor or set '
                      'growth.n_layers')
  d_model = width(g.d_model, m.d_model, 'model.d_model')
  n_heads = width(g.n_heads, m.n_heads, 'model.n_heads')
  n_kv = width(g.n_kv_heads, m.kv_heads, 'model.n_kv_heads')
  d_ff = width(g.d_ff, m.ff_dim, 'model.d_ff')
  same_width = (d_model, n_heads, n_kv, d_ff) == (m.d_model, m.n_heads, m.kv_heads, m.ff_dim)
  if same_width:
    return dataclasses.replace(m, n_layers=n_layers)
  # Width growth keeps the head dim (RoPE frequencies depend on it) and says every size.
  return dataclasses.replace(m, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                             n_kv_heads=n_kv, d_ff=d_ff, head_dim=m.dim_per_head)


def describe(m: ModelConfig) -> str:
  """Short model label for logs: d_model, layers, query/kv heads, MLP width."""
  return f'd{m.d_model} L{m.n_layers} H{m.n_heads}/{m.kv_heads} F{m.ff_dim}'


def tokens_per_step(cfg: Config) -> int:
  return cfg.train.batch_size * cfg.data.seq_len


def growth_tokens(cfg: Config, n_target_params: int) -> int:
  """Tokens before the growth event: growth.at_tokens, or the paper's fitted rule."""
  g = cfg.growth
  if g.timing == 'tokens':
    return g.at_tokens
  total = cfg.train.steps * tokens_per_step(cfg)
  d = growth_timing(n_target_params, 6.0 * n_target_params * total)
  if d >= total:
    raise ConfigError(
        f'growth.timing=auto: the fitted rule (Du et al. 2024) gives {d:.3g} tokens before '
        f'growth for N={n_target_params:,} params and D={total:,} tokens, more than the run '
        'itself; the rule was fitted at 410M-7B params and does not extrapolate this far '
        'down. Set growth.at_tokens instead')
  return int(d)


def _step_at(tokens: int, cfg: Config, what: str) -> int:
  step = math.ceil(tokens / tokens_per_step(cfg))
  if not 1 <= step < cfg.train.steps:
    raise ConfigError(f'{what} falls at step {step}; it must be in [1, train.steps='
                      f'{cfg.train.steps})')
  return step


def n_params(model: ModelConfig) -> int:
  """Parameter count of a model config (from the parameter schema; nothing allocated)."""
  return schema.count(model)


def phases(cfg: Config) -> list[Phase]:
  """The run's phases in order."""
  g = cfg.growth
  if g.seq_lens:
    return _context_phases(cfg)
  if g.method == 'none':
    return [Phase(0, cfg.model, None)]
  small = source_model(cfg)
  n_target = n_params(cfg.model) if g.timing == 'auto' else 0
  at = _step_at(growth_tokens(cfg, n_target), cfg, 'the growth point')
  if g.method != 'vcycle':
    if small == cfg.model:
      raise ConfigError(f'growth.method={g.method!r}: the source model equals the target '
                        '(set growth.factor, growth.n_layers or growth.d_model ...)')
    return [Phase(0, small, None), Phase(at, cfg.model, 'grow')]
  return _vcycle_phases(cfg, small, at)


def _context_phases(cfg: Config) -> list[Phase]:
  """Context-length growth: phase k trains growth.seq_lens[k] with RoPE base
  growth.rope_theta[k]; the params and optimizer carry over unchanged ('context' events)."""
  g = cfg.growth
  thetas = g.rope_theta or (cfg.model.rope_theta,) * len(g.seq_lens)
  starts = [0] + [_step_at(t, cfg, f'growth.seq_at_tokens={t}') for t in g.seq_at_tokens]
  if any(a >= b for a, b in zip(starts, starts[1:])):
    raise ConfigError(f'growth.seq_at_tokens={",".join(map(str, g.seq_at_tokens))} puts two '
                      f'length changes at the same step (steps {starts[1:]}); space them '
                      f'at least one step of {tokens_per_step(cfg)} tokens apart')
  return [Phase(s, dataclasses.replace(cfg.model, rope_theta=float(th)),
                None if k == 0 else 'context', seq_len=n)
          for k, (s, n, th) in enumerate(zip(starts, g.seq_lens, thetas))]


def _vcycle_phases(cfg: Config, small: ModelConfig, at: int) -> list[Phase]:
  g = cfg.growth
  models = [cfg.model, small]
  for level in range(2, g.levels + 1):
    try:
      models.append(multilevel.coarsen(models[-1], width=g.factor, depth=g.factor))
    except ValueError as err:
      raise ConfigError(f'growth.levels={g.levels}: level {level} cannot be made by dividing '
                        f'by growth.factor={g.factor}: {err}') from None
  small_steps = math.ceil(g.small_tokens / tokens_per_step(cfg))
  try:
    schedule = multilevel.vcycle_schedule(cfg.train.steps, big_steps_before=at,
                                          small_steps=small_steps, levels=g.levels)
  except ValueError as err:
    raise ConfigError(f'growth.method=vcycle (growth.at_tokens, growth.small_tokens, '
                      f'growth.levels) does not fit in train.steps: {err}') from None
  out = [Phase(0, cfg.model, None, 0)]
  for p in schedule:
    if p.event != 'train':
      out.append(Phase(p.step, models[p.level], p.event, p.level))
  if out[-1].start_step >= cfg.train.steps:
    raise ConfigError(f'the V-cycle ends at step {out[-1].start_step}; it must end before '
                      f'train.steps={cfg.train.steps}')
  return out


def phase_index(plan: list[Phase], step: int) -> int:
  """Index of the phase that holds the state after `step` steps."""
  return max(i for i, p in enumerate(plan) if p.start_step <= step)
