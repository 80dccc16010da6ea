"""Coordinate check (muP, Tensor Programs V; notes section 3).

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
last step is within +-SLOPE_TOLERANCE (see there for why that value). The slope at
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
import json
import math
import pathlib

import jax
import numpy as np

from jaxlab.config_types import Config, ConfigError
from jaxlab.config import apply_overrides

SUBLAYERS = ('embed', 'attn', 'mlp', 'block', 'final_norm', 'logits')
PER_LAYER = ('attn', 'mlp', 'block')
# Why 0.2, measured on experiments/tiny.py (adamw, lr 1e-2, 5 steps, 3 seeds, widths
# 64..512): SP's slopes at the last step are attn +1.06, mlp +1.88, block +1.78, logits
# +0.39 (Adam's per-entry steps add up coherently over fan_in ~ w entries); muP's are all
# within 0.12 of 0 (finite-width drift, mostly from 64 to 128), embed and final_norm ~0
# under both. 0.2 sits ~1.7x above muP's largest and ~2x below SP's smallest (the
# logits). Below ~128 muP is not yet asymptotic at tiny's 2 heads and 128-token batch
# (over 32, 64, 128 its MLP slope measured +0.4): check widths from ~128 up.
SLOPE_TOLERANCE = 0.2
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
    return apply_overrides(base, overrides)
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
  from jaxlab.parallel import activation_rules
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
  from jaxlab import data as data_lib
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
  from jaxlab.parallel import make_mesh
  from jaxlab.train import state as state_lib
  from jaxlab.train.program import build_program
  batches = {} if batches is None else batches
  mesh = make_mesh(cfg.mesh)
  program = build_program(cfg, mesh)
  measure = make_measure(program)
  # Program.init_state's own initialiser (state.init_state), jitted once for all seeds
  # (init_state would compile it again for each seed).
  init = jax.jit(functools.partial(state_lib._init, program.model, program.tx,
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


# ------------------------------------------------------------------------------ slopes

def _series(values: dict) -> dict[str, np.ndarray]:
  """{row name: array (widths, seeds, steps + 1)}: layer-averaged rows, then per layer."""
  rows = {}
  for k in SUBLAYERS:
    v = values[k]
    rows[k] = v.mean(axis=-1) if k in PER_LAYER else v
  for k in PER_LAYER:
    for layer in range(values[k].shape[-1]):
      rows[f'{k}.{layer}'] = values[k][..., layer]
  return rows


def fit_slope(widths, ys) -> float:
  """Least-squares slope of log(y) vs log(width); nan if any y is not > 0 and finite."""
  ys = np.asarray(ys, np.float64)
  if not np.all(np.isfinite(ys)) or np.any(ys <= 0):
    return math.nan
  return float(np.polyfit(np.log(np.asarray(widths, np.float64)), np.log(ys), 1)[0])


def slope_rows(result: dict) -> list[dict]:
  """Per row: mean |x| per width at the last step (seed mean), the slope at init and at
  the last step, and pass (|slope at the last step| <= tolerance)."""
  widths, tol = result['widths'], result['tolerance']
  rows = []
  for name, v_WxSxT in _series(result['values']).items():
    mean_WxT = v_WxSxT.mean(axis=1)
    last = fit_slope(widths, mean_WxT[:, -1])
    rows.append({'sublayer': name, 'last_step': [float(x) for x in mean_WxT[:, -1]],
                 'slope_init': fit_slope(widths, mean_WxT[:, 0]), 'slope': last,
                 'pass': bool(abs(last) <= tol)})   # nan fails
  return rows


# ------------------------------------------------------------------------------ outputs

def _fmt(x: float, spec: str) -> str:
  return 'n/a' if not math.isfinite(x) else format(x, spec)


def render_table(result: dict, per_layer: bool = True) -> str:
  widths, steps = result['widths'], result['steps']
  head = (['sublayer'] + [f'w={w}' for w in widths] +
          ['slope t=0', f'slope t={steps}', 'result'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in result['rows']:
    if not per_layer and '.' in row['sublayer']:
      continue
    cells = ([row['sublayer']] + [_fmt(x, '.3g') for x in row['last_step']] +
             [_fmt(row['slope_init'], '+.3f'), _fmt(row['slope'], '+.3f'),
              'pass' if row['pass'] else 'FAIL'])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def render_markdown(result: dict) -> str:
  r = result
  n_pass = sum(row['pass'] for row in r['rows'] if '.' not in row['sublayer'])
  return '\n'.join([
      f"# Coordinate check: {r['experiment']}, parametrization {r['parametrization']}", '',
      f"Widths {', '.join(map(str, r['widths']))} (base_d_model {r['base_d_model']}); "
      f"{r['optimizer']} at constant lr {r['lr']:g}, {r['steps']} steps, {r['seeds']} seeds.",
      'Columns w=...: mean |x| over all entries at the last step (mean over seeds; attn, '
      'mlp, block averaged over layers, per layer in the rows .0, .1, ...). Slopes: least '
      'squares of log(mean |x|) on log(width).',
      f"A sublayer passes when |slope at t={r['steps']}| <= {r['tolerance']}: flat in width "
      'as muP predicts; SP grows with width after the first update.', '',
      render_table(r), '',
      f"{n_pass} of {len(SUBLAYERS)} sublayers pass.", '', '![coordcheck](coordcheck.png)', ''])


def plot(result: dict):
  """One panel per sublayer: mean |x| vs width (log-log), a line per step t, the mean
  over seeds with min / max bars. Returns a Figure on an Agg canvas."""
  import matplotlib
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  widths, steps = np.asarray(result['widths']), result['steps']
  series = _series(result['values'])
  cols = 3
  rows = math.ceil(len(SUBLAYERS) / cols)
  fig = Figure(figsize=(4 * cols, 3.3 * rows), dpi=110)
  FigureCanvasAgg(fig)
  cmap = matplotlib.colormaps['viridis']
  slopes = {row['sublayer']: row for row in result['rows']}
  for i, name in enumerate(SUBLAYERS):
    ax = fig.add_subplot(rows, cols, i + 1)
    v_WxSxT = series[name]
    for t in range(steps + 1):
      ys, lo, hi = v_WxSxT[:, :, t].mean(1), v_WxSxT[:, :, t].min(1), v_WxSxT[:, :, t].max(1)
      ax.errorbar(widths, ys, yerr=[ys - lo, hi - ys], marker='o', ms=3, capsize=2,
                  color=cmap(t / max(steps, 1)), label=f't={t}')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log', nonpositive='mask')
    ax.set_xticks(widths, [str(w) for w in widths])
    row = slopes[name]
    ax.set_title(f"{name}: slope {_fmt(row['slope'], '+.2f')} "
                 f"({'pass' if row['pass'] else 'FAIL'})", fontsize=10)
    ax.set_xlabel('width (d_model)')
    ax.set_ylabel('mean |x|')
    if i == 0:
      ax.legend(fontsize=7)
  fig.suptitle(f"coordinate check: {result['experiment']}, {result['parametrization']}, "
               f"lr {result['lr']:g}")
  fig.tight_layout()
  return fig


def _finite_or_none(obj):
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite_or_none(v) for v in obj]
  return obj


def to_json(result: dict) -> dict:
  """The result as strict JSON (non-finite numbers, e.g. a nan slope, become null)."""
  out = {k: v for k, v in result.items() if k != 'values'}
  out['values'] = {k: np.asarray(v).tolist() for k, v in result['values'].items()}
  out['values_layout'] = ('values[sublayer][width][seed][step t = 0..steps][layer '
                          '(attn, mlp, block only)]; loss[width][seed][step 1..steps]')
  return _finite_or_none(out)


def write_outputs(result: dict, out_dir) -> pathlib.Path:
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / 'coordcheck.json').write_text(json.dumps(to_json(result), indent=1) + '\n')
  (out_dir / 'coordcheck.md').write_text(render_markdown(result))
  plot(result).savefig(out_dir / 'coordcheck.png')
  return out_dir
