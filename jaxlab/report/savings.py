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
                       the baseline's seed-mean final val loss (jaxlab.report.crossing:
                       the cubic through the evaluations around it, in log FLOPs, not
                       across a growth event); None: never
  saving               1 - F_method / F_baseline, F_baseline the FLOPs of the baseline's
                       final evaluation (the compute it spent to reach the target)
  speedup              F_baseline / F_method - 1 (the paper's "54.6% speedup" convention:
                       300B / 194B tokens - 1)

CIs: t-intervals for means and paired differences (jaxlab.report.stats); for the FLOPs
to target, the saving and the speedup, the paired t-test inverted along the method's
curve (jaxlab.report.crossing). With k > 1 methods against the baseline, the intervals
that decide "resolved" (Δ and the saving) are Holm-adjusted over the k comparisons; the
unadjusted ones are in savings.csv. A difference or saving whose CI includes zero is
"not resolved".
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxlab.report import crossing, stats
from jaxlab.report.plots import styles
from jaxlab.rundir.read import Run, aligned, group_seeds

TAIL = 3   # evaluations averaged for the end-of-run comparison at equal FLOPs
GROWTH_EVENTS = ('grow', 'coalesce', 'interpolate')   # the loss jumps there


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

  @property
  def breaks(self) -> list[float]:
    """FLOPs of the growth events (the first seed's; every seed grows at the same step)."""
    return [e['flops'] for e in self.runs[0].events
            if e.get('event') in GROWTH_EVENTS and e.get('flops')]


def _per_seed(curves: Curves, fn) -> dict:
  return {k: fn(list(curves.val_BxE[i])) for i, k in enumerate(curves.seeds)}


def _crossing_rows(base: Curves, method: Curves, confidence: float) -> dict:
  """flops_to_target, saving and speedup (stats.Interval, [low, high]) of `method`
  against `base` over their common seeds, at `confidence`."""
  common = [k for k in method.seeds if k in base.seeds]
  n = len(common)
  M = method.val_BxE[[method.seeds.index(k) for k in common]]
  b = base.val_BxE[[base.seeds.index(k) for k in common], -1]
  f_base = float(base.flops[-1])
  est, lo, hi = crossing.crossing_interval(method.flops, M, b, stats.t_quantile(n, confidence)
                                           if n >= 2 else math.nan, method.breaks)
  if n < 2:
    lo = hi = math.nan
  reached = bool(np.isfinite(est))

  def speed(f):
    return math.inf if f == 0 else f_base / f - 1
  return {   # estimate None: the mean never reaches the target; the bounds still say how far
      'flops_to_target': stats.Interval(est if reached else None, math.nan, n, low=lo, high=hi),
      'saving': stats.Interval(1 - est / f_base if reached else None, math.nan, n,
                               low=1 - hi / f_base, high=1 - lo / f_base),
      'speedup': stats.Interval(speed(est) if reached else None, math.nan, n, low=speed(hi),
                                high=speed(lo)),
  }


def _saving_pvalue(base: Curves, method: Curves) -> float:
  """The p-value of 'no saving' from the test the saving's interval inverts (the gap at
  the method's last evaluation, the baseline's FLOPs, over the seeds' spread at the
  crossing: crossing.last_evaluation_t), so that Holm's step-down and the adjusted
  intervals decide alike."""
  common = [k for k in method.seeds if k in base.seeds]
  M = method.val_BxE[[method.seeds.index(k) for k in common]]
  b = base.val_BxE[[base.seeds.index(k) for k in common], -1]
  t, n = crossing.last_evaluation_t(method.flops, M, b, method.breaks)
  return stats.t_pvalue_of(t, n)


