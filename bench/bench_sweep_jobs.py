"""Wall time of a small sweep run one point after another (--jobs 1) vs J points at a
time as separate processes (--jobs J), side by side and alternated (A B A B ...) so that
a drift in the machine's load hits both alike. Prints a table.

  python bench/bench_sweep_jobs.py                  # demo model, 2 seeds x 60 steps
  python bench/bench_sweep_jobs.py --jobs 2 --repeats 3 --steps 100

Each measurement is one `launch.py sweep demo --seeds N --grid ...` subprocess from start
to end (imports, compiles, training; no evaluation or checkpoints between steps), in a
fresh work dir.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def one(jobs: int, seeds: int, steps: int, workdir: pathlib.Path) -> float:
  cmd = [sys.executable, str(ROOT / 'launch.py'), 'sweep', 'demo', '--grid', 'growth.method=none',
         '--seeds', str(seeds), '--jobs', str(jobs), f'train.steps={steps}',
         'train.eval_every=0', 'train.eval_batches=0', 'train.checkpoint_every=0',
         f'train.workdir={workdir}']
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jobs', type=int, default=2)
  parser.add_argument('--seeds', type=int, default=2, help='points in the sweep')
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  times: dict[int, list[float]] = {1: [], args.jobs: []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.repeats):
      for jobs in (1, args.jobs):
        times[jobs].append(one(jobs, args.seeds, args.steps, pathlib.Path(tmp) / f'{jobs}_{r}'))
        print(f'  repeat {r}: --jobs {jobs}: {times[jobs][-1]:.0f} s', flush=True)
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  print(f'\n{args.seeds} points x {args.steps} steps of the demo model, {os.cpu_count()} cores, '
        f'load average at the end {load:.1f}\n')
  print('| --jobs | wall s (each repeat) | median s | speedup |\n|---:|---|---:|---:|')
  base = statistics.median(times[1])
  for jobs, ts in times.items():
    med = statistics.median(ts)
    print(f'| {jobs} | {", ".join(f"{t:.0f}" for t in ts)} | {med:.0f} | {base / med:.2f}x |')


if __name__ == '__main__':
  main()
