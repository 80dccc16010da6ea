"""Compile every experiment in experiments/ (each file defining `config()`) for TPU targets
from this machine, as `launch.py compile EXPERIMENT --target T --no-estimate` would, and
print one row per (experiment, target): phases, whether each fits, the largest HBM per
chip, compile seconds, or the error.

  python bench/compile_experiments.py [--targets tpu:v5e-8,tpu:v5p-8]
                                            [--only demo,tiny] [--out FILE]
                                            [--overrides train.batch_size=8 ...]

The issue's "every experiment compiles for v5e-8 and v5p-8" check. A config that
compiles but does not fit is a row with fits = no (launch.py compile would exit 2 and
name the remedies); an exception is a row with the error. Minutes per experiment on a
busy 2-core machine (growth studies compile each phase and each transition).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxlab import aot  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.aot.targets import GIB, parse_target  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent.parent / 'experiments'
# Largest last: the 7B model dominates the time.
LAST = ('llama_1b', 'llama2_7b')


def experiments() -> list[str]:
  names = sorted(p.stem for p in HERE.glob('*.py')
                 if '\ndef config(' in p.read_text())
  return [n for n in names if n not in LAST] + [n for n in LAST if n in names]


def check(name: str, target_text: str, overrides: list[str]) -> str:
  t0 = time.perf_counter()
  try:
    cfg = config_lib.load(name, overrides)
    rows = aot.check_run(cfg, parse_target(target_text), log=lambda _: None, estimate=False)
  except Exception as err:  # noqa: BLE001 -- a row per failure, the sweep goes on
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return (f'| {name} | {target_text} | - | - | - | {time.perf_counter() - t0:.0f} | '
            f'{type(err).__name__}: {first} |')
  fits = ', '.join('yes' if r['fits'] else 'NO' for r in rows)
  hbm = max(r['hbm_bytes_per_chip'] or 0 for r in rows) / GIB
  cap = rows[0]['hbm_capacity_bytes'] / GIB
  return (f'| {name} | {target_text} | {len(rows)} | {fits} | {hbm:.2f} of {cap:.2f} | '
          f'{time.perf_counter() - t0:.0f} | |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--targets', default='tpu:v5e-8,tpu:v5p-8')
  parser.add_argument('--only', default='')
  parser.add_argument('--out', default=None)
  parser.add_argument('--overrides', nargs='*', default=[],
                      help='config overrides applied to every experiment')
  args = parser.parse_args()
  aot.use_cpu_host()
  names = args.only.split(',') if args.only else experiments()
  lines = ['| experiment | target | phases | fits (per phase) | max HBM GiB/chip | '
           'wall s | error |', '|---|---|---|---|---|---|---|']
  print('\n'.join(lines), flush=True)
  if args.overrides:
    print(f'overrides: {" ".join(args.overrides)}', flush=True)
  for name in names:
    for target in args.targets.split(','):
      lines.append(check(name, target, args.overrides))
      print(lines[-1], flush=True)
  if args.out:
    pathlib.Path(args.out).write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
