"""The muP coordinate check's analysis and outputs (`launch.py coordcheck` measures:
jaxlab.launch.coordcheck): the slope of log mean |x| against log width per sublayer,
pass / fail, and the table, coordcheck.md, coordcheck.json and coordcheck.png."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np

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
