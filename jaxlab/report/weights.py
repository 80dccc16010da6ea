"""Weight diagnostics of the optimizer study (AdamP vs AdamW, docs/optimizers.md) in the
report: the weight norm and effective step of the norm-preceded matrices
(jaxlab.train.measure.weight_stats logs them) and AdamP / SGDP's projection-fired
fraction against step, and a table per run.
"""
from __future__ import annotations

import math
import statistics

from jaxlab.report.plots import styles
from jaxlab.rundir.records import WEIGHT_KEYS as KEYS


def has_stats(runs) -> bool:
  return any('prenorm_w_norm' in r for run in runs for r in run.metrics)


def summary_rows(runs) -> list[dict]:
  """Per run: weight norm at the first and last log, its growth, the mean effective
  step and projection share over the last fifth of the logs."""
  rows = []
  for run in runs:
    recs = [r for r in run.metrics if 'prenorm_w_norm' in r]
    if not recs:
      continue
    tail = recs[len(recs) - max(1, len(recs) // 5):]
    fired = [r['proj_fired'] for r in tail if r.get('proj_fired') is not None]
    rows.append({'run': run.label, 'w_norm_first': recs[0]['prenorm_w_norm'],
                 'w_norm_last': recs[-1]['prenorm_w_norm'],
                 'w_norm_growth': recs[-1]['prenorm_w_norm'] / recs[0]['prenorm_w_norm'],
                 'eff_step_late': statistics.fmean(r['prenorm_eff_step'] for r in tail),
                 'proj_fired_late': statistics.fmean(fired) if fired else None})
  return rows


def render(rows: list[dict]) -> str:
  def f(v, spec):
    return '—' if v is None else format(v, spec)
  lines = ['## Weight norms and effective steps', '',
           'Norm-preceded matrices (wq, wk, wv, w_gate, w_up, head), each layer on its own; '
           '"late" = mean over the last fifth of the logged steps.', '',
           '| run | mean \\|w\\| first | last | growth | effective step, late | '
           'projected share, late |', '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['run']} | {f(r['w_norm_first'], '.3g')} | {f(r['w_norm_last'], '.3g')} "
                 f"| {f(r['w_norm_growth'], '.3f')}x | {f(r['eff_step_late'], '.2e')} | "
                 f"{f(r['proj_fired_late'], '.3f')} |")
  return '\n'.join(lines) + '\n\n![weight diagnostics](weight_stats.png)\n'


def plot(runs):
  """One panel per KEYS entry present, against step; a Figure on an Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  keys = [k for k in KEYS if any(k in r for run in runs for r in run.metrics)]
  fig = Figure(figsize=(5 * len(keys), 4.2), dpi=110)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(keys), squeeze=False)[0]
  for ax, key in zip(axes, keys):
    for run, (color, ls) in zip(runs, styles(len(runs))):
      pts = [(r['step'], r[key]) for r in run.metrics
             if r.get(key) is not None and math.isfinite(r[key])]
      if pts:
        ax.plot(*zip(*pts), color=color, ls=ls, lw=1.2, label=run.label)
    if key == 'prenorm_eff_step':
      ax.set_yscale('log')
    ax.set_title(KEYS[key], fontsize='medium')
    ax.set_xlabel('step')
    ax.grid(True, alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()   # every run is in the first panel
  axes[-1].legend(handles, labels, loc='upper left', bbox_to_anchor=(1.02, 1.0), frameon=False,
                  fontsize='small' if len(runs) <= 12 else 'x-small')
  return fig
