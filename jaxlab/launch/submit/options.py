"""The options of `launch.py submit` and `launch.py sweep --target tpu|slurm`: --target and
each target's own flags, checked before anything loads (an option given for another
target is named, not ignored)."""
from __future__ import annotations

import argparse

from jaxlab.config.types import ConfigError
from jaxlab.launch.submit import slurm

ACTIONS = ('launch', 'create', 'setup', 'run', 'logs', 'stop', 'delete')
_TPU_OPTIONS = ('tpu_name', 'zone', 'project', 'accelerator', 'runtime_version', 'queued', 'spot',
                'worker', 'skip_compile_check')
_SLURM_OPTIONS = ('nodes', 'gpus_per_node', 'partition', 'time', 'account', 'python',
                  'signal_before', 'shared_dir')


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
  s.add_argument('--signal-before', type=int, metavar='S',
                 help=f'SIGUSR1 S seconds before the time limit (default '
                 f'{slurm.SIGNAL_BEFORE}): the run saves a checkpoint and exits with '
                 f'{slurm.REQUEUE_EXIT}, and the job requeues itself to resume; 0: neither')
  s.add_argument('--account', metavar='A')
  s.add_argument('--shared-dir', action='append', metavar='DIR',
                 help='a directory every node mounts (repeatable): a multi-node run may read '
                 'its data and write its run there (the checkout is shared already)')
  s.add_argument('--python', metavar='PATH', help="interpreter on the nodes (default: this "
                 "project's .venv/bin/python if the job finds it, else python3)")


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
    slurm.check_signal_before(args.signal_before, slurm.check_time(args.time))
  if getattr(args, 'action', 'launch') != 'launch' and args.target != 'tpu':
    raise ConfigError(f'--action {args.action} applies to --target tpu')
  if getattr(args, 'worker', None) is not None and args.action != 'logs':
    raise ConfigError('--worker applies to --action logs')
