"""`launch.py coordcheck`: the muP coordinate check (Tensor Programs V; docs/scaling_rules.md).

For widths w1 < ... < wk, each width's model and optimizer are built exactly as
training builds them (jaxlab.train.program.build_program; the run's own train_step),
trained for a few steps at a large constant lr, and after every step (and at init,
t = 0) the mean |x| over all entries of every sublayer output is measured on a fixed
batch (the seed's first training batch) with a separate forward pass
(flax capture_intermediates):

  embed       the token embedding output (times its multiplier)
  attn        each layer's attention output, before the residual add
  mlp         each layer's MLP output, before the residual add
  block       the residual stream after each block
  final_norm  the final RMSNorm's output
  logits      the model's output (after the readout multiplier)

attn / mlp / block are averaged over layers for the grid and the pass / fail (rows
'attn.0', 'attn.1', ... hold each layer). Under muP the curves are flat in width;
under SP they grow with width after the first update. A sublayer passes when the
least-squares slope of log(mean over seeds of mean |x|) against log(width) at the
last step is within +-SLOPE_TOLERANCE (jaxlab.report.coordcheck says why that value). The slope at
init is reported too: under muP the logits start at ~m^-1/2 (slope -0.5: MuReadout's
constant-in-width init times the 1/m multiplier; -1 with model.readout_init=fan_in, none
with zero) and are flat once training dominates.

Width w's config is the experiment's with model.d_model=w, the chosen
parametrization, model.base_d_model = the experiment's (if set) else the smallest
width; n_heads stays fixed (the head dim scales) unless model.head_dim is set (then
n_heads = w / head_dim, and n_kv_heads keeps its ratio); model.d_ff, if set, keeps
its ratio to d_model. Constant lr (no warmup), no growth. Seed i (0-based) sets
train.seed and data.seed to the experiment's + i; one Program per width is reused for
every seed (only the init key changes), so optimizer gradient noise, if any, uses the
first seed's key.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import numpy as np

from jaxlab import config as config_lib
from jaxlab import data as data_lib
from jaxlab.config import apply_overrides
from jaxlab.config.types import Config, ConfigError
from jaxlab.report.coordcheck import (SLOPE_TOLERANCE, SUBLAYERS, render_table, slope_rows,
                                      write_outputs)
from jaxlab.parallel import activation_rules, make_mesh
from jaxlab.train import state as state_lib
from jaxlab.train.program import build_program
from jaxlab.train.runnable import resolve

DEFAULT_LR = 1e-2


# ------------------------------------------------------------------------------ configs

def parse_widths(text: str) -> tuple[int, ...]:
  """'64,128,256' -> (64, 128, 256), sorted and distinct; ConfigError naming --widths."""
  widths = []
  for item in (t.strip() for t in str(text).split(',')):
    if not item:
      continue
    try:
      w = int(item)
    except ValueError:
      raise ConfigError(f'--widths {text!r}: {item!r} is not an integer; expected a '
                        'comma-separated list of widths such as 64,128,256,512') from None
    if w < 1:
      raise ConfigError(f'--widths {text!r}: {w} must be >= 1')
    widths.append(w)
  widths = sorted(set(widths))
  if len(widths) < 2:
    raise ConfigError(f'--widths {text!r}: needs at least 2 distinct widths to fit a slope, '
                      'e.g. 64,128,256,512')
  return tuple(widths)


def width_config(base: Config, width: int, parametrization: str, base_width: int,
                 lr: float, steps: int) -> Config:
  """The experiment's config at d_model=width, set up for the coordinate check."""
  m = base.model
  overrides = [f'model.d_model={width}', f'model.parametrization={parametrization}',
               f'model.base_d_model={base_width}', 'optim.schedule=constant',
               'optim.warmup_steps=0', f'optim.lr={lr}', f'train.steps={steps}',
               'growth.method=none']
  if m.head_dim:
    if width % m.head_dim:
      raise ConfigError(f'--widths: {width} is not divisible by model.head_dim={m.head_dim} '
                        '(with head_dim set, the number of heads scales with width)')
    n_heads = width // m.head_dim
    kv_ratio = m.n_heads // m.kv_heads
    if n_heads % kv_ratio:
      raise ConfigError(f'--widths: {width} gives {n_heads} heads, not a multiple of '
                        f'model.n_heads / model.n_kv_heads = {kv_ratio}')
    overrides += [f'model.n_heads={n_heads}',
                  f'model.n_kv_heads={n_heads // kv_ratio if m.n_kv_heads else 0}']
  elif width % m.n_heads:
    raise ConfigError(f'--widths: {width} is not divisible by model.n_heads={m.n_heads} '
                      '(the head dim scales with width); pick multiples of it or set '
                      'model.head_dim')
  if m.d_ff:
    d_ff = m.d_ff * width / m.d_model
    if not d_ff.is_integer():
      raise ConfigError(f'--widths: {width} x model.d_ff / model.d_model = {m.d_ff} x {width} / '
                        f'{m.d_model} is not an integer (d_ff keeps its ratio to d_model)')
    overrides.append(f'model.d_ff={int(d_ff)}')
  try:
    return resolve(apply_overrides(base, overrides))
  except ConfigError as err:
    raise ConfigError(f'--widths: width {width}: {err}') from None


