"""The compile-time benchmarks of the README ("Compile before you pay"): per target, the
lightest remat policy whose step fits, its HBM per chip, and XLA's estimated MFU.

  python bench/bench_compile.py [--cases 1b-v5p-8,7b-v5p-64,7b-v5e-256] [--out FILE]
                                      [--remats none,save_dots,full]

For each case, `launch.py compile` (jaxlab.aot, in this process) with the experiment's
config and the case's overrides:
  1. fit: attention=auto (splash on TPU), remat none, then save_dots, then full, until a
     policy fits (HBM of the train step, the eval step with the optimizer state resident,
     the growth transition if any); --no-estimate.
  2. estimate: the same with attention=pallas, whose kernels carry a cost estimate (XLA
     cannot see inside splash's): XLA's loop-corrected estimate of the step time and the
     MFU it implies -- a compile-time estimate from XLA's cost model, not a measurement.
     Compiled in a child process started with jaxlab.aot.check.LOOP_FREE_LIBTPU_ARGS in
     LIBTPU_INIT_ARGS (no collective-matmul loops, which XLA's cost analysis would count
     once; see jaxlab/aot/check.py), so the fit above stays the program a run compiles.
Prints a markdown table (and writes it to --out). Each case compiles the 7B model several
times: minutes to tens of minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxlab import aot  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.aot.check import LOOP_FREE_LIBTPU_ARGS  # noqa: E402
from jaxlab.aot.targets import GIB, parse_target  # noqa: E402

CASES = {  # name: (experiment, target, overrides)
    '1b-v5p-8': ('llama_1b', 'tpu:v5p-8', []),
    '7b-v5p-64': ('llama2_7b', 'tpu:v5p-64', []),
    '7b-v5e-256': ('llama2_7b', 'tpu:v5e-256', ['train.batch_size=1024']),
}
REMATS = ('none', 'save_dots', 'full')


def _quiet(line: str) -> None:
  print(f'  {line}', file=sys.stderr, flush=True)


def run_case(name: str, remats=REMATS) -> dict:
  experiment, target_text, overrides = CASES[name]
  target = parse_target(target_text)
  out = {'case': name, 'target': target_text}
  for remat in remats:
    cfg = config_lib.load(experiment, overrides + ['model.attention=auto', f'model.remat={remat}'])
    t0 = time.perf_counter()
    rows = aot.check_run(cfg, target, log=_quiet, estimate=False)
    _quiet(f'{name} remat={remat}: fits={rows[0]["fits"]} '
           f'({time.perf_counter() - t0:.0f} s)')
    out.setdefault('tried', []).append((remat, rows[0]['hbm_bytes_per_chip'],
                                        rows[0].get('hbm_is_lower_bound')))
    if rows[0]['fits']:
      out.update(remat=remat, fit=rows[0], cfg=cfg)
      break
  if 'fit' not in out:
    return out
  out['estimate'] = _estimate_in_child(name, remat)
  return out


ESTIMATE_KEYS = ('estimated_step_seconds', 'estimated_mfu', 'estimate_note', 'xla_flops_per_step')


def estimate(name: str, remat: str) -> dict:
  """The estimate row's numbers for a case at a remat policy (attention=pallas)."""
  experiment, target_text, overrides = CASES[name]
  cfg = config_lib.load(experiment, overrides + ['model.attention=pallas', f'model.remat={remat}'])
  row = aot.check_run(cfg, parse_target(target_text), log=_quiet)[0]
  return {key: row.get(key) for key in ESTIMATE_KEYS}


def _estimate_in_child(name: str, remat: str) -> dict:
  args = os.environ.get('LIBTPU_INIT_ARGS', '')
  env = dict(os.environ, LIBTPU_INIT_ARGS=f'{args} {LOOP_FREE_LIBTPU_ARGS}'.strip())
  proc = subprocess.run([sys.executable, __file__, '--estimate-only', name, '--remats', remat],
                        env=env, capture_output=True, text=True)
  sys.stderr.write(proc.stderr)
  if proc.returncode != 0:
    return {'estimate_note': f'the estimate failed (exit {proc.returncode}): '
                             f'{(proc.stderr.strip().splitlines() or [""])[-1][:200]}'}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(n, lower=False) -> str:
  return '?' if n is None else ('>= ' if lower else '') + f'{n / GIB:.1f}'


def table(results: list[dict]) -> str:
  lines = ['| case | target | mesh d/f/t | per-chip batch | remat that fits (tried) | '
           'HBM GiB/chip (splash) | of GiB | XLA est. step s (pallas) | XLA est. MFU (pallas) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    tried = ', '.join(f'{remat}: {_gib(hbm, lower)}' for remat, hbm, lower in r['tried'])
    if 'fit' not in r:
      lines.append(f"| {r['case']} | {r['target']} | | | none fits ({tried}) | | | | |")
      continue
    fit, est, cfg = r['fit'], r.get('estimate', {}), r['cfg']
    mesh = '/'.join(str(fit['mesh'][a]) for a in ('data', 'fsdp', 'tensor'))
    per_chip = cfg.train.batch_size // fit['chips']
    step = est.get('estimated_step_seconds')
    mfu = est.get('estimated_mfu')
    lines.append(
        f"| {r['case']} | {r['target']} | {mesh} | {per_chip} x {cfg.data.seq_len} | "
        f"{r['remat']} ({tried}) | {_gib(fit['hbm_bytes_per_chip'])} | "
        f"{_gib(fit['hbm_capacity_bytes'])} | {'-' if step is None else f'{step:.3f}'} | "
        f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} |")
  notes = [f"- {r['case']}: {r['estimate']['estimate_note']}" for r in results
           if r.get('estimate', {}).get('estimate_note')]
  return '\n'.join(lines + ([''] + notes if notes else [])) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(CASES))
  parser.add_argument('--out', default=None)
  parser.add_argument('--estimate-only', default=None, metavar='CASE',
                      help='print the estimate of CASE at the one --remats policy as JSON (what '
                           'the benchmark runs in its child process)')
  parser.add_argument('--remats', default=','.join(REMATS),
                      help='the policies to try, in order (default: none,save_dots,full); '
                           'start later to skip one already known not to fit')
  args = parser.parse_args()
  remats = args.remats.split(',')
  if not remats or any(r not in REMATS for r in remats):
    parser.error(f'--remats {args.remats}: allowed are {", ".join(REMATS)}, comma-separated')
  aot.use_cpu_host()
  if args.estimate_only:
    print(json.dumps(estimate(args.estimate_only, remats[0])))
    return
  results = []
  for name in args.cases.split(','):
    results.append(run_case(name, remats))
    print(table(results), flush=True)
  if args.out:
    pathlib.Path(args.out).write_text(table(results))


if __name__ == '__main__':
  main()
