"""The coverage of every interval a growth study's report prints, measured by simulation.

  python bench/savings_coverage.py --from runs/demo --baseline scratch [--reps 2000]
                                   [--seeds 3,5,10] [--saving 0.2] [--out FILE]

From the study's runs (a sweep with seeds: `launch.py sweep EXP --seeds N`) it takes the
evaluation grids of the baseline and of each other method, and fits the seed noise to
their seed-to-seed residuals (jaxlab.report.simulate.fit_noise: a seed offset shared by
the methods, the method's own seed offset, AR(1) noise over the evaluations). Truth: the
baseline follows L = E + A * S(t)^-alpha under jaxlab's warmup + cosine schedule (E and A
fitted to its seed-mean curve, alpha 0.45); each method the same law reaching the
baseline's final loss at (1 - saving) of its FLOPs (jaxlab.report.simulate). Each
replication draws n paired seeds of every method, writes them as runs, and reads them
with the report's own code (jaxlab.report.savings.method_rows); an interval covers when
it contains the truth:

  final val loss        the true curve at the last evaluation
  Δ (paired)            the true difference of the last 3 evaluations' means
  FLOPs to target       (1 - saving) x the baseline's FLOPs
  saving, speedup       the true saving s, 1 / (1 - s) - 1

With one method besides the baseline there is no Holm adjustment; with several, the
adjusted intervals are checked (they must cover at least as often). The table gives the
coverage in % with its Monte Carlo standard error sqrt(p (1 - p) / reps).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from jaxlab.report import savings, simulate  # noqa: E402
from jaxlab.rundir.read import Run, aligned, group_seeds, load_runs  # noqa: E402

ALPHA = 0.45
TAIL = savings.TAIL


def study_grids(path: pathlib.Path, baseline: str):
  """{method: (FLOPs at its evaluations, seeds x evaluations, growth-event FLOPs)} of the
  seeds every method has; the baseline first."""
  groups = group_seeds(load_runs(path))
  if baseline not in groups:
    raise SystemExit(f'--baseline {baseline!r}: not a method of {path} ({", ".join(groups)})')
  seeds = sorted(set.intersection(*(set(g) for g in groups.values())), key=lambda k: k or 0)
  out = {}
  for method in [baseline] + [m for m in groups if m != baseline]:
    runs = [groups[method][k] for k in seeds]
    xs, ys = aligned(runs, 'val_loss', 'flops')
    breaks = [e['flops'] for e in runs[0].events
              if e.get('event') in savings.GROWTH_EVENTS and e.get('flops')]
    out[method] = (np.array(xs), np.array(ys), breaks)
  return out


def truth_curves(grids: dict, baseline: str, saving: float) -> dict:
  """{method: true curve at its evaluations}: the baseline's law fitted to its seed mean,
  every other method reaching the baseline's final loss at (1 - saving) of its FLOPs."""
  fb, yb, _ = grids[baseline]
  S = simulate.summed_lr(1.0, 'cosine', warmup=0.05)
  t = lambda flops: flops / fb[-1]                                     # noqa: E731
  A, E = np.polyfit(S(t(fb)) ** -ALPHA, yb.mean(axis=0), 1)
  k = float(S(1.0) / S(1.0 - saving))
  return {m: E + A * ((1.0 if m == baseline else k) * S(t(f))) ** -ALPHA
          for m, (f, _, _) in grids.items()}


def _run(label: str, flops, values, events) -> Run:
  return Run(label=label, dir=pathlib.Path('.'), config={}, summary=None, events=events,
             metrics=[{'step': i + 1, 'flops': float(f), 'loss': float(v), 'val_loss': float(v)}
                      for i, (f, v) in enumerate(zip(flops, values))])


def simulate_coverage(grids, baseline, noise, n, reps, saving, seed=0):
  rng = np.random.default_rng(seed)
  truth = truth_curves(grids, baseline, saving)
  f_base = grids[baseline][0][-1]
  want = {'saving': saving, 'speedup': 1 / (1 - saving) - 1,
          'flops_to_target': (1 - saving) * f_base}
  hits: dict = {}
  for _ in range(reps):
    shared = rng.normal(0.0, noise.shared, n)
    runs = []
    for m, (flops, _, breaks) in grids.items():
      ys = simulate.draw(rng, noise, n, truth[m], shared)
      events = [{'event': 'grow', 'flops': b} for b in breaks]
      runs += [_run(f'{m}/seed{k}', flops, ys[k], events) for k in range(n)]
    rows, _ = savings.method_rows(runs, baseline)
    for row in rows:
      m = row['run']
      checks = {'final val loss': (row['final_val_loss'], truth[m][-1])}
      if m != baseline:
        checks['Δ (paired)'] = (row['delta_tail_val_loss'],
                                truth[m][-TAIL:].mean() - truth[baseline][-TAIL:].mean())
        for key, label in (('flops_to_target', 'FLOPs to target'), ('saving', 'saving'),
                           ('speedup', 'speedup')):
          checks[label] = (row[key], want[key])
      for label, (iv, value) in checks.items():
        key = (label, 'baseline' if m == baseline else 'method')
        ok = bool(iv.lo <= value <= iv.hi)          # nan bounds (no interval): a miss
        hits.setdefault(key, []).append(ok)
  return {k: float(np.mean(v)) for k, v in hits.items()}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--from', dest='study', required=True, type=pathlib.Path)
  ap.add_argument('--baseline', required=True)
  ap.add_argument('--reps', type=int, default=2000)
  ap.add_argument('--seeds', default='3,5,10')
  ap.add_argument('--saving', type=float, default=0.2)
  ap.add_argument('--out', type=pathlib.Path, default=None)
  args = ap.parse_args(argv)
  grids = study_grids(args.study, args.baseline)
  noise = simulate.fit_noise({m: ys for m, (_, ys, _) in grids.items()})
  ns = [int(v) for v in args.seeds.split(',')]
  lines = [f'Study {args.study} (baseline {args.baseline}; {len(grids)} methods; '
           f'{", ".join(f"{m}: {len(f)} evaluations" for m, (f, _, _) in grids.items())})',
           f'Noise fitted to its seed residuals: shared sd {noise.shared:.4f}, paired sd '
           f'{noise.paired:.4f}, evaluation sd {noise.eval:.4f}, AR(1) rho {noise.rho:.2f}; '
           f'true saving {100 * args.saving:.0f}%; {args.reps} replications per n.', '',
           '| interval | ' + ' | '.join(f'n = {n}' for n in ns) + ' |',
           '|---|' + '---|' * len(ns)]
  results = {}
  for n in ns:
    t0 = time.perf_counter()
    results[n] = simulate_coverage(grids, args.baseline, noise, n, args.reps, args.saving)
    print(f'n = {n}: {time.perf_counter() - t0:.0f} s', file=sys.stderr, flush=True)
  for key in results[ns[0]]:
    cells = []
    for n in ns:
      p = results[n][key]
      cells.append(f'{100 * p:.1f}% ± {100 * math.sqrt(p * (1 - p) / args.reps):.1f}')
    lines.append(f'| {key[0]} ({key[1]}) | ' + ' | '.join(cells) + ' |')
  text = '\n'.join(lines)
  print(text)
  if args.out:
    args.out.write_text(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
