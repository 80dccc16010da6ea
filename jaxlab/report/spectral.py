"""The spectral diagnostic in the report: sigma_max, the top singular value of every matrix
and layer, as the run logged it (jaxlab.train.measure.top_singular_values; keys
`sigma_max/<matrix>[/<layer>]`, jaxlab.rundir.records). Weight decay and width:
Fan et al., docs/scaling_rules.md.

In the report: spectral.png (sigma_max vs step, one panel per matrix type, one line per
layer) and a table of the final values. The hidden matrices (both dims scale with
width) are the ones under the layer stack: every per-layer matrix of the model is a
hidden one and no other is (tests/test_report.py checks this against the parameter
schema), so the key's layer index says it and no model is built here.
"""
from __future__ import annotations

import math

from jaxlab.report.plots import styles
from jaxlab.rundir.records import SIGMA_PREFIX, parse_sigma_key

# Panel order in the plot and table; names not listed follow, sorted.
ORDER = ('attn.wq', 'attn.wk', 'attn.wv', 'attn.wo', 'mlp.w_gate', 'mlp.w_up', 'mlp.w_down',
         'embed.embedding', 'head.kernel')


def _by_matrix(record: dict) -> dict[str, dict[int | None, float]]:
  """{matrix name: {layer (None outside the layers axis): sigma_max}} of one record."""
  out: dict[str, dict] = {}
  for key, value in record.items():
    parsed = parse_sigma_key(key)
    if parsed is not None and isinstance(value, (int, float)):
      out.setdefault(parsed[0], {})[parsed[1]] = float(value)
  return out


def _ordered(names) -> list[str]:
  names = set(names)
  return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def _records(run) -> list[dict]:
  return [r for r in run.metrics if any(k.startswith(SIGMA_PREFIX) for k in r)]


def final_hidden(run) -> dict[str, float]:
  """{metric key: sigma_max} of the hidden matrices (those under the layer stack) at the
  last step that logged them."""
  recs = _records(run)
  if not recs:
    return {}
  out = {}
  for key, value in recs[-1].items():
    parsed = parse_sigma_key(key)
    if parsed and parsed[1] is not None and isinstance(value, (int, float)):
      out[key] = float(value)
  return out


def has_stats(runs) -> bool:
  return any(_records(run) for run in runs)


def summary_rows(runs) -> list[dict]:
  """Per run with sigma keys: its last such step and {matrix: (mean, max) over layers}."""
  rows = []
  for run in runs:
    recs = _records(run)
    if recs:
      final = _by_matrix(recs[-1])
      rows.append({'run': run.label, 'step': recs[-1]['step'],
                   'sigma': {n: (sum(v.values()) / len(v), max(v.values()))
                             for n, v in final.items()}})
  return rows


def render(rows: list[dict]) -> str:
  names = _ordered(n for r in rows for n in r['sigma'])

  def cell(pair):
    if pair is None:
      return '—'
    mean, top = pair
    return f'{mean:.3g}' if mean == top else f'{mean:.3g} / {top:.3g}'
  lines = ['## Spectral norms', '',
           'Top singular value of each matrix at the last step that logged it: mean over '
           'layers / max over layers (one value outside the layer stack). Keys '
           '`sigma_max/<matrix>/<layer>` in metrics.jsonl.', '',
           '| run | step | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 2) + '|']
  for r in rows:
    lines.append(f"| {r['run']} | {r['step']} | "
                 + ' | '.join(cell(r['sigma'].get(n)) for n in names) + ' |')
  return '\n'.join(lines) + '\n\n![spectral norms](spectral.png)\n'


def plot(runs):
  """sigma_max vs step: one panel per matrix type, one line per layer. One run: a colour
  per layer (dark = first); several: a colour per run. A Figure on an Agg canvas."""
  import matplotlib
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.lines import Line2D

  series = []   # per run: {name: {layer: [(step, sigma)]}}
  for run in runs:
    per: dict[str, dict] = {}
    for r in _records(run):
      for name, layers in _by_matrix(r).items():
        for layer, value in layers.items():
          per.setdefault(name, {}).setdefault(layer, []).append((r['step'], value))
    series.append(per)
  names = _ordered(n for per in series for n in per)
  cols = min(5, len(names))
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(3.6 * cols + 1.5, 3.0 * rows), dpi=110, layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  single = len(runs) == 1
  cmap = matplotlib.colormaps['viridis']
  for ax, name in zip(axes, names):
    for per, (color, ls) in zip(series, styles(len(runs))):
      layers = per.get(name, {})
      n_layers = max((k for k in layers if k is not None), default=0) + 1
      for layer, pts in sorted(layers.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        c = cmap(0.9 * (layer or 0) / max(n_layers - 1, 1)) if single else color
        ax.plot(*zip(*pts), color=c, ls=ls, lw=1.1, alpha=1.0 if single else 0.7)
    ax.set_title(name, fontsize='medium')
    ax.set_xlabel('step')
    ax.grid(True, alpha=0.3)
  for ax in axes[len(names):]:
    ax.set_visible(False)
  axes[0].set_ylabel('top singular value')
  if single:
    handles = [Line2D([], [], color=cmap(0.0), label='first layer'),
               Line2D([], [], color=cmap(0.9), label='last layer')]
  else:
    handles = [Line2D([], [], color=c, ls=ls, label=run.label)
               for run, (c, ls) in zip(runs, styles(len(runs)))]
  axes[cols - 1].legend(handles=handles, loc='upper left', bbox_to_anchor=(1.02, 1.0),
                        frameon=False, fontsize='small' if len(handles) <= 12 else 'x-small')
  return fig
