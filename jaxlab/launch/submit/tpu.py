"""Cloud TPU VMs and queued resources through gcloud: create, copy the project to every
worker and install it, run detached on all workers, tail a log, stop, delete.

This is the only place that spells a gcloud command; the tpu/*.sh scripts call these
actions through `launch.py submit --target tpu --action ...`.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time

from jaxlab.config.types import ConfigError
from jaxlab.launch.submit.common import ROOT, Step, StepFailed, command

REMOTE_DIR = 'jaxlab'        # the project's copy on each worker, under the home directory
REMOTE_PYTHON = '3.12'       # jax needs Python >= 3.11; TPU images ship 3.10, so uv brings one
POLL_SECONDS = 30            # queued resources: how often to ask whether the TPU is ready
# Cloud TPU's recommended software version per TPU generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {'v6e': 'v2-alpha-tpuv6e', 'v5p': 'v2-alpha-tpuv5',
                    'v5litepod': 'v2-alpha-tpuv5-lite', 'v4': 'tpu-ubuntu2204-base',
                    'v3': 'tpu-ubuntu2204-base', 'v2': 'tpu-ubuntu2204-base'}
# The worker's index in the slice, from the metadata server (the same value jax reads for
# its process id); a worker that cannot reach the server names its logs by hostname.
WORKER_ID = ('$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/'
             'computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null '
             '|| hostname)')
_NAME = re.compile(r'[a-z]([-a-z0-9]*[a-z0-9])?')


@dataclasses.dataclass(frozen=True)
class Tpu:
  name: str
  zone: str
  project: str | None = None
  accelerator: str | None = None
  runtime_version: str | None = None
  queued: bool = False
  spot: bool = False

  @classmethod
  def from_args(cls, args) -> Tpu:
    """Flags first, then the environment (TPU_NAME, ZONE, ACCELERATOR_TYPE,
    RUNTIME_VERSION, QUEUED=1) -- what the tpu/*.sh scripts document."""
    env = os.environ
    tpu = cls(name=args.tpu_name or env.get('TPU_NAME', ''), zone=args.zone or env.get('ZONE', ''),
              project=args.project, accelerator=args.accelerator or env.get('ACCELERATOR_TYPE'),
              runtime_version=args.runtime_version or env.get('RUNTIME_VERSION'),
              queued=bool(args.queued) or env.get('QUEUED', '').lower() in ('1', 'true', 'yes'),
              spot=bool(args.spot))
    for option, var, value in (('--tpu-name', 'TPU_NAME', tpu.name), ('--zone', 'ZONE', tpu.zone)):
      if not value:
        raise ConfigError(f'--target tpu needs {option} (or ${var})')
      if not _NAME.fullmatch(value):
        raise ConfigError(f'{option}={value!r} is not valid: lowercase letters, digits and "-", '
                          'starting with a letter')
    return tpu

  def version(self) -> str:
    if self.runtime_version:
      return self.runtime_version
    family = (self.accelerator or '').split('-')[0]
    if family not in RUNTIME_VERSIONS:
      raise ConfigError(f'no default TPU software version for --accelerator={self.accelerator!r} '
                        f'(known: {", ".join(RUNTIME_VERSIONS)}); pass --runtime-version')
    return RUNTIME_VERSIONS[family]


# ----------------------------------------------------------------------------- gcloud

def _gcloud(tpu: Tpu, group: str, verb: str, *positional: str, extra=()) -> list[str]:
  argv = ['gcloud', 'compute', 'tpus', group, verb, *positional, f'--zone={tpu.zone}']
  if tpu.project:
    argv.append(f'--project={tpu.project}')
  return argv + list(extra)


def create_argv(tpu: Tpu) -> list[str]:
  if not tpu.accelerator:
    raise ConfigError('creating a TPU needs --accelerator (or $ACCELERATOR_TYPE), e.g. v5p-32')
  spot = ['--spot'] if tpu.spot else []
  if tpu.queued:
    return _gcloud(tpu, 'queued-resources', 'create', tpu.name, extra=[
        f'--node-id={tpu.name}', f'--accelerator-type={tpu.accelerator}',
        f'--runtime-version={tpu.version()}', *spot])
  return _gcloud(tpu, 'tpu-vm', 'create', tpu.name, extra=[
      f'--accelerator-type={tpu.accelerator}', f'--version={tpu.version()}', *spot])


def describe_argv(tpu: Tpu) -> list[str]:
  if tpu.queued:
    return _gcloud(tpu, 'queued-resources', 'describe', tpu.name,
                   extra=['--format=value(state.state)'])
  return _gcloud(tpu, 'tpu-vm', 'describe', tpu.name, extra=['--format=value(state)'])


def delete_argv(tpu: Tpu) -> list[str]:
  if tpu.queued:      # --force also deletes the TPU node the queued resource holds
    return _gcloud(tpu, 'queued-resources', 'delete', tpu.name, extra=['--force'])
  return _gcloud(tpu, 'tpu-vm', 'delete', tpu.name)


def ssh_argv(tpu: Tpu, script: str, worker: str = 'all') -> list[str]:
  return _gcloud(tpu, 'tpu-vm', 'ssh', tpu.name,
                 extra=[f'--worker={worker}', f'--command={script}'])


def scp_argv(tpu: Tpu, tarball: str) -> list[str]:
  return _gcloud(tpu, 'tpu-vm', 'scp', tarball, f'{tpu.name}:{REMOTE_DIR}.tar.gz',
                 extra=['--worker=all'])


# ----------------------------------------------------------------------------- remote scripts
# Each runs in the login shell of every worker, from the home directory.

SETUP = (f'set -e; mkdir -p {REMOTE_DIR}; tar -xzf {REMOTE_DIR}.tar.gz -C {REMOTE_DIR}; '
         f'rm {REMOTE_DIR}.tar.gz; cd {REMOTE_DIR}; '
         'test -x ~/.local/bin/uv || python3 -m pip install -q --user uv; '
         f'test -x .venv/bin/python || ~/.local/bin/uv venv -q --python {REMOTE_PYTHON} .venv; '
         '~/.local/bin/uv pip install -q --python .venv/bin/python -e ".[tpu]"')

# SIGTERM to each started run's process group: runs save a checkpoint and exit.
STOP = (f'cd {REMOTE_DIR} 2>/dev/null || exit 0; for f in logs/*.pid; do [ -e "$f" ] || continue; '
        'p=$(cat "$f"); rm -f "$f"; if kill -TERM -- -"$p" 2>/dev/null; then '
        'echo "$(hostname): sent SIGTERM to ${f%.pid} (process group $p)"; fi; done')

# A TPU runs one program at a time: refuse to start while a started run is alive.
_BUSY = ('for f in logs/*.pid; do if [ -e "$f" ] && kill -0 -- -"$(cat "$f")" 2>/dev/null; then '
         'echo "$(hostname): ${f%.pid} is still running; stop it first (tpu/stop.sh)" >&2; '
         'exit 1; fi; done')


def _detached(name: str, command: str, log: str) -> str:
  """Starts `command` (which redirects its own output) in the background, in its own
  process group (set -m) whose id goes to logs/<name>.worker<W>.pid for STOP."""
  q = shlex.quote(name)
  return (f'set -e; cd {REMOTE_DIR}; mkdir -p logs; {_BUSY}; W={WORKER_ID}; set -m; '
          f'{command} & echo $! > logs/{q}.worker$W.pid; echo "$(hostname)": started '
          f'~/{REMOTE_DIR}/{log}')


def run_script(name: str, argv: list[str]) -> str:
  """`launch.py run ...` on every worker, detached, one log per worker."""
  log = f'logs/{shlex.quote(name)}.worker$W.log'
  return _detached(name, f'nohup .venv/bin/python {shlex.join(argv)} > {log} 2>&1 < /dev/null',
                   log)


def sweep_script(name: str, argv: list[str], count: int) -> str:
  """The sweep's points one after another (`argv --point i`, each its own process and
  log); a point stopped by a signal ends the loop."""
  q = shlex.quote(name)
  loop = (f'for i in $(seq 0 {count - 1}); do .venv/bin/python {shlex.join(argv)} --point $i '
          f'> logs/{q}.point$i.worker$W.log 2>&1 < /dev/null; rc=$?; '
          'echo "point $i exited with $rc"; [ $rc -lt 128 ] || exit $rc; done')
  log = f'logs/{q}.sweep.worker$W.log'
  return _detached(name, f'(trap "" HUP; set +e; {loop}) > {log} 2>&1 < /dev/null', log)


def logs_script(name: str | None) -> str:
  pattern = f'logs/{shlex.quote(name)}.*.log' if name else 'logs/*.log'
  return f'cd {REMOTE_DIR} && tail -n 100 -F "$(ls -t {pattern} | head -n 1)"'


# ----------------------------------------------------------------------------- local steps

_SKIP = {'.git', '.venv', 'runs', '__pycache__', 'build', 'dist', '.pytest_cache'}


def _project_files() -> list[str]:
  """Tracked and untracked-but-not-ignored files (uncommitted edits travel too)."""
  if (ROOT / '.git').exists() and shutil.which('git'):
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return list(dict.fromkeys(n for n in listed.split('\0') if n))
  names = []
  for top, dirs, files in os.walk(ROOT):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.endswith('.egg-info'))
    names += [os.path.relpath(os.path.join(top, f), ROOT) for f in sorted(files)]
  return names


def pack(dest: pathlib.Path) -> int:
  count = 0
  with tarfile.open(dest, 'w:gz') as tar:
    for name in _project_files():
      if (ROOT / name).is_file():      # skips files deleted but not yet committed
        tar.add(ROOT / name, arcname=name, recursive=False)
        count += 1
  return count


def _state(tpu: Tpu) -> str | None:
  """The TPU's state, or None when gcloud says NOT_FOUND."""
  argv = describe_argv(tpu)
  out = subprocess.run(argv, capture_output=True, text=True)
  if out.returncode == 0:
    return out.stdout.strip()
  if 'NOT_FOUND' in out.stderr:
    return None
  raise StepFailed(f'{shlex.join(argv)} failed with exit code {out.returncode}: '
                   f'{out.stderr.strip()}')


def ensure(tpu: Tpu) -> None:
  """Creates the TPU unless it exists, then waits until it is ready."""
  ready = 'ACTIVE' if tpu.queued else 'READY'
  bad = ({'FAILED', 'SUSPENDING', 'SUSPENDED', 'DELETING'} if tpu.queued else
         {'PREEMPTED', 'TERMINATED', 'STOPPING', 'STOPPED', 'DELETING', 'HIDDEN'})
  state, last = _state(tpu), None
  if state is None:
    print(f'{tpu.name} not found; creating it', flush=True)
    command(create_argv(tpu)).run()
    state = _state(tpu)
  while state != ready:
    if state in bad:
      raise StepFailed(f'TPU {tpu.name} is {state}; delete it (tpu/delete.sh) and submit again')
    if state != last:
      print(f'{tpu.name} is {state or "not found yet"}; waiting until {ready} (Ctrl-C is safe: '
            'the same command picks it up later)', flush=True)
      last = state
    time.sleep(POLL_SECONDS)
    state = _state(tpu)


def upload(tpu: Tpu, tarball: pathlib.Path) -> None:
  try:
    count = pack(tarball)
    print(f'packed {count} files ({tarball.stat().st_size / 1e6:.1f} MB)', flush=True)
    command(scp_argv(tpu, str(tarball))).run()
  finally:
    tarball.unlink(missing_ok=True)


def tarball_path(tpu: Tpu) -> pathlib.Path:
  return pathlib.Path(tempfile.gettempdir()) / f'jaxlab-{tpu.name}.tar.gz'


def plan(tpu: Tpu, action: str, script: str | None = None, worker: str = '0') -> list[Step]:
  """The steps of an action; `script` is the remote job (run / sweep) or the logs command.
  'launch' = [create if missing, when --accelerator is given] + setup + run."""
  if action == 'create':
    steps = [command(create_argv(tpu))]
    if tpu.queued:
      steps.append(Step('# the node comes up once capacity is free; it is usable when this '
                        f'prints ACTIVE:\n# {shlex.join(describe_argv(tpu))}', lambda: None))
    return steps
  if action == 'delete':
    return [command(delete_argv(tpu))]
  if action == 'stop':
    return [command(ssh_argv(tpu, STOP))]
  if action == 'logs':
    return [command(ssh_argv(tpu, script, worker))]
  steps = []
  if action == 'launch' and tpu.accelerator:
    steps.append(Step(f'# create the TPU unless `describe` finds it, then wait until it is '
                      f'{"ACTIVE" if tpu.queued else "READY"}:\n{shlex.join(describe_argv(tpu))}\n'
                      f'{shlex.join(create_argv(tpu))}', lambda: ensure(tpu)))
  if action in ('launch', 'setup'):
    tarball = tarball_path(tpu)
    steps += [Step('# pack the project (git ls-files: tracked, and untracked but not ignored) '
                   f'into {tarball}\n{shlex.join(scp_argv(tpu, str(tarball)))}',
                   lambda: upload(tpu, tarball)),
              command(ssh_argv(tpu, SETUP))]
  if action in ('launch', 'run'):
    steps.append(command(ssh_argv(tpu, script)))
  return steps
