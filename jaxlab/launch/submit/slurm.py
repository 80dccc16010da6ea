"""SLURM GPU clusters: one sbatch script per run (one job array per sweep), one task
per GPU; jax.distributed.initialize() finds its peers from the SLURM_* variables.

Time limits: the script asks SLURM for SIGUSR1 `--signal-before` seconds (default 300)
before the job's time limit (`#SBATCH --signal=USR1@S`). The run treats it as SIGTERM
(jaxlab.train.stop): it finishes the step, saves a checkpoint and exits with 128 + 10 =
138; the script, seeing 138, requeues the job (`scontrol requeue`; `#SBATCH --requeue`),
and the requeued job runs the same command, which resumes from that checkpoint. The logs
are opened for appending, so one file holds every leg of the job. 300 s: SLURM may send
the signal up to a minute early or late (its event loop's resolution), and the rest must
cover the step in flight, the hosts' agreement on the stop step and writing the
checkpoint of a multi-billion-parameter model (params and Adam moments, tens of GB) to a
shared file system; it costs under 0.5% of a 24-hour job. `--signal-before 0` leaves
all of it out.
"""
from __future__ import annotations

import pathlib
import re
import shlex
import signal
import subprocess

from jaxlab.launch import gpu_flags
from jaxlab.config.types import ConfigError
from jaxlab.launch.submit.common import ROOT, StepFailed, require_tool


SIGNAL_BEFORE = 300          # seconds; see the module docstring
REQUEUE_SIGNAL = signal.SIGUSR1
REQUEUE_EXIT = 128 + REQUEUE_SIGNAL   # a run stopped by a signal exits with 128 + its number
_MAX_SIGNAL_BEFORE = 65535   # sbatch(1): --signal's time is 0..65535 seconds


def python_lines(python: str | None) -> list[str]:
  """Shell lines that set $python -- `python` when given, else the checkout's
  .venv/bin/python when the job finds one, else python3 -- and say which it runs."""
  if python:
    choose = f'python={shlex.quote(python)}'
  else:
    venv = shlex.quote(str(ROOT / '.venv' / 'bin' / 'python'))
    choose = f'if [ -x {venv} ]; then python={venv}; else python=python3; fi'
  return [choose, 'echo "python: $python ($("$python" --version 2>&1))"']


def _directive(option: str, value) -> str:
  text = str(value)
  if not text or re.search(r'[\s"\'\\#]', text):
    raise ConfigError(f'--{option}={text!r} cannot go into an #SBATCH line: it must be '
                      'non-empty, without spaces, quotes, "#" or backslashes')
  return f'#SBATCH --{option}={text}'


# sbatch --time formats (sbatch(1)): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; or unlimited.
_TIME = re.compile(r'(\d+)(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite')


def check_time(value: str | None) -> str | None:
  """--time as sbatch accepts it, else ConfigError naming the formats."""
  if value is not None and not _TIME.fullmatch(value):
    raise ConfigError(f'--time {value!r} is not a SLURM time limit: use minutes (90), '
                      'minutes:seconds, hours:minutes:seconds (24:00:00), days-hours (2-0), '
                      'days-hours:minutes or days-hours:minutes:seconds')
  return value


def _seconds(limit: str) -> int | None:
  """A --time limit (already checked by check_time) in seconds; None when unlimited."""
  if limit in ('unlimited', 'infinite'):
    return None
  days, _, rest = limit.rpartition('-')
  parts = [int(p) for p in rest.split(':')]
  if days:
    parts = (parts + [0, 0])[:3]             # D-H, D-H:M, D-H:M:S
  elif len(parts) < 3:
    parts = [0] + (parts + [0])[:2]          # M, M:S (H:M:S is whole)
  h, m, s = parts
  return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def check_signal_before(value: int | None, limit: str | None) -> int:
  """--signal-before (default SIGNAL_BEFORE): 0..65535, and shorter than --time, else a
  job would be stopped and requeued before it trains a step, again and again."""
  value = SIGNAL_BEFORE if value is None else value
  if not 0 <= value <= _MAX_SIGNAL_BEFORE:
    raise ConfigError(f'--signal-before {value} must be 0 (no signal, no requeue) to '
                      f'{_MAX_SIGNAL_BEFORE} seconds')
  total = _seconds(limit) if limit and value else None
  if total is not None and value >= total:
    raise ConfigError(f'--signal-before {value} is not shorter than --time {limit} ({total} s): '
                      'the job would be stopped and requeued before it trains; raise --time or '
                      'lower --signal-before (0: no requeue)')
  return value


