"""`launch.py submit` and `launch.py sweep --target ...`: the same `launch.py run` /
`launch.py sweep --point i` command, run on a Cloud TPU slice (jaxlab.launch.submit.tpu) or a
SLURM GPU cluster (jaxlab.launch.submit.slurm). The config is loaded and validated first;
--dry-run prints the exact commands (or the sbatch script) and does nothing else.
`submit --target tpu` first compiles the run for the slice's accelerator type on this
machine (jaxlab.aot, as `launch.py compile` does) and stops, with exit 2, before anything
is created or paid for when a phase does not fit; --skip-compile-check skips that. A
multi-host run whose data or checkpoints are local to this machine is refused with exit 2
before anything else (jaxlab.launch.submit.places)."""
from __future__ import annotations

import pathlib
import shlex
import sys

from jaxlab import config as config_lib
from jaxlab.config.types import ConfigError
from jaxlab.aot.targets import parse_target
from jaxlab.launch import compile as compile_lib
from jaxlab.launch.submit import places, slurm, tpu
from jaxlab.launch.submit.common import (ROOT, Step, StepFailed, check_project, execute,
                                         experiment_arg, require_tool, run_argv, sweep_argv)
from jaxlab.launch.submit.options import check_options
from jaxlab.rundir.layout import run_dir_of
from jaxlab.train.runnable import resolve


def _execute_tpu(target: tpu.Tpu, action: str, script: str | None, args, first=()) -> int:
  worker = getattr(args, 'worker', None) or '0'
  steps = list(first) + tpu.plan(target, action, script, worker=worker)
  if not args.dry_run:
    require_tool('gcloud', 'install the Google Cloud CLI (cloud.google.com/sdk) and run '
                 '`gcloud auth login`')
  try:
    execute(steps, args.dry_run)
  except StepFailed as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
  if action in ('launch', 'run') and not args.dry_run:
    where = f'--tpu-name {target.name} --zone {target.zone}' + (
        f' --project {target.project}' if target.project else '')
    print(f'follow a log: tpu/logs.sh {where}; stop: tpu/stop.sh {where}')
  return 0


def _compile_check(cfg, args, target: tpu.Tpu) -> Step:
  """The run compiled for the slice here, before anything is created: exit 2 (ConfigError)
  naming the phase and the remedies when one does not fit."""
  if not target.accelerator:
    raise ConfigError('submit --target tpu compiles the run for the TPU first and needs its '
                      'type: pass --accelerator (or $ACCELERATOR_TYPE), e.g. v5p-32, or '
                      '--skip-compile-check')
  name = f'tpu:{target.accelerator}'
  argv = ['launch.py', 'compile', args.experiment, *args.overrides, '--target', name,
          '--no-estimate']

  def run():
    compile_lib.use_cpu_host()
    if compile_lib.compile_and_report(cfg, name, estimate=False)[1]:
      raise ConfigError(f'the run does not fit on {target.accelerator} (see above); nothing was '
                        'submitted (--skip-compile-check submits anyway)')
  return Step(f'# compile check: every phase compiled for {name} on this machine; a phase '
              f'that does not fit stops here (--skip-compile-check skips it):\n'
              f'# {shlex.join(argv)}', run)


def _shared_checkpoints_note(cfg) -> None:
  """TPU workers have separate disks, but a multi-host run writes one checkpoint whose
  shards come from every host: it needs a directory they all see."""
  if cfg is None:
    return
  if '://' not in (cfg.train.checkpoint_dir or cfg.train.mirror_dir):   # where checkpoints go
    print('note: on a multi-host TPU slice every worker writes its own checkpoint shards; set '
          'train.checkpoint_dir=gs://BUCKET/PATH (or train.mirror_dir=gs://BUCKET/PATH, which '
          'also copies the run directory there) so they land in one place that all workers '
          '(and a later restore) can read. A single-host slice can keep the default.',
          file=sys.stderr)


def _check_places(cfg, args, target: tpu.Tpu | None) -> None:
  """Says where the data comes from; refuses a multi-host run whose data or checkpoints
  only this machine has. TPU: the hosts of --accelerator (unknown without it: the note of
  _shared_checkpoints_note instead); SLURM: --nodes, sharing the checkout and --shared-dir."""
  if target is None:
    places.check(cfg, args.nodes or 1, 'slurm', [str(ROOT), *(args.shared_dir or [])])
  elif target.accelerator:
    places.check(cfg, parse_target(f'tpu:{target.accelerator}').hosts, 'tpu')
  else:
    _shared_checkpoints_note(cfg)
  print(f'# {places.describe(cfg)}', file=sys.stderr, flush=True)


def _slurm(args, argv: list[str], job_dir: pathlib.Path, name: str, array=None) -> int:
  try:
    return slurm.submit(args, argv, job_dir=ROOT / job_dir, name=name, array=array)
  except StepFailed as err:
    print(f'error: {err}', file=sys.stderr)
    return 1


def submit(args) -> int:
  """`launch.py submit --target tpu|slurm [--action A] [EXPERIMENT [key=value ...]]`."""
  check_options(args)
  check_project()
  action = args.action
  needs = action in ('launch', 'run') or args.target == 'slurm'
  if needs and not args.experiment:
    what = f'--action {action}' if args.target == 'tpu' else '--target slurm'
    raise ConfigError(f'submit {what} needs an EXPERIMENT to run')
  if not needs and action != 'logs' and (args.experiment or args.overrides):
    raise ConfigError(f'--action {action} takes no EXPERIMENT or overrides')
  cfg = resolve(config_lib.load(args.experiment, args.overrides)) if args.experiment else None
  remote = args.target == 'tpu'
  argv = run_argv(experiment_arg(args.experiment, remote=remote), args.overrides) if needs else []
  if args.target == 'slurm':
    _check_places(cfg, args, None)
    return _slurm(args, argv, run_dir_of(cfg), cfg.name)
  target = tpu.Tpu.from_args(args)
  if needs:
    _check_places(cfg, args, target)
  if action == 'logs':
    script = tpu.logs_script(cfg.name if cfg else None)
  else:
    script = tpu.run_script(cfg.name, argv) if needs else None
  check = [_compile_check(cfg, args, target)] if needs and not args.skip_compile_check else []
  return _execute_tpu(target, action, script, args, first=check)


def sweep(args, sweep_dir: pathlib.Path, count: int) -> int:
  """`launch.py sweep EXPERIMENT ... --target tpu|slurm`: every point of the (already
  validated) sweep, as a SLURM job array or one detached loop on the TPU workers.
  The caller (cli) has run check_options."""
  check_project()
  argv = sweep_argv(experiment_arg(args.experiment, remote=args.target == 'tpu'),
                    args.overrides, args.grid, args.seeds, args.vary)
  if args.target == 'slurm':
    _check_places(config_lib.load(args.experiment, args.overrides), args, None)
    return _slurm(args, argv, sweep_dir, sweep_dir.name, array=count)
  target = tpu.Tpu.from_args(args)
  _check_places(config_lib.load(args.experiment, args.overrides), args, target)
  return _execute_tpu(target, 'launch', tpu.sweep_script(sweep_dir.name, argv, count), args)
