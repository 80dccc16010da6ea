"""Compute saved against a baseline, over seeds: the table, headline and plot of growth
studies.

Runs are grouped into methods (`jaxlab.rundir.read.group_seeds`: `<method>/seed<k>` dirs
from `launch.py sweep --seeds N`; a run without a seed dir is a method with one run).
Seed k of a method and seed k of the baseline share their data order, so differences
are taken per seed (paired). Per method:

  final val loss       its last evaluation, mean ± CI over seeds
  tail val loss        the mean of its last TAIL evaluations (runs of a study end at the
                       same FLOPs), mean ± CI; Δ = paired difference against the baseline
  FLOPs to target      where the method's seed-mean val curve first reaches the target =
                       the baseline's seed-mean final val loss, linearly interpolated
                       between the two evaluations that bracket it (None: never)
  saving               1 - F_method / F_baseline (F_baseline: where the baseline's own mean
                       curve reaches its final value, normally its last evaluation)
  speedup              F_baseline / F_method - 1 (the paper's "54.6% speedup" convention:
                       300B / 194B tokens - 1)

Near the end of a decaying schedule the val curve is flat and evaluations fluctuate by
about as much as the effects being measured, so a single dip would decide the crossing:
every mean curve (the baseline's too) is first smoothed by a centred moving average over
`smooth` evaluations (3 by default; fewer at the ends). CIs (jaxlab.report.stats): t-intervals
for means and paired differences; the crossing and the saving by the paired bootstrap.
A difference or saving whose CI includes zero is "not resolved".
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxlab.report import stats
from jaxlab.report.plots import styles
from jaxlab.rundir.read import Run, aligned, group_seeds

TAIL = 3   # evaluations averaged for the end-of-run comparison at equal FLOPs
SMOOTH = 3


def smoothed(ys: list[float], window: int) -> list[float]:
  """Centred moving average over `window` points (odd), truncated at the ends; non-finite
  values are left out of each mean."""
  half = window // 2
  out = []
  for i in range(len(ys)):
    part = [y for y in ys[max(0, i - half):i + half + 1] if math.isfinite(y)]
    out.append(sum(part) / len(part) if part else math.nan)
  return out


def crossing(xs: list[float], ys: list[float], target: float) -> float | None:
  """First x at which ys <= target, interpolated between the bracketing points; None if
  it never is."""
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


def flops_to_reach(run: Run, target: float, smooth: int = 1) -> float | None:
  """First FLOPs at which one run's val loss (smoothed over `smooth` evaluations) is
  <= target, interpolated between evaluations; None if it never is."""
  xs, ys = run.series('val_loss', 'flops')
  return crossing(xs, smoothed(ys, smooth), target)


def _final(ys) -> float | None:
  return next((float(y) for y in reversed(ys) if math.isfinite(y)), None)


def _tail_mean(ys, n: int = TAIL) -> float | None:
  finite = [y for y in ys if math.isfinite(y)][-n:]
  return sum(finite) / len(finite) if finite else None


@dataclasses.dataclass
class Curves:
  """One method's val curves over its seeds, at their common evaluations."""
  label: str
  seeds: list                 # seed offsets (None for a run without seeds)
  flops: list[float]          # at each common evaluation
  val_BxE: np.ndarray         # [seed, evaluation] val loss
  runs: list[Run]

  @classmethod
  def of(cls, label: str, by_seed: dict) -> 'Curves':
    seeds = list(by_seed)
    runs = [by_seed[k] for k in seeds]
    xs, ys = aligned(runs, 'val_loss', 'flops')
    return cls(label, seeds, xs, np.array(ys, dtype=float).reshape(len(runs), len(xs)), runs)

  def mean(self, rows, smooth: int) -> list[float]:
    """The smoothed mean curve over the seeds at `rows` (indices, repeats allowed)."""
    return smoothed(list(np.mean(self.val_BxE[list(rows)], axis=0)), smooth)


def _paired_crossings(base: Curves, method: Curves, smooth: int):
  """Statistics of (seed indices into the common seeds) -> F_method, saving, speedup."""
  common = [k for k in method.seeds if k in base.seeds]
  b_rows = [base.seeds.index(k) for k in common]
  m_rows = [method.seeds.index(k) for k in common]

  def crossings(idx):
    b = base.mean([b_rows[i] for i in idx], smooth)
    target = _final(b)
    if target is None:
      return None, None
    f_base = crossing(base.flops, b, target)
    f = crossing(method.flops, method.mean([m_rows[i] for i in idx], smooth), target)
    return f, f_base

  def flops(idx):
    return crossings(idx)[0]

  def saving(idx):
    f, f_base = crossings(idx)
    return None if f is None or not f_base else 1.0 - f / f_base

  def speedup(idx):
    f, f_base = crossings(idx)
    return None if not f or f_base is None else f_base / f - 1.0

  return len(common), flops, saving, speedup


