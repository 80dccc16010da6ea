"""A sweep as separate processes vs as populations (`launch.py sweep --population K`): the
demo model, 6 lrs x 3 seeds, side by side and alternated within each repeat so that a
drift in the machine's load hits every setting alike. Prints two tables.

  python bench/population_sweep.py                       # 30 steps per point, 1 repeat
  python bench/population_sweep.py --steps 60 --repeats 2

(a) Whole sweeps: each setting is one `launch.py sweep demo --grid optim.lr=... --seeds 3`
subprocess in a fresh work dir, from start to end (imports, compiles, training; no
evaluation or checkpoint between steps): --jobs 1, --jobs 2, and --population 6 and 18
with each --population-batching (vmap, map). Member-steps/s (wall) is 18 x steps / wall time; steady member-steps/s
leaves the first logging window (the compile) out: each run's logged tokens_per_sec
over its tokens per step, times the number of runs that step together (J processes, or
K members of one program).

(b) One step, in this process: the population's jitted train step at K = 1, 6, 18 (vmap
and map) and a separate run's, timed over --step-repeats steps after a warm-up on the same batch, with
the FLOP/s they reach (jaxlab's FLOPs formula, models/flops.py, over the step's time).
Where K members cost K times one member (the same FLOP/s), the CPU is busy with the
members' arithmetic, not with per-op overhead, and a population can only save the
compiles and the gaps between steps.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LRS = ('1e-3', '2e-3', '4e-3', '8e-3', '1.6e-2', '3.2e-2')
SEEDS = 3
SETTINGS = (('--jobs', 1, 'vmap'), ('--jobs', 2, 'vmap'), ('--population', 6, 'vmap'),
            ('--population', 18, 'vmap'), ('--population', 6, 'map'),
            ('--population', 18, 'map'))


def key(option: str, value: int, batching: str) -> str:
  """'jobs2', 'pop18-map': a setting's name for --settings."""
  return f'jobs{value}' if option == '--jobs' else f'pop{value}-{batching}'


def label(option: str, value: int, batching: str) -> str:
  return f'{option} {value}' + (f' ({batching})' if option == '--population' else '')


def sweep(option: str, value: int, batching: str, steps: int, workdir: pathlib.Path) -> dict:
  cmd = [sys.executable, str(ROOT / 'launch.py'), 'sweep', 'demo', '--grid', 'growth.method=none',
         '--grid', 'optim.lr=' + ','.join(LRS), '--seeds', str(SEEDS), option, str(value),
         *(['--population-batching', batching] if option == '--population' else []),
         f'train.steps={steps}', 'train.eval_every=0', 'train.eval_batches=0',
         'train.checkpoint_every=0', f'train.log_every={max(steps // 6, 1)}',
         f'train.workdir={workdir}']
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
  wall = time.perf_counter() - t0
  rates = []
  for metrics in workdir.rglob('metrics.jsonl'):
    cfg = json.loads((metrics.parent / 'config.json').read_text())
    tokens_per_step = cfg['train']['batch_size'] * cfg['data']['seq_len']
    per_run = [r['tokens_per_sec'] / tokens_per_step for r in map(json.loads, metrics.open())
               if r.get('tokens_per_sec')]
    rates.append(statistics.median(per_run))
  points = len(LRS) * SEEDS
  assert len(rates) == points, f'{len(rates)} runs with metrics, expected {points}'
  together = value   # J processes or K members step at the same time
  return {'wall': wall, 'wall_rate': points * steps / wall,
          'steady_rate': together * statistics.median(rates)}