def width_configs(base: Config, widths, parametrization: str | None = None,
                  lr: float = DEFAULT_LR, steps: int = 5) -> list[Config]:
  """One validated config per width (all checked before anything is compiled)."""
  parametrization = parametrization or base.model.parametrization
  if not lr > 0:
    raise ConfigError(f'--lr {lr} must be > 0')
  if steps < 1:
    raise ConfigError(f'--steps {steps} must be >= 1')
  base_width = base.model.base_d_model or min(widths)
  return [width_config(base, w, parametrization, base_width, lr, steps) for w in widths]


# ------------------------------------------------------------------------------ measuring

def _capture(module, method_name: str) -> bool:
  return method_name == '__call__' and module.name in ('embed', 'attn', 'mlp', 'layers',
                                                       'final_norm')


def _mean_abs(x, per_layer: bool):
  axes = tuple(range(1 if per_layer else 0, x.ndim))
  return abs(x.astype(np.float32)).mean(axis=axes)


def make_measure(program):
  """Jitted (params, batch) -> {sublayer: mean |x|}: a scalar, or (L,) per layer."""
  model, mesh = program.model, program.batch_sharding.mesh

  def measure(params, batch):
    tokens_BxT, segment_ids_BxT = batch['tokens'][:, :-1], batch['segment_ids'][:, :-1]
    with activation_rules(mesh):
      logits_BxTxV, state = model.apply({'params': params}, tokens_BxT, segment_ids_BxT,
                                        capture_intermediates=_capture,
                                        mutable=['intermediates'])
    acts = state['intermediates']
    return {'embed': _mean_abs(acts['embed']['__call__'][0], False),
            'attn': _mean_abs(acts['layers']['attn']['__call__'][0], True),
            'mlp': _mean_abs(acts['layers']['mlp']['__call__'][0], True),
            'block': _mean_abs(acts['layers']['__call__'][0][0], True),
            'final_norm': _mean_abs(acts['final_norm']['__call__'][0], False),
            'logits': _mean_abs(logits_BxTxV, False)}

  return jax.jit(measure)


def _seed_batches(cfg: Config, n: int) -> list[dict]:
  try:   # the data pipeline's errors name the config key at fault
    tokenizer = data_lib.make_tokenizer(cfg.data)
    iterator = data_lib.make_train_iterator(cfg.data, tokenizer, batch_size=cfg.train.batch_size)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if tokenizer.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f'model.vocab_size={cfg.model.vocab_size} is smaller than the '
                      f"tokenizer's vocabulary ({tokenizer.vocab_size}, data.tokenizer="
                      f'{cfg.data.tokenizer!r})')
  return [next(iterator) for _ in range(n)]


def _seeded(cfg: Config, i: int) -> Config:
  return dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + i),
      data=dataclasses.replace(cfg.data, seed=cfg.data.seed + i))