def _per_seed(curves: Curves, fn) -> dict:
  return {k: fn(list(curves.val_BxE[i])) for i, k in enumerate(curves.seeds)}


def method_rows(runs: list[Run], baseline: str, smooth: int = SMOOTH) -> tuple[list[dict], float]:
  """(one row per method, the target = the baseline's smoothed seed-mean final val loss).
  Each statistic is a jaxlab.report.stats.Interval (n = 1: no interval)."""
  groups = group_seeds(runs)
  if baseline not in groups:
    raise ValueError(f'baseline run {baseline!r} not found; runs: '
                     f'{", ".join(groups)}')
  base = Curves.of(baseline, groups[baseline])
  target = _final(base.mean(range(len(base.seeds)), smooth)) if base.flops else None
  if target is None:
    raise ValueError(f'baseline run {baseline!r} logged no finite val_loss')
  base_tail = _per_seed(base, _tail_mean)
  rows = []
  for label, by_seed in groups.items():
    curves = Curves.of(label, by_seed)
    tail = _per_seed(curves, _tail_mean)
    n, flops, saving, speedup = _paired_crossings(base, curves, smooth)
    total = [r.series('loss', 'flops')[0] for r in curves.runs]
    grow = next((e for e in curves.runs[0].events if e.get('event') in ('grow', 'coalesce')),
                None)
    rows.append({
        'run': label,
        'n': len(curves.seeds),
        'final_val_loss': stats.t_interval(_per_seed(curves, _final).values()),
        'tail_val_loss': stats.t_interval(tail.values()),
        'delta_tail_val_loss': stats.t_interval(stats.paired_differences(tail, base_tail)),
        'flops': float(np.mean([t[-1] for t in total if t])) if any(total) else None,
        'growth_at_flops': grow.get('flops') if grow else None,
        'flops_to_target': stats.bootstrap_interval(flops, n),
        'saving': stats.bootstrap_interval(saving, n),
        'speedup': stats.bootstrap_interval(speedup, n),
    })
  return rows, target


def savings_rows(runs: list[Run], baseline: str, smooth: int = SMOOTH) -> tuple[list[dict], float]:
  """method_rows, flattened (`flatten`)."""
  rows, target = method_rows(runs, baseline, smooth)
  return flatten(rows), target


def flatten(rows: list[dict]) -> list[dict]:
  """savings.csv rows: each Interval as its estimate, plus columns `<name>_ci` (the
  half-width; None without an interval) and `<name>_resolved` for the differences
  against the baseline."""
  out = []
  for row in rows:
    flat = {}
    for k, v in row.items():
      if isinstance(v, stats.Interval):
        flat[k] = v.estimate
        flat[f'{k}_ci'] = None if math.isnan(v.half) else v.half
        if k.startswith('delta_') or k == 'saving':
          flat[f'{k}_resolved'] = v.resolved
      else:
        flat[k] = v
    out.append(flat)
  return out


def _seeds(n: int) -> str:
  return f'n = {n} seed{"s" * (n != 1)}'


def headline(row: dict, baseline: str) -> str:
  """One sentence for a method's saving against the baseline, with its uncertainty."""
  s, n = row['saving'], row['saving'].n
  if s.estimate is None:
    return (f"{row['run']} does not reach {baseline}'s final val loss within its FLOPs "
            f'({_seeds(n)}).')
  if n < 2:
    return (f"{row['run']} reaches {baseline}'s final val loss with {100 * s.estimate:.1f}% "
            f'{"fewer" if s.estimate >= 0 else "more"} FLOPs ({_seeds(n)}: no confidence '
            'interval; run with --seeds 3 or more).')
  ci = f'{_seeds(n)}, {100 * stats.CONFIDENCE:.0f}% CI'
  if not s.resolved:
    return (f"{row['run']} vs {baseline}: not resolved at this scale (saving "
            f'{s.format("+.1f", 100, "%")}, {ci}).')
  return (f"{row['run']} reaches {baseline}'s final val loss with {abs(100 * s.estimate):.1f}% "
          f'± {100 * s.half:.1f}% {"fewer" if s.estimate > 0 else "more"} FLOPs ({ci}).')


