"""Coverage of fit_chinchilla's bootstrap intervals, measured: ladders drawn from
Hoffmann et al.'s published law with log-normal noise, fitted, and the fraction of 95%
intervals that hold the true E, alpha, beta and the allocation exponent a = beta /
(alpha + beta). Prints a table (docs/scaling.md quotes it).

  python bench/scaling_coverage.py --sims 200 --reps 100 --noise 0.01
  python bench/scaling_coverage.py --design ladder   # 5 sizes x 3 budgets, like the study

Each simulation costs one grid fit and `reps` refits (~0.05 s each on one core here).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from jaxlab.scaling import fit_chinchilla

TRUTH = {'E': 1.69, 'A': 406.4, 'B': 410.7, 'alpha': 0.34, 'beta': 0.28}


def design(name: str) -> tuple[np.ndarray, np.ndarray]:
  if name == 'grid':    # 6 sizes x 4 token counts
    return np.repeat(np.geomspace(1e7, 3e9, 6), 4), np.tile(np.geomspace(2e9, 4e11, 4), 6)
  # 5 sizes x 3 FLOPs budgets (D = C / 6N), the shape of experiments/scaling_ladder.py
  n = np.repeat(np.geomspace(1e7, 1.6e8, 5), 3)
  c = np.tile([1e18, 3e18, 1e19], 5)
  return n, c / (6 * n)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--sims', type=int, default=200)
  ap.add_argument('--reps', type=int, default=100)
  ap.add_argument('--noise', type=float, default=0.01, help='SD of log L about the law')
  ap.add_argument('--design', choices=['grid', 'ladder'], default='grid')
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args()
  n, d = design(args.design)
  t = TRUTH
  clean = t['E'] + t['A'] / n ** t['alpha'] + t['B'] / d ** t['beta']
  truth = {**t, 'a': t['beta'] / (t['alpha'] + t['beta'])}
  rng = np.random.default_rng(args.seed)
  hits = {k: 0 for k in ('E', 'alpha', 'beta', 'a')}
  widths = {k: [] for k in hits}
  start = time.time()
  for i in range(args.sims):
    loss = clean * np.exp(rng.normal(0, args.noise, len(n)))
    fit = fit_chinchilla(n, d, loss, bootstrap=args.reps, seed=i)
    cis = {k: fit.interval(k) for k in ('E', 'alpha', 'beta')}
    alloc = fit.allocation(1e21)['a']
    cis['a'] = alloc[1:]
    for k, (lo, hi) in cis.items():
      hits[k] += lo <= truth[k] <= hi
      widths[k].append(hi - lo)
  print(f'{args.sims} simulations, {len(n)} points ({args.design}), noise SD {args.noise} in '
        f'log L, {args.reps} bootstrap refits each; {time.time() - start:.0f} s')
  print('| quantity | truth | coverage of the 95% interval | Monte Carlo SE | median width |')
  print('|---|---|---|---|---|')
  for k in hits:
    p = hits[k] / args.sims
    print(f'| {k} | {truth[k]:.4g} | {100 * p:.1f}% | {100 * math.sqrt(p * (1 - p) / args.sims):.1f}% '
          f'| {np.median(widths[k]):.3g} |')


if __name__ == '__main__':
  main()