def step_times(sizes: list[int], repeats: int,
               experiment: str = 'demo') -> list[tuple[str, float, float, float]]:
  """[(what, ms per step, member-steps per second, GFLOP/s by jaxlab's FLOPs formula)] of
  one step, in this process."""
  import jax
  import numpy as np
  from jaxlab import config as config_lib
  from jaxlab.growth import phases as growth_phases
  from jaxlab.models import flops as flops_lib
  from jaxlab.parallel import make_mesh
  from jaxlab.train import population_program as pp
  from jaxlab.train.program import build_program
  from jaxlab.train.runnable import resolve

  cfg = resolve(config_lib.load(experiment, ['growth.method=none']))
  mesh, phases = make_mesh(cfg.mesh), growth_phases(cfg)
  rows, width = cfg.train.batch_size, cfg.data.seq_len + 1
  rng = np.random.default_rng(0)
  host = {'tokens': rng.integers(1, 200, (rows, width), dtype=np.int32),
          'segment_ids': np.ones((rows, width), np.int32)}

  # jaxlab's FLOPs formula for one member's step (XLA's cost analysis counts the body of
  # the layer scan, and of map's loop over members, once).
  member_flops = (flops_lib.flops_per_token(cfg.model, cfg.data.seq_len)
                  * cfg.train.batch_size * cfg.data.seq_len)

  def timed(step, state, *args):
    """Seconds per step."""
    state, _ = step(state, *args)   # compile and warm up
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(repeats):
      state, metrics = step(state, *args)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - t0) / repeats

  out = []
  single = build_program(cfg, mesh, 0, phases)
  batch = {k: jax.device_put(v, single.batch_sharding) for k, v in host.items()}
  seconds = timed(single.train_step, single.init_state(), batch)
  out.append(('separate run (jit)', 1000 * seconds, 1 / seconds, member_flops / seconds / 1e9))
  for batching in pp.BATCHING:
    for k in sizes:
      cfgs = [cfg] * k
      program = pp.build_population_program(cfg, mesh, k, 0, phases, batching)
      stacked = {name: jax.device_put(np.stack([v] * k), program.batch_sharding)
                 for name, v in host.items()}
      seconds = timed(program.train_step, pp.init_states(program, cfgs), stacked,
                      pp.hyper_arrays(cfgs))
      out.append((f'population K = {k} ({batching})', 1000 * seconds, k / seconds,
                  k * member_flops / seconds / 1e9))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=30, help='train steps of every point')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--step-repeats', type=int, default=10)
  parser.add_argument('--skip-sweeps', action='store_true', help='only part (b)')
  parser.add_argument('--settings', default=None,
                      help='part (a)\'s settings to run, comma-separated, of: ' + ', '.join(
                          key(*s) for s in SETTINGS) + ' (default: all)')
  parser.add_argument('--step-experiment', default='demo',
                      help="part (b)'s model (default demo; tiny for a smoke run)")
  args = parser.parse_args()
  chosen = [s for s in SETTINGS if args.settings is None or key(*s) in args.settings.split(',')]
  results: dict[tuple, list[dict]] = {s: [] for s in chosen}
  if not args.skip_sweeps:
    with tempfile.TemporaryDirectory() as tmp:
      for r in range(args.repeats):
        for option, value, batching in chosen:
          got = sweep(option, value, batching, args.steps,
                      pathlib.Path(tmp) / f'{option[2:]}{value}{batching}_{r}')
          results[(option, value, batching)].append(got)
          print(f'  repeat {r}: {label(option, value, batching)}: {got["wall"]:.0f} s',
                flush=True)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'\n(a) {len(LRS)} lrs x {SEEDS} seeds x {args.steps} steps of the demo model '
          f'(no growth), {os.cpu_count()} cores, load average at the end {load:.1f}; '
          'medians over repeats\n')
    print('| setting | wall s (each repeat) | member-steps/s (wall) | steady member-steps/s | '
          f'wall speedup vs {label(*chosen[0])} |\n|---|---|---:|---:|---:|')
    base = statistics.median(g['wall'] for g in results[chosen[0]])
    for (option, value, batching), runs in results.items():
      wall = statistics.median(g['wall'] for g in runs)
      walls = ', '.join(f"{g['wall']:.0f}" for g in runs)
      wall_rate = statistics.median(g['wall_rate'] for g in runs)
      steady = statistics.median(g['steady_rate'] for g in runs)
      print(f'| {label(option, value, batching)} | {walls} | {wall_rate:.2f} | {steady:.2f} | '
            f'{base / wall:.2f}x |')
  print(f'\n(b) one train step of {args.step_experiment} in this process, '
        f'{args.step_repeats} steps after a warm-up\n')
  print('| program | ms per step | member-steps/s | GFLOP/s (jaxlab\'s FLOPs formula) |\n'
        '|---|---:|---:|---:|')
  for what, ms, rate, gflops in step_times([1, 6, 18], args.step_repeats,
                                           args.step_experiment):
    print(f'| {what} | {ms:.1f} | {rate:.2f} | {gflops:.1f} |')


if __name__ == '__main__':
  main()