def measure_width(cfg: Config, n_seeds: int, batches: dict | None = None) -> dict:
  """{sublayer: array (seeds, steps + 1[, layers])} of mean |x|, plus 'loss' (seeds, steps).
  `batches` caches {seed index: training batches} across widths (the data does not
  depend on the width)."""
  batches = {} if batches is None else batches
  mesh = make_mesh(cfg.mesh)
  program = build_program(cfg, mesh)
  measure = make_measure(program)
  # Program.init_state's own initialiser (state.init_state), jitted once for all seeds
  # (init_state would compile it again for each seed).
  init = jax.jit(functools.partial(state_lib.fresh_state, program.model, program.tx,
                                   cfg.data.seq_len, boxed=False),
                 out_shardings=program.shardings)
  steps = cfg.train.steps
  out = {k: [] for k in SUBLAYERS + ('loss',)}
  for i in range(n_seeds):
    seeded = _seeded(cfg, i)
    if i not in batches:
      batches[i] = _seed_batches(seeded, steps)
    host = batches[i]
    device = [jax.device_put(b, program.batch_sharding) for b in host]
    state = init(jax.random.key(seeded.train.seed))
    trace, losses = [measure(state.params, device[0])], []
    for t in range(steps):
      state, metrics = program.train_step(state, device[t])
      trace.append(measure(state.params, device[0]))
      losses.append(metrics['loss'])
    trace, losses = jax.device_get((trace, losses))
    for k in SUBLAYERS:
      out[k].append(np.stack([np.asarray(m[k], np.float64) for m in trace]))
    out['loss'].append(np.asarray(losses, np.float64))
  return {k: np.stack(v) for k, v in out.items()}


def run(base: Config, widths, parametrization: str | None = None, n_seeds: int = 3,
        steps: int = 5, lr: float = DEFAULT_LR, log=None) -> dict:
  """The whole check; returns the raw numbers and the slope table (see `slope_rows`)."""
  if n_seeds < 1:
    raise ConfigError(f'--seeds {n_seeds} must be >= 1')
  widths = tuple(sorted(widths))
  cfgs = width_configs(base, widths, parametrization, lr, steps)
  batches: dict = {}
  per_width = []
  for w, cfg in zip(widths, cfgs):
    if log:
      log(f'width {w}: {n_seeds} seed(s) x {steps} step(s)')
    per_width.append(measure_width(cfg, n_seeds, batches))
  values = {k: np.stack([pw[k] for pw in per_width]) for k in per_width[0]}
  result = {'experiment': base.name, 'parametrization': cfgs[0].model.parametrization,
            'widths': list(widths), 'base_d_model': cfgs[0].model.base_d_model,
            'steps': steps, 'seeds': n_seeds, 'lr': lr, 'optimizer': base.optim.name,
            'tolerance': SLOPE_TOLERANCE, 'values': values}
  result['rows'] = slope_rows(result)
  return result


def main(args) -> int:
  """`launch.py coordcheck EXPERIMENT [key=value ...] [--widths ...]`."""
  widths = parse_widths(args.widths)
  if args.seeds < 1:
    raise ConfigError(f'--seeds {args.seeds} must be >= 1')
  cfg = config_lib.load(args.experiment, args.overrides)
  cfgs = width_configs(cfg, widths, args.parametrization, args.lr, args.steps)
  param = cfgs[0].model.parametrization
  out = pathlib.Path(args.out or
                     pathlib.Path(cfg.train.workdir) / f'coordcheck_{cfg.name}_{param}')
  result = run(cfg, widths, param, args.seeds, args.steps, args.lr,
               log=lambda line: print(line, flush=True))
  write_outputs(result, out)
  print(render_table(result, per_layer=False))
  n_pass = sum(row['pass'] for row in result['rows'] if '.' not in row['sublayer'])
  print(f'{n_pass} of {len(SUBLAYERS)} sublayers flat within '
        f'+-{SLOPE_TOLERANCE}; wrote {out}/coordcheck.{{png,md,json}}')
  return 0
