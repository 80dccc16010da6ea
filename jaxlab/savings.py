"""Compute saved against a baseline run: the table and plot of growth studies.

For each run: the training FLOPs at which its validation loss first reaches the
baseline's final validation loss, linearly interpolated between the two evaluations
that bracket it (None when it never gets there). Then

  saving  = 1 - F_run / F_baseline        (share of the baseline's compute saved)
  speedup = F_baseline / F_run - 1        (the paper's "54.6% speedup" convention:
                                           300B / 194B tokens - 1)

F_baseline is where the baseline itself first reaches its final val loss (normally its
last evaluation). Growth events (metrics.jsonl {"event": ...} lines) are marked on the
val-loss-vs-FLOPs plot.
"""
from __future__ import annotations

import math

from jaxlab.report import Run, _styles


def flops_to_reach(run: Run, target: float) -> float | None:
  """First FLOPs at which the run's val loss is <= target (interpolated), or None."""
  xs, ys = run.series('val_loss', 'flops')
  prev = None
  for x, y in zip(xs, ys):
    if math.isfinite(y) and y <= target:
      if prev is None or prev[1] == y:
        return x
      (x0, y0) = prev
      return x0 + (x - x0) * (y0 - target) / (y0 - y)
    if math.isfinite(y):
      prev = (x, y)
  return None


def savings_rows(runs: list[Run], baseline: str) -> list[dict]:
  base = next((r for r in runs if r.label == baseline), None)
  if base is None:
    raise ValueError(f'baseline run {baseline!r} not found; runs: '
                     f'{", ".join(r.label for r in runs)}')
  _, vy = base.series('val_loss', 'flops')
  finite = [y for y in vy if math.isfinite(y)]
  if not finite:
    raise ValueError(f'baseline run {baseline!r} logged no finite val_loss')
  target = finite[-1]
  f_base = flops_to_reach(base, target)
  rows = []
  for run in runs:
    _, ys = run.series('val_loss', 'flops')
    xs, _ = run.series('loss', 'flops')
    f = flops_to_reach(run, target)
    grow = next((e for e in run.events if e.get('event') in ('grow', 'coalesce')), None)
    rows.append({
        'run': run.label,
        'final_val_loss': next((y for y in reversed(ys) if math.isfinite(y)), None),
        'flops': xs[-1] if xs else None,
        'growth_at_flops': grow.get('flops') if grow else None,
        'flops_to_target': f,
        'saving': None if f is None else 1.0 - f / f_base,
        'speedup': None if f is None else f_base / f - 1.0,
    })
  return rows, target


def render_savings(rows: list[dict], baseline: str, target: float) -> str:
  def pct(v):
    return '—' if v is None else f'{100 * v:+.1f}%'

  def sci(v):
    return '—' if v is None else f'{v:.3g}'

  lines = [f'## FLOPs to reach the baseline\'s final val loss ({baseline}: {target:.4f})', '',
           '| run | final val loss | FLOPs (total) | growth at FLOPs | FLOPs to reach target '
           '| saving | speedup |', '|---|---|---|---|---|---|---|']
  for r in rows:
    val = '—' if r['final_val_loss'] is None else f"{r['final_val_loss']:.4f}"
    lines.append(f"| {r['run']} | {val} | {sci(r['flops'])} | {sci(r['growth_at_flops'])} | "
                 f"{sci(r['flops_to_target'])} | {pct(r['saving'])} | {pct(r['speedup'])} |")
  lines += ['', 'saving = 1 - F / F_baseline; speedup = F_baseline / F - 1 (the paper\'s '
            'convention, 54.6% at 7B); "—": never reached the target.', '']
  return '\n'.join(lines)


def plot_val_vs_flops(runs: list[Run], target: float | None = None):
  """Val loss vs training FLOPs (log x), one curve per run; growth events marked."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(8, 5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  finite = []
  for run, (color, ls) in zip(runs, _styles(len(runs))):
    xs, ys = run.series('val_loss', 'flops')
    kept = [(x, y) for x, y in zip(xs, ys) if x > 0]
    if not kept:
      continue
    ax.plot([x for x, _ in kept], [y for _, y in kept], color=color, ls=ls, lw=1.3,
            marker='o', ms=2.5, label=run.label)
    finite += [y for _, y in kept if math.isfinite(y)]
    for e in run.events:
      if e.get('flops'):
        ax.axvline(e['flops'], color=color, ls=':', lw=0.8, alpha=0.7)
  if target is not None:
    ax.axhline(target, color='0.3', ls='--', lw=0.8, label='baseline final val loss')
  if finite:
    lo = min(finite)
    hi = min(max(finite), lo + 1.5)
    ax.set_ylim(lo - 0.03 * (hi - lo), hi)
  ax.set_xscale('log')
  ax.set_xlabel('training FLOPs (cumulative, small model included)')
  ax.set_ylabel('validation loss')
  ax.set_title('Validation loss vs FLOPs (dotted: growth events)', fontsize='medium')
  ax.grid(True, which='major', alpha=0.3)
  ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False,
            fontsize='small')
  return fig