def method_rows(runs: list[Run], baseline: str) -> tuple[list[dict], float]:
  """(one row per method, the target = the baseline's seed-mean final val loss). Each
  statistic is a jaxlab.report.stats.Interval (n = 1: no interval); with k > 1 methods
  besides the baseline, 'delta_tail_val_loss' and 'saving' (with 'flops_to_target' and
  'speedup', read from the same crossing) are Holm-adjusted, the unadjusted ones kept
  under '<name>_unadjusted', and 'holm' holds the adjusted p-values."""
  groups = group_seeds(runs)
  if baseline not in groups:
    raise ValueError(f'baseline run {baseline!r} not found; runs: '
                     f'{", ".join(groups)}')
  base = Curves.of(baseline, groups[baseline])
  target = _final(list(np.mean(base.val_BxE, axis=0))) if base.flops else None
  if target is None:
    raise ValueError(f'baseline run {baseline!r} logged no finite val_loss')
  base_tail = _per_seed(base, _tail_mean)
  rows, curves_of = [], {}
  for label, by_seed in groups.items():
    curves = curves_of[label] = Curves.of(label, by_seed)
    tail = _per_seed(curves, _tail_mean)
    total = [r.series('loss', 'flops')[0] for r in curves.runs]
    grow = next((e for e in curves.runs[0].events if e.get('event') in ('grow', 'coalesce')),
                None)
    deltas = stats.paired_differences(tail, base_tail)
    rows.append({
        'run': label,
        'n': len(curves.seeds),
        'final_val_loss': stats.t_interval(_per_seed(curves, _final).values()),
        'tail_val_loss': stats.t_interval(tail.values()),
        'delta_tail_val_loss': stats.t_interval(deltas),
        'flops': float(np.mean([t[-1] for t in total if t])) if any(total) else None,
        'growth_at_flops': grow.get('flops') if grow else None,
        **_crossing_rows(base, curves, stats.CONFIDENCE),
        '_deltas': deltas,
    })
  _holm(rows, base, curves_of, baseline)
  for row in rows:
    del row['_deltas']
  return rows, target


def _holm(rows: list[dict], base: Curves, curves_of: dict, baseline: str) -> None:
  """Holm-adjusts Δ and the saving over the methods compared with the baseline."""
  others = [r for r in rows if r['run'] != baseline]
  if len(others) < 2:
    return
  delta_p = [stats.t_pvalue(r['_deltas']) for r in others]
  saving_p = [_saving_pvalue(base, curves_of[r['run']]) for r in others]
  for row, (p_adj, level) in zip(others, stats.holm(delta_p)):
    row['delta_tail_val_loss_unadjusted'] = row['delta_tail_val_loss']
    row['delta_tail_val_loss'] = stats.t_interval(row['_deltas'], level)
    row['holm_p_delta'] = p_adj
  for row, (p_adj, level) in zip(others, stats.holm(saving_p)):
    for key in ('flops_to_target', 'saving', 'speedup'):
      row[f'{key}_unadjusted'] = row[key]
    row.update(_crossing_rows(base, curves_of[row['run']], level))
    row['holm_p_saving'] = p_adj


def savings_rows(runs: list[Run], baseline: str) -> tuple[list[dict], float]:
  """method_rows, flattened (`flatten`)."""
  rows, target = method_rows(runs, baseline)
  return flatten(rows), target


def flatten(rows: list[dict]) -> list[dict]:
  """savings.csv rows: each Interval as its estimate, plus `<name>_lo` and `<name>_hi`
  (its bounds; empty without an interval) and `<name>_resolved` for the differences
  against the baseline (Holm-adjusted where the report adjusts them)."""
  out = []
  for row in rows:
    flat = {}
    for k, v in row.items():
      if isinstance(v, stats.Interval):
        flat[k] = v.estimate
        flat[f'{k}_lo'] = None if math.isnan(v.lo) else v.lo
        flat[f'{k}_hi'] = None if math.isnan(v.hi) else v.hi
        if k.startswith('delta_') or k.startswith('saving'):
          flat[f'{k}_resolved'] = v.resolved
      else:
        flat[k] = v
    out.append(flat)
  return out


def _seeds(n: int) -> str:
  return f'n = {n} seed{"s" * (n != 1)}'


