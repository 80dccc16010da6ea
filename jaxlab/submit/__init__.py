"""`launch.py submit` and `launch.py sweep --target ...`: the same `launch.py run` /
`launch.py sweep --point i` command, run on a Cloud TPU slice (jaxlab.submit.tpu) or a
SLURM GPU cluster (jaxlab.submit.slurm). The config is loaded and validated first;
--dry-run prints the exact commands (or the sbatch script) and does nothing else.
`submit --target tpu` first compiles the run for the slice's accelerator type on this
machine (jaxlab.aot, as `launch.py compile` does) and stops, with exit 2, before anything
is created or paid for when a phase does not fit; --skip-compile-check skips that."""
from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

from jaxlab import config as config_lib
from jaxlab.config_types import ConfigError
from jaxlab.submit import slurm, tpu
from jaxlab.submit.common import ROOT, Step, StepFailed, execute, experiment_arg, require_tool
from jaxlab.submit.common import check_project, run_argv, sweep_argv

ACTIONS = ('launch', 'create', 'setup', 'run', 'logs', 'stop', 'delete')
_TPU_OPTIONS = ('tpu_name', 'zone', 'project', 'accelerator', 'runtime_version', 'queued', 'spot',
                'worker', 'skip_compile_check')
_SLURM_OPTIONS = ('nodes', 'gpus_per_node', 'partition', 'time', 'account', 'python')


def add_options(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
  """--target and its options, for `submit` and for `sweep`."""
  if sweep:
    parser.add_argument('--target', choices=['local', 'tpu', 'slurm'], default='local',
                        help='local (default): run the points here one after another; tpu / '
                        'slurm: submit them (see `launch.py submit -h`)')
  else:
    parser.add_argument('--target', choices=['tpu', 'slurm'], required=True)
    parser.add_argument('--action', choices=ACTIONS, default='launch',
                        help='tpu only: launch (default) = [create if missing, when --accelerator '
                        'is given] + setup + run; or one step (what the tpu/*.sh scripts call)')
  parser.add_argument('--dry-run', action='store_true',
                      help='print the commands / sbatch script (sweep --target local: the '
                      'points) and do nothing else')
  t = parser.add_argument_group('--target tpu (Cloud TPU VM or queued resource, via gcloud)')
  t.add_argument('--tpu-name', metavar='NAME',
                 help='TPU name; also the queued resource name (default: $TPU_NAME)')
  t.add_argument('--zone', metavar='ZONE', help='e.g. us-east5-a (default: $ZONE)')
  t.add_argument('--project', metavar='P',
                 help="Google Cloud project (default: gcloud's configured one)")
  t.add_argument('--accelerator', metavar='TYPE', help='e.g. v5p-32, v6e-8, v5litepod-16 '
                 '(default: $ACCELERATOR_TYPE); needed to create the TPU')
  t.add_argument('--runtime-version', metavar='V', help='TPU software version (default: '
                 "$RUNTIME_VERSION, else Cloud TPU's recommendation for the accelerator)")
  t.add_argument('--queued', action='store_true',
                 help='the TPU is a queued resource (default: $QUEUED=1)')
  t.add_argument('--spot', action='store_true', help='create spot TPUs')
  if not sweep:
    t.add_argument('--worker', metavar='W',
                   help='--action logs: whose log to tail, 0.. or all (default 0)')
    t.add_argument('--skip-compile-check', action='store_true',
                   help='launch / run without first compiling the run for --accelerator on '
                   'this machine (the check needs libtpu: pip install -e ".[tpu]")')
  s = parser.add_argument_group('--target slurm (sbatch; one task per GPU)')
  s.add_argument('--nodes', type=int, metavar='N', help='default 1')
  s.add_argument('--gpus-per-node', type=int, metavar='N', help='default 8')
  s.add_argument('--partition', metavar='P')
  s.add_argument('--time', metavar='T', help='wall-clock limit, e.g. 24:00:00')
  s.add_argument('--account', metavar='A')
  s.add_argument('--python', metavar='PATH', help="interpreter on the nodes (default: this "
                 "project's .venv/bin/python if it exists, else python3)")


def check_options(args) -> None:
  """Names an option given for another target instead of silently ignoring it."""
  wrong = {'tpu': _SLURM_OPTIONS, 'slurm': _TPU_OPTIONS,
           'local': _TPU_OPTIONS + _SLURM_OPTIONS}[args.target]
  for dest in wrong:
    if getattr(args, dest, None) not in (None, False):
      owner = 'tpu' if dest in _TPU_OPTIONS else 'slurm'
      raise ConfigError(f'--{dest.replace("_", "-")} applies to --target {owner}, '
                        f'not --target {args.target}')
  if args.target == 'slurm':
    slurm.check_time(args.time)
  if getattr(args, 'action', 'launch') != 'launch' and args.target != 'tpu':
    raise ConfigError(f'--action {args.action} applies to --target tpu')
  if getattr(args, 'worker', None) is not None and args.action != 'logs':
    raise ConfigError('--worker applies to --action logs')


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
    from jaxlab import aot
    aot.use_cpu_host()
    if aot.compile_and_report(cfg, name, estimate=False)[1]:
      raise ConfigError(f'the run does not fit on {target.accelerator} (see above); nothing was '
                        'submitted (--skip-compile-check submits anyway)')
  return Step(f'# compile check: every phase compiled for {name} on this machine; a phase '
              f'that does not fit stops here (--skip-compile-check skips it):\n'
              f'# {shlex.join(argv)}', run)


def _shared_checkpoints_note(cfg) -> None:
  """TPU workers have separate disks, but a multi-host run writes one checkpoint whose
  shards come from every host: it needs a directory they all see."""
  if cfg is not None and '://' not in cfg.train.checkpoint_dir:
    print('note: on a multi-host TPU slice every worker writes its own checkpoint shards; set '
          'train.checkpoint_dir=gs://BUCKET/PATH so they land in one place that all workers '
          '(and a later restore) can read. A single-host slice can keep the default.',
          file=sys.stderr)


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
  cfg = config_lib.load(args.experiment, args.overrides) if args.experiment else None
  remote = args.target == 'tpu'
  argv = run_argv(experiment_arg(args.experiment, remote=remote), args.overrides) if needs else []
  if args.target == 'slurm':
    return _slurm(args, argv, pathlib.Path(cfg.train.workdir) / cfg.name, cfg.name)
  target = tpu.Tpu.from_args(args)
  if needs:
    _shared_checkpoints_note(cfg)
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
    return _slurm(args, argv, sweep_dir, sweep_dir.name, array=count)
  target = tpu.Tpu.from_args(args)
  _shared_checkpoints_note(config_lib.load(args.experiment, args.overrides))
  return _execute_tpu(target, 'launch', tpu.sweep_script(sweep_dir.name, argv, count), args)
