"""SLURM GPU clusters: one sbatch script per run (one job array per sweep), one task
per GPU; jax.distributed.initialize() finds its peers from the SLURM_* variables."""
from __future__ import annotations

import pathlib
import re
import shlex
import subprocess

from jaxlab.launch import gpu_flags
from jaxlab.config.types import ConfigError
from jaxlab.launch.submit.common import ROOT, StepFailed, require_tool


def default_python() -> str:
  venv = ROOT / '.venv' / 'bin' / 'python'
  return str(venv) if venv.exists() else 'python3'


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


def _positive(option: str, value, default: int) -> int:
  value = default if value is None else value
  if value < 1:
    raise ConfigError(f'--{option}={value} must be >= 1')
  return value


def script(argv: list[str], *, name: str, log_dir: pathlib.Path, nodes: int, gpus: int,
           python: str, partition=None, time=None, account=None, array: int | None = None) -> str:
  """The sbatch script that runs `python argv...` as one task per GPU on `nodes` nodes;
  with `array` = n, a job array whose task i appends `--point i`."""
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
  srun = 'srun ' + shlex.join([python, *argv])
  if array:
    srun += ' --point "$SLURM_ARRAY_TASK_ID"'
  lines += [_directive('output', f'{log_dir}/{pattern}.out'),
            _directive('error', f'{log_dir}/{pattern}.err'),
            '# written by `launch.py submit|sweep --target slurm`; jax.distributed reads SLURM_*',
            'set -euo pipefail',
            *gpu_flags.slurm_exports(),    # the same flags as `launch.py run` on a GPU
            f'cd {shlex.quote(str(ROOT))}',
            srun]
  return '\n'.join(lines) + '\n'


def submit(args, argv: list[str], *, job_dir: pathlib.Path, name: str,
           array: int | None = None) -> int:
  """Writes <job_dir>/slurm/{run,sweep}.sbatch and submits it (--dry-run: prints both)."""
  log_dir = job_dir / 'slurm'
  path = log_dir / ('sweep.sbatch' if array else 'run.sbatch')
  text = script(argv, name=name, log_dir=log_dir, python=args.python or default_python(),
                nodes=_positive('nodes', args.nodes, 1),
                gpus=_positive('gpus-per-node', args.gpus_per_node, 8),
                partition=args.partition, time=check_time(args.time), account=args.account,
                array=array)
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