def _positive(option: str, value, default: int) -> int:
  value = default if value is None else value
  if value < 1:
    raise ConfigError(f'--{option}={value} must be >= 1')
  return value


def script(argv: list[str], *, name: str, log_dir: pathlib.Path, nodes: int, gpus: int,
           python: str | None = None, partition=None, time=None, account=None,
           array: int | None = None, signal_before: int = SIGNAL_BEFORE) -> str:
  """The sbatch script that runs `python argv...` as one task per GPU on `nodes` nodes;
  with `array` = n, a job array whose task i appends `--point i`. With `signal_before`
  > 0 it requeues itself when the run stops on the SIGUSR1 sent that many seconds before
  the time limit (see the module docstring)."""
  pattern = '%A_%a' if array else '%j'
  lines = ['#!/bin/bash',
           _directive('job-name', re.sub(r'\s+', '_', name)),
           _directive('nodes', nodes),
           _directive('ntasks-per-node', gpus),      # one task (one jax process) per GPU
           _directive('gpus-per-node', gpus)]
  if array:
    lines.append(_directive('array', f'0-{array - 1}'))
  for option, value in (('partition', partition), ('time', time), ('account', account)):
    if value:
      lines.append(_directive(option, value))
  if signal_before:
    lines += [_directive('signal', f'{REQUEUE_SIGNAL.name[3:]}@{signal_before}'),
              '#SBATCH --requeue', '#SBATCH --open-mode=append']
  srun = 'srun "$python" ' + shlex.join(argv)
  if array:
    srun += ' --point "$SLURM_ARRAY_TASK_ID"'
  lines += [_directive('output', f'{log_dir}/{pattern}.out'),
            _directive('error', f'{log_dir}/{pattern}.err'),
            '# written by `launch.py submit|sweep --target slurm`; jax.distributed reads SLURM_*',
            'set -euo pipefail',
            *gpu_flags.slurm_exports(),    # the same flags as `launch.py run` on a GPU
            f'cd {shlex.quote(str(ROOT))}',
            *python_lines(python)]
  if not signal_before:
    return '\n'.join(lines + [srun]) + '\n'
  lines += ['code=0',
            f'{srun} || code=$?',
            f'if [ "$code" -eq {REQUEUE_EXIT} ]; then   # stopped by SIGUSR1, checkpoint saved',
            f'  echo "stopped by {REQUEUE_SIGNAL.name} ({signal_before} s before the time limit) '
            'with a checkpoint: requeueing job $SLURM_JOB_ID to resume from it"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            '  exit 0',
            'fi',
            'exit "$code"']
  return '\n'.join(lines) + '\n'


def submit(args, argv: list[str], *, job_dir: pathlib.Path, name: str,
           array: int | None = None) -> int:
  """Writes <job_dir>/slurm/{run,sweep}.sbatch and submits it (--dry-run: prints both)."""
  log_dir = job_dir / 'slurm'
  path = log_dir / ('sweep.sbatch' if array else 'run.sbatch')
  text = script(argv, name=name, log_dir=log_dir, python=args.python,
                nodes=_positive('nodes', args.nodes, 1),
                gpus=_positive('gpus-per-node', args.gpus_per_node, 8),
                partition=args.partition, time=check_time(args.time), account=args.account,
                array=array, signal_before=check_signal_before(args.signal_before, args.time))
  sbatch = ['sbatch', '--parsable', str(path)]
  if args.dry_run:
    print(f'# {path}\n{text}{shlex.join(sbatch)}')
    return 0
  require_tool('sbatch', 'submit from a SLURM login node')
  log_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(f'wrote {path}\n{shlex.join(sbatch)}', flush=True)
  out = subprocess.run(sbatch, capture_output=True, text=True)
  if out.returncode != 0:
    raise StepFailed(f'sbatch failed with exit code {out.returncode}: {out.stderr.strip()}')
  job = out.stdout.strip().split(';')[0]     # --parsable: "jobid" or "jobid;cluster"
  logs = f'{log_dir}/{job}_<i>.out for point i' if array else f'{log_dir}/{job}.out'
  kind = f'job array ({array} points)' if array else 'job'
  print(f'submitted SLURM {kind} {job}; logs: {logs}')
  return 0