def _adjusted(rows: list[dict], baseline: str) -> int:
  """How many comparisons the Holm adjustment spans (0: none)."""
  k = sum(r['run'] != baseline for r in rows)
  return k if k > 1 else 0


def headline(row: dict, baseline: str, family: int = 0) -> str:
  """One sentence for a method's saving against the baseline, with its uncertainty.
  family: the number of comparisons its interval is Holm-adjusted over (0: none)."""
  s, n = row['saving'], row['saving'].n
  if s.estimate is None:
    return (f"{row['run']} does not reach {baseline}'s final val loss within its FLOPs "
            f'({_seeds(n)}).')
  if n < 2:
    return (f"{row['run']} reaches {baseline}'s final val loss with {100 * s.estimate:.1f}% "
            f'{"fewer" if s.estimate >= 0 else "more"} FLOPs ({_seeds(n)}: no confidence '
            'interval; run with --seeds 3 or more).')
  ci = f'{_seeds(n)}, {100 * stats.CONFIDENCE:.0f}% CI' + (
      f', Holm-adjusted over {family} methods' if family else '')
  if not s.resolved:
    return (f"{row['run']} vs {baseline}: not resolved at this scale (saving "
            f'{s.format("+.1f", 100, "%")}, {ci}).')
  fewer = 'fewer' if s.estimate > 0 else 'more'
  return (f"{row['run']} reaches {baseline}'s final val loss with {abs(100 * s.estimate):.1f}% "
          f'{fewer} FLOPs (saving {s.format("+.1f", 100, "%")}, {ci}).')


def render_savings(rows: list[dict], baseline: str, target: float) -> str:
  def cell(iv: stats.Interval, spec: str, scale: float = 1.0, unit: str = '',
           verdict: bool = False) -> str:
    text = iv.format(spec, scale, unit)
    if verdict and iv.estimate is not None and iv.n >= 2 and not iv.resolved:
      text += ' (not resolved)'
    return text

  def sci(v):
    return '—' if v is None else f'{v:.3g}'

  family = _adjusted(rows, baseline)
  ns = sorted({r['n'] for r in rows})
  lines = [f'## FLOPs to reach the baseline\'s final val loss ({baseline}: {target:.4f})', '']
  lines += [f'Headline: {headline(r, baseline, family)}\n' for r in rows
            if r['run'] != baseline]
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
  lines += ['', 'FLOPs to reach target: where the seed-mean val curve first reaches the '
            "baseline's seed-mean final val loss, read off the cubic through the evaluations "
            'around it in log FLOPs (never across a growth event; jaxlab/report/crossing.py). '
            'saving = 1 - F / F_baseline (F_baseline: the FLOPs of its final evaluation); '
            'speedup = F_baseline / F - 1 (the paper\'s convention, 54.6% at 7B); "—": never '
            f'reached the target. Δ: mean of the last {TAIL} val losses minus the baseline\'s, '
            'at (nearly) equal FLOPs, seed by seed.', '']
  if max(ns) >= 2:
    tq = ', '.join(f'n = {n}: t = {stats.t_quantile(n):.3f}' for n in ns if n >= 2)
    lines += [f'Statistics ({100 * stats.CONFIDENCE:.0f}% CIs): final and tail val loss, and '
              f'Δ: {stats.T_METHOD}, mean ± t_(0.975, n-1) s / sqrt(n) ({tq}; Δ on the '
              'per-seed differences; seed k of every method shares its data order). FLOPs to '
              'target, saving and speedup: [low, high], the FLOPs at which a paired t-test of '
              "'method curve = baseline final' does not reject, around the estimate; 'inf': "
              'open where that reaches the last evaluation. "not resolved": the CI includes 0.'
              + (f' With {family} methods against one baseline, Δ and the saving (and the '
                 'FLOPs and speedup read with it) are Holm-adjusted (step-down over the k '
                 'p-values); savings.csv also has the unadjusted intervals.' if family else ''),
              '']
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
