"""Compute saved against a baseline run: the table and plot of growth studies.

For each run: the training FLOPs at which its validation loss first reaches the
baseline's final validation loss, linearly interpolated between the two evaluations
that bracket it (None when it never gets there). Near the end of a decaying schedule
the val curve is flat and evaluations fluctuate by about as much as the effects being
measured, so a single dip would decide the crossing: every curve (the baseline's too)
is first smoothed by a centred moving average over `smooth` evaluations (3 by default;
fewer at the ends), and the same rule gives the baseline's own F_baseline. Then

  saving  = 1 - F_run / F_baseline        (share of the baseline's compute saved)
  speedup = F_baseline / F_run - 1        (the paper's "54.6% speedup" convention:
                                           300B / 194B tokens - 1)

F_baseline is where the baseline itself first reaches its final val loss (normally its
last evaluation). Growth events (metrics.jsonl {"event": ...} lines) are marked on the
val-loss-vs-FLOPs plot.
"""
from __future__ import annotations

import math

from jaxlab.plotting import styles
from jaxlab.run_data import Run


TAIL = 3   # evaluations averaged for the end-of-run comparison at equal FLOPs


def smoothed(ys: list[float], window: int) -> list[float]:
  """Centred moving average over `window` points (odd), truncated at the ends; non-finite
  values are left out of each mean."""
  half = window // 2
  out = []
  for i in range(len(ys)):
    part = [y for y in ys[max(0, i - half):i + half + 1] if math.isfinite(y)]
    out.append(sum(part) / len(part) if part else math.nan)
  return out


def val_curve(run: Run, smooth: int = 3) -> tuple[list[float], list[float]]:
  """(FLOPs, smoothed val loss) at the run's evaluations."""
  xs, ys = run.series('val_loss', 'flops')
  return xs, smoothed(ys, smooth)


def flops_to_reach(run: Run, target: float, smooth: int = 1) -> float | None:
  """First FLOPs at which the run's val loss (smoothed over `smooth` evaluations) is
  <= target, interpolated between evaluations; None if it never is."""
  xs, ys = val_curve(run, smooth)
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


def _final(ys: list[float]) -> float | None:
  return next((y for y in reversed(ys) if math.isfinite(y)), None)


def _tail_mean(ys: list[float], n: int = TAIL) -> float | None:
  finite = [y for y in ys if math.isfinite(y)][-n:]
  return sum(finite) / len(finite) if finite else None


def savings_rows(runs: list[Run], baseline: str, smooth: int = 3) -> tuple[list[dict], float]:
  """(one row per run, the target val loss = the baseline's smoothed final val loss)."""
  base = next((r for r in runs if r.label == baseline), None)
  if base is None:
    raise ValueError(f'baseline run {baseline!r} not found; runs: '
                     f'{", ".join(r.label for r in runs)}')
  target = _final(val_curve(base, smooth)[1])
  if target is None:
    raise ValueError(f'baseline run {baseline!r} logged no finite val_loss')
  f_base = flops_to_reach(base, target, smooth)
  base_tail = _tail_mean(base.series('val_loss', 'flops')[1])
  rows = []
  for run in runs:
    _, ys = run.series('val_loss', 'flops')
    xs, _ = run.series('loss', 'flops')
    f = flops_to_reach(run, target, smooth)
    grow = next((e for e in run.events if e.get('event') in ('grow', 'coalesce')), None)
    tail = _tail_mean(ys)
    rows.append({
        'run': run.label,
        'final_val_loss': _final(ys),
        'tail_val_loss': tail,
        'delta_tail_val_loss': None if tail is None or base_tail is None else tail - base_tail,
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

  def num(v, fmt):
    return '—' if v is None else format(v, fmt)

  lines = [f'## FLOPs to reach the baseline\'s final val loss ({baseline}: {target:.4f}, '
           'smoothed)', '',
           f'| run | final val loss | mean of last {TAIL} evals | Δ vs baseline | FLOPs (total) '
           '| growth at FLOPs | FLOPs to reach target | saving | speedup |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['run']} | {num(r['final_val_loss'], '.4f')} | "
                 f"{num(r['tail_val_loss'], '.4f')} | "
                 f"{num(r['delta_tail_val_loss'], '+.4f')} | {sci(r['flops'])} | "
                 f"{sci(r['growth_at_flops'])} | {sci(r['flops_to_target'])} | "
                 f"{pct(r['saving'])} | {pct(r['speedup'])} |")
  lines += ['', 'Val curves smoothed by a centred 3-evaluation mean before the crossing '
            '(jaxlab/savings.py). saving = 1 - F / F_baseline; speedup = F_baseline / F - 1 '
            '(the paper\'s convention, 54.6% at 7B); "—": never reached the target. '
            f'Δ: mean of the last {TAIL} val losses minus the baseline\'s, at (nearly) equal '
            'FLOPs.', '']
  return '\n'.join(lines)


def plot_val_vs_flops(runs: list[Run], target: float | None = None):
  """Val loss vs training FLOPs (log x), one curve per run; growth events marked."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(8, 5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  finite = []
  for run, (color, ls) in zip(runs, styles(len(runs))):
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
