"""Weight diagnostics for the optimizer study (AdamP vs AdamW, notes §6).

In the step (jitted, when train.weight_stats is on): the mean, over the matrices that
read an RMSNorm output (the parameter schema's `norm_input`, each layer's slice on its
own), of the weight norm |w| and of the effective step |w_new - w| / |w|. In the report:
those plus AdamP / SGDP's projection-fired fraction against step, and a table per run.
"""
from __future__ import annotations

import math
import statistics

import jax.numpy as jnp

from jaxlab.config_types import ModelConfig
from jaxlab.models import schema

KEYS = {'prenorm_w_norm': 'mean |w| of norm-preceded matrices',
        'prenorm_eff_step': 'effective step |dw| / |w|',
        'proj_fired': 'AdamP / SGDP: share of params projected'}


def weight_stats(old_params, new_params, cfg: ModelConfig) -> dict:
  """{'prenorm_w_norm', 'prenorm_eff_step'} (jnp scalars) over the norm-fed matrices of
  Transformer(cfg); {} if the model has none."""
  norms, steps = [], []

  def one(param, old, new):
    if not (param.norm_input and param.is_matrix):
      return
    axes = tuple(range(1, old.ndim)) if param.stacked else None
    w_norm = jnp.sqrt(jnp.sum(old * old, axis=axes))
    norms.append(jnp.ravel(jnp.sqrt(jnp.sum(new * new, axis=axes))))
    steps.append(jnp.ravel(jnp.sqrt(jnp.sum((new - old) ** 2, axis=axes)) / w_norm))

  schema.map_params(one, old_params, cfg, new_params)
  if not norms:
    return {}
  return {'prenorm_w_norm': jnp.mean(jnp.concatenate(norms)),
          'prenorm_eff_step': jnp.mean(jnp.concatenate(steps))}


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

  from jaxlab.plotting import styles
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