def render_savings(rows: list[dict], baseline: str, target: float) -> str:
  def cell(iv: stats.Interval, spec: str, scale: float = 1.0, unit: str = '',
           verdict: bool = False) -> str:
    text = iv.format(spec, scale, unit)
    if verdict and iv.estimate is not None and iv.n >= 2 and not iv.resolved:
      text += ' (not resolved)'
    return text

  def sci(v):
    return '—' if v is None else f'{v:.3g}'

  n_max = max(r['n'] for r in rows)
  lines = [f'## FLOPs to reach the baseline\'s final val loss ({baseline}: {target:.4f}, '
           'smoothed)', '']
  lines += [f'Headline: {headline(r, baseline)}\n' for r in rows if r['run'] != baseline]
  lines += [f'| run | seeds | final val loss | mean of last {TAIL} evals | Δ vs baseline '
            '(paired) | FLOPs (total) | growth at FLOPs | FLOPs to reach target | saving | '
            'speedup |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    if r['run'] == baseline:
      delta = saving = speedup = '(baseline)'
    else:
      delta = cell(r['delta_tail_val_loss'], '+.4f', verdict=True)
      saving = cell(r['saving'], '+.1f', 100, '%', verdict=True)
      speedup = cell(r['speedup'], '+.1f', 100, '%')
    lines.append(
        f"| {r['run']} | {r['n']} | {cell(r['final_val_loss'], '.4f')} | "
        f"{cell(r['tail_val_loss'], '.4f')} | {delta} | {sci(r['flops'])} | "
        f"{sci(r['growth_at_flops'])} | {cell(r['flops_to_target'], '.3g')} | {saving} | "
        f"{speedup} |")
  lines += ['', f'Val curves: the mean over seeds, smoothed by a centred {SMOOTH}-evaluation '
            'mean before the crossing (jaxlab/savings.py). saving = 1 - F / F_baseline; '
            'speedup = F_baseline / F - 1 (the paper\'s convention, 54.6% at 7B); "—": never '
            f'reached the target. Δ: mean of the last {TAIL} val losses minus the baseline\'s, '
            'at (nearly) equal FLOPs, seed by seed.', '']
  if n_max >= 2:
    lines += [f'Statistics ({100 * stats.CONFIDENCE:.0f}% CIs, ± half-width): final and '
              f'tail val loss, and Δ: {stats.T_METHOD} (Δ on the per-seed differences; seed k '
              'of every method shares its data order). FLOPs to target, saving and speedup: '
              f'{stats.BOOTSTRAP_METHOD}; ± inf: some resample never reaches the target '
              '(jaxlab/stats.py). "not resolved": the CI includes 0.', '']
  else:
    lines += ['One run per method: no confidence intervals (`launch.py sweep ... --seeds 3` '
              'runs every method with 3 paired seeds).', '']
  return '\n'.join(lines)


def _band(ax, xs, ys_BxE, color, ls, label, marker=None):
  """Mean over seeds (line), and where there are >= 2 seeds the pointwise t-interval
  (shaded)."""
  ys = np.asarray(ys_BxE, dtype=float)
  mean = np.mean(ys, axis=0)
  ax.plot(xs, mean, color=color, ls=ls, lw=1.3, marker=marker, ms=2.5,
          label=f'{label} (n = {len(ys)})' if len(ys) > 1 else label)
  if len(ys) > 1:
    half = [stats.t_interval(col).half for col in ys.T]
    ax.fill_between(xs, mean - half, mean + half, color=color, alpha=0.2, lw=0)


def plot_val_vs_flops(runs: list[Run], target: float | None = None):
  """Val loss vs training FLOPs (log x): one mean curve per method with its 95% band over
  seeds; growth events marked."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  groups = group_seeds(runs)
  fig = Figure(figsize=(8, 5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  finite = []
  for (label, by_seed), (color, ls) in zip(groups.items(), styles(len(groups))):
    curves = Curves.of(label, by_seed)
    keep = [i for i, x in enumerate(curves.flops) if x > 0]
    if not keep:
      continue
    ys = curves.val_BxE[:, keep]
    _band(ax, [curves.flops[i] for i in keep], ys, color, ls, label, marker='o')
    finite += [float(y) for y in np.mean(ys, axis=0) if math.isfinite(y)]
    for e in curves.runs[0].events:
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
  n_max = max(len(g) for g in groups.values())
  ax.set_title('Validation loss vs FLOPs (dotted: growth events' +
               (f'; mean over seeds, band: pointwise {100 * stats.CONFIDENCE:.0f}% t-interval)'
                if n_max > 1 else ')'), fontsize='medium')
  ax.grid(True, which='major', alpha=0.3)
  ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False,
            fontsize='small')
  return fig
