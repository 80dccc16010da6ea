"""`launch.py sweep EXPERIMENT ...`: a sweep's points (jaxlab.launch.sweep_points) run one
after another in this process, --jobs J at a time as processes (jaxlab.launch.sweep_jobs),
--population K at a time as one program each (jaxlab.launch.populations), or submitted
to a TPU slice or a SLURM cluster (--target; jaxlab.launch.submit)."""
from __future__ import annotations

import sys

from jaxlab import train as train_lib
from jaxlab.config.types import ConfigError
from jaxlab.launch import gpu_flags, populations, sweep_jobs, sweep_points
from jaxlab.launch.submit import commands as submit_commands
from jaxlab.launch.submit.common import sweep_argv
from jaxlab.launch.submit.options import check_options
from jaxlab.rundir.layout import run_dir_of
from jaxlab.rundir.records import status_of


def main(args) -> int:
  check_options(args)
  sweep_dir, runs = sweep_points.sweep_configs(args.experiment, args.grid, args.overrides,
                                                args.seeds, args.vary)
  if args.jobs < 1:
    raise ConfigError(f'--jobs {args.jobs} must be >= 1')
  population = sweep_points.population_size(args.experiment, args.population)
  if args.target != 'local':
    if args.point is not None or args.jobs != 1 or args.population is not None:
      raise ConfigError(f'--point, --jobs and --population run points here; --target '
                        f'{args.target} submits every point as its own run (drop them)')
    return submit_commands.sweep(args, sweep_dir, len(runs))
  if population > 1 and args.jobs != 1:
    raise ConfigError(f'--population {population} trains each population in this process; '
                      f'--jobs {args.jobs} runs points as processes of their own (drop one, '
                      'or set --population 1 for an experiment whose POPULATION is set)')
  points = list(enumerate(runs))
  if args.point is not None:
    if not 0 <= args.point < len(runs):
      raise ConfigError(f'--point {args.point} is out of range: this sweep has {len(runs)} '
                        f'points, 0 to {len(runs) - 1}')
    points = [points[args.point]]
  if args.dry_run:
    print(f'sweep {sweep_dir}: {len(runs)} points')
    for i, (label, _) in points:
      print(f'  --point {i}: {label}')
    if population > 1:
      print(populations.describe(populations.group(points, population), len(runs)))
    return 0
  gpu_flags.apply_and_log()   # before the point subprocesses too: they inherit XLA_FLAGS
  if population > 1 and len(points) > 1:
    outcome, code = populations.run(points, len(runs), population, args.population_batching)
    if code:
      return code
    print(sweep_jobs.outcome_line(sweep_dir, outcome))
    return 0
  if args.jobs > 1 and len(points) > 1:
    argv = sweep_argv(args.experiment, args.overrides, args.grid, args.seeds,
                      args.vary)[1:]   # without 'launch.py'
    return sweep_jobs.run_parallel(argv, sweep_dir, points, len(runs), args.jobs)
  outcome = {}
  for i, point in points:
    label, cfg = point
    if status_of(run_dir_of(cfg)) == 'completed':
      print(f'[{i + 1}/{len(runs)}] {label}: finished earlier, skipped')
      outcome[label] = 'completed'
      continue
    print(f'[{i + 1}/{len(runs)}] {label}')
    try:
      train_lib.train(cfg, point.origin)
      outcome[label] = 'completed'
    except train_lib.Diverged as err:
      print(f'  diverged: {err}', file=sys.stderr)
      outcome[label] = 'diverged'
    except train_lib.Preempted as err:
      print(str(err), file=sys.stderr)
      return 128 + err.signum
  print(sweep_jobs.outcome_line(sweep_dir, outcome))
  return 0
