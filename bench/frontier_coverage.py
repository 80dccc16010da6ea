"""Coverage of the frontier's and the compute multiplier's bootstrap intervals, measured:
ladders of val curves drawn from a known law with the seed noise of
experiments/scaling_ladder's own runs, fitted as `launch.py fit --law multiplier` fits
them (jaxlab.scaling.fit_frontier_curves on each method, compute_multiplier between
them), and the fraction of 95% intervals that hold the truth. Prints a table
(docs/scaling.md quotes it).

  python bench/frontier_coverage.py --sims 100 --reps 100 --k 1.3
  python bench/frontier_coverage.py --sims 100 --reps 100 --k 1.0   # no saving
  python bench/frontier_coverage.py --interval runs ...             # the old interval

The ladder: 5 sizes x 3 FLOPs budgets x SEEDS seeds per method, as in the study (N from
its 37,896 to 455,712 parameters, budgets 1e11 / 3e11 / 1e12, C = 6 N D, six evaluations
per run). The truth is the study's scratch fit L(N, D) = A / N^alpha + B / D^beta (the
first ladder's Chinchilla fit: E not determined, so 0) along each run's tokens; the growth
method's curve at C is scratch's at k C, so its compute multiplier is k at every C.

The noise is the first ladder's, measured from its two seeds per cell: a per-run offset
in log loss (SD 0.013), shared with the other method's run of the same seed and cell at
correlation 0.47 (they read the same data order), and independent noise on each
evaluation (SD 0.0135).

What an interval should hold: the multiplier of the two frontiers fitted to the
noiseless ladder (the estimand; its distance from k, the frontier form's approximation
error, is printed beside it), and the noiseless frontier's E, A, gamma and predictions.
Both bootstrap intervals are read from the same refits: 'percentile' (the refits' 2.5th
and 97.5th percentiles) and 'basic' (those reflected about the fit's value).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from jaxlab.scaling import compute_multiplier, fit_frontier_curves

LAW = {'A': 615.0, 'B': 29.4, 'alpha': 0.626, 'beta': 0.210}   # docs/results/scaling_ladder.md
SIZES = (37_896, 78_176, 126_480, 230_080, 455_712)
BUDGETS = (1e11, 3e11, 1e12)
EVALS = 6
RUN_SD, EVAL_SD, PAIRED = 0.013, 0.0135, 0.47
AT = (1e11, 3e11, 1e12)
PREDICT = (3e11, 3e12)   # inside the ladder's span, and the prediction's budget


def clean_curve(n: float, budget: float, k: float) -> tuple[np.ndarray, np.ndarray]:
  c = budget * np.arange(1, EVALS + 1) / EVALS
  d = k * c / (6 * n)
  return c, LAW['A'] / n ** LAW['alpha'] + LAW['B'] / d ** LAW['beta']


def ladder(k: float, seeds: int, rng=None) -> tuple[list, list, list]:
  """(scratch curves, method curves, cell of each), one per (size, budget, seed) in the
  same order."""
  scratch, method, cells = [], [], []
  for n in SIZES:
    for b in BUDGETS:
      for _ in range(seeds):
        cs, ls = clean_curve(n, b, 1.0)
        cm, lm = clean_curve(n, b, k)
        if rng is not None:
          shared = rng.normal()
          own = rng.normal(size=2)
          off = RUN_SD * (math.sqrt(PAIRED) * shared + math.sqrt(1 - PAIRED) * own)
          ls = ls * np.exp(off[0] + rng.normal(0, EVAL_SD, EVALS))
          lm = lm * np.exp(off[1] + rng.normal(0, EVAL_SD, EVALS))
        scratch.append((cs, ls))
        method.append((cm, lm))
        cells.append((n, b))
  return scratch, method, cells


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--sims', type=int, default=100)
  ap.add_argument('--reps', type=int, default=100)
  ap.add_argument('--k', type=float, default=1.3, help="the method's true compute multiplier")
  ap.add_argument('--seeds', type=int, default=3)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--interval', choices=['cells', 'runs'], default='cells',
                  help="cells: the seeds' mean curve per cell, a bootstrap over seeds within "
                       "cells (what launch.py fit does with seeds); runs: the envelope of "
                       "every run, a bootstrap over runs (what it did before)")
  args = ap.parse_args()
  s0, m0, cells = ladder(args.k, args.seeds)
  groups = cells if args.interval == 'cells' else None
  fs0 = fit_frontier_curves(s0, groups=groups, bootstrap=0)
  fm0 = fit_frontier_curves(m0, groups=groups, bootstrap=0)
  truth = {f'multiplier at {c:.0e}': compute_multiplier(fs0, fm0, c)[0] for c in AT}
  for name in ('gamma', 'E', 'A'):
    truth[f'{name} (scratch)'] = getattr(fs0, name)
  for c in PREDICT:
    truth[f'frontier at {c:.0e} (scratch)'] = fs0.predict(c)
  kinds = ('percentile', 'basic')
  hits = {(name, kind): 0 for name in truth for kind in kinds}
  widths = {name: [] for name in truth}
  rng = np.random.default_rng(args.seed)
  start = time.time()
  for i in range(args.sims):
    s, m, _ = ladder(args.k, args.seeds, rng)
    fs = fit_frontier_curves(s, groups=groups, bootstrap=args.reps, seed=i)
    fm = fit_frontier_curves(m, groups=groups, bootstrap=args.reps, seed=i)
    for kind in kinds:
      cis = {f'multiplier at {c:.0e}': compute_multiplier(fs, fm, c, kind=kind)[1:] for c in AT}
      for name in ('gamma', 'E', 'A'):
        cis[f'{name} (scratch)'] = fs.interval(name, kind=kind)
      for c in PREDICT:
        cis[f'frontier at {c:.0e} (scratch)'] = fs.predict_interval(c, kind=kind)
      for name, (lo, hi) in cis.items():
        hits[name, kind] += lo <= truth[name] <= hi
        if kind == 'percentile':
          widths[name].append(hi - lo)
  print(f'{args.sims} simulated ladders ({len(SIZES)} sizes x {len(BUDGETS)} budgets x '
        f'{args.seeds} seeds per method), true multiplier k = {args.k}, interval {args.interval}, '
        f'{args.reps} bootstrap refits each; {time.time() - start:.0f} s')
  print('| quantity | estimand (noiseless fit) | coverage, percentile | coverage, basic '
        '| Monte Carlo SE | median width |')
  print('|---|---|---|---|---|---|')
  for name in truth:
    p = [hits[name, kind] / args.sims for kind in kinds]
    se = max(math.sqrt(q * (1 - q) / args.sims) for q in p)
    print(f'| {name} | {truth[name]:.4g} | {100 * p[0]:.1f}% | {100 * p[1]:.1f}% | '
          f'{100 * se:.1f}% | {np.median(widths[name]):.3g} |')


if __name__ == '__main__':
  main()
