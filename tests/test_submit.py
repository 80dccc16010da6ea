"""launch.py submit / sweep --target tpu|slurm: exact dry-run commands, the sbatch script,
the remote shell scripts run in a local sandbox, and fake gcloud / sbatch on PATH."""
import json
import os
import pathlib
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from jaxlab.launch import cli, gpu_flags
from jaxlab.launch.submit import slurm, tpu

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_PY = ROOT / '.venv' / 'bin' / 'python'
ENV_VARS = ('TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'QUEUED')
TPU = ['--target', 'tpu', '--tpu-name', 'my-tpu', '--zone', 'us-east5-a']
# submit runs the compile check first (tests/test_compile.py covers it); these test gcloud.
SUBMIT_TPU = TPU + ['--skip-compile-check']
G = ['gcloud', 'compute', 'tpus']
ZONE = '--zone=us-east5-a'
SSH_ALL = G + ['tpu-vm', 'ssh', 'my-tpu', ZONE, '--worker=all']
TARBALL = os.path.join(tempfile.gettempdir(), 'jaxlab-my-tpu.tar.gz')
PACK = ('# pack the project (git ls-files: tracked, and untracked but not ignored) into '
        + TARBALL)
SCP = G + ['tpu-vm', 'scp', TARBALL, 'my-tpu:jaxlab.tar.gz', ZONE, '--worker=all']
SETUP = ('set -e; mkdir -p jaxlab; tar -xzf jaxlab.tar.gz -C jaxlab; rm jaxlab.tar.gz; cd jaxlab; '
         'test -x ~/.local/bin/uv || python3 -m pip install -q --user uv; '
         'test -x .venv/bin/python || ~/.local/bin/uv venv -q --python 3.12 .venv; '
         '~/.local/bin/uv pip install -q --python .venv/bin/python -e ".[tpu]"')
START = ('set -e; cd jaxlab; mkdir -p logs; for f in logs/*.pid; do if [ -e "$f" ] && '
         'kill -0 -- -"$(cat "$f")" 2>/dev/null; then echo "$(hostname): ${f%.pid} is still '
         'running; stop it first (tpu/stop.sh)" >&2; exit 1; fi; done; W=$(curl -sf -m 5 -H '
         'Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/'
         'attributes/agent-worker-number 2>/dev/null || hostname); set -m; ')
RUN = (START + 'nohup .venv/bin/python launch.py run tiny train.steps=2 > logs/tiny.worker$W.log '
       '2>&1 < /dev/null & echo $! > logs/tiny.worker$W.pid; echo "$(hostname)": started '
       '~/jaxlab/logs/tiny.worker$W.log')
STOP = ('cd jaxlab 2>/dev/null || exit 0; for f in logs/*.pid; do [ -e "$f" ] || continue; '
        'p=$(cat "$f"); rm -f "$f"; if kill -TERM -- -"$p" 2>/dev/null; then echo "$(hostname): '
        'sent SIGTERM to ${f%.pid} (process group $p)"; fi; done')
XLA = gpu_flags.slurm_exports()   # the sbatch script's flag lines
MIRROR = 'train.mirror_dir=gs://bucket/runs'   # a multi-host run's checkpoints in a bucket


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
  for var in ENV_VARS:
    monkeypatch.delenv(var, raising=False)


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out.splitlines(), err


def test_tpu_launch_dry_run_exact(capsys):
  # v5p-32 is 4 hosts: their checkpoint goes to a bucket (tests/test_prepared_train.py)
  code, out, err = run_cli(capsys, 'submit', *TPU, '--accelerator', 'v5p-32', '--dry-run',
                           'tiny', 'train.steps=2', MIRROR)
  assert code == 0, err
  assert '# data: the embedded corpus (each host builds its own copy)' in err.splitlines()
  assert out == [
      '# compile check: every phase compiled for tpu:v5p-32 on this machine; a phase that does '
      'not fit stops here (--skip-compile-check skips it):',
      f'# launch.py compile tiny train.steps=2 {MIRROR} --target tpu:v5p-32 --no-estimate',
      '# create the TPU unless `describe` finds it, then wait until it is READY:',
      shlex.join(G + ['tpu-vm', 'describe', 'my-tpu', ZONE, '--format=value(state)']),
      shlex.join(G + ['tpu-vm', 'create', 'my-tpu', ZONE, '--accelerator-type=v5p-32',
                      '--version=v2-alpha-tpuv5']),
      PACK, shlex.join(SCP),
      shlex.join(SSH_ALL + ['--command=' + SETUP]),
      shlex.join(SSH_ALL + ['--command=' + RUN.replace('=2 ', f'=2 {MIRROR} ')])]
  assert not os.path.exists(TARBALL)


def test_tpu_queued_dry_run_exact(capsys):
  queued = SUBMIT_TPU + ['--queued', '--project', 'proj-1', '--dry-run']
  code, out, err = run_cli(capsys, 'submit', *queued, '--accelerator', 'v6e-8', 'tiny',
                           'train.steps=2')
  assert code == 0, err
  qr = G + ['queued-resources']
  describe = qr + ['describe', 'my-tpu', ZONE, '--project=proj-1', '--format=value(state.state)']
  create = qr + ['create', 'my-tpu', ZONE, '--project=proj-1', '--node-id=my-tpu',
                 '--accelerator-type=v6e-8', '--runtime-version=v2-alpha-tpuv6e']
  ssh = G + ['tpu-vm', 'ssh', 'my-tpu', ZONE, '--project=proj-1', '--worker=all']
  scp = SCP[:-1] + ['--project=proj-1', '--worker=all']
  assert out == ['# create the TPU unless `describe` finds it, then wait until it is ACTIVE:',
                 shlex.join(describe), shlex.join(create), PACK, shlex.join(scp),
                 shlex.join(ssh + ['--command=' + SETUP]), shlex.join(ssh + ['--command=' + RUN])]
  # the individual steps (what tpu/create.sh and tpu/delete.sh call)
  code, out, _ = run_cli(capsys, 'submit', *queued, '--action', 'create', '--accelerator',
                         'v6e-8', '--spot')
  assert code == 0 and out[0] == shlex.join(create + ['--spot'])
  assert out[-1] == '# ' + shlex.join(describe)
  code, out, _ = run_cli(capsys, 'submit', *queued, '--action', 'delete')
  assert out == [shlex.join(qr + ['delete', 'my-tpu', ZONE, '--project=proj-1', '--force'])]


def test_tpu_single_steps_dry_run(capsys):
  def step(*argv):
    code, out, err = run_cli(capsys, 'submit', *SUBMIT_TPU, '--dry-run', *argv)
    assert code == 0, err
    return out
  assert step('--action', 'stop') == [shlex.join(SSH_ALL + ['--command=' + STOP])]
  assert step('--action', 'setup') == [PACK, shlex.join(SCP),
                                       shlex.join(SSH_ALL + ['--command=' + SETUP])]
  assert step('--action', 'run', 'tiny', 'train.steps=2') == [
      shlex.join(SSH_ALL + ['--command=' + RUN])]
  logs = 'cd jaxlab && tail -n 100 -F "$(ls -t logs/tiny.*.log | head -n 1)"'
  assert step('--action', 'logs', '--worker', '1', 'tiny') == [shlex.join(
      G + ['tpu-vm', 'ssh', 'my-tpu', ZONE, '--worker=1', '--command=' + logs])]
  assert step('--action', 'delete') == [shlex.join(G + ['tpu-vm', 'delete', 'my-tpu', ZONE])]
  # without --accelerator, launch = setup + run on an existing TPU
  assert step('tiny', 'train.steps=2') == [PACK, shlex.join(SCP),
                                           shlex.join(SSH_ALL + ['--command=' + SETUP]),
                                           shlex.join(SSH_ALL + ['--command=' + RUN])]


def test_tpu_options_from_environment(capsys, monkeypatch):
  monkeypatch.setenv('TPU_NAME', 'my-tpu')
  monkeypatch.setenv('ZONE', 'us-east5-a')
  code, out, _ = run_cli(capsys, 'submit', '--target', 'tpu', '--action', 'stop', '--dry-run')
  assert code == 0 and out == [shlex.join(SSH_ALL + ['--command=' + STOP])]


def test_slurm_dry_run_script_exact(capsys, tmp_path):
  code, out, err = run_cli(capsys, 'submit', '--target', 'slurm', '--nodes', '2',
                           '--gpus-per-node', '8', '--partition', 'h100', '--time', '04:00:00',
                           '--account', 'lab', '--shared-dir', str(tmp_path), '--dry-run',
                           'tiny', 'train.steps=2', f'train.workdir={tmp_path}')
  assert code == 0, err
  jobs = tmp_path / 'tiny' / 'slurm'
  assert out == [
      f'# {jobs}/run.sbatch',
      '#!/bin/bash',
      '#SBATCH --job-name=tiny',
      '#SBATCH --nodes=2',
      '#SBATCH --ntasks-per-node=8',          # one task per GPU
      '#SBATCH --gpus-per-node=8',
      '#SBATCH --partition=h100',
      '#SBATCH --time=04:00:00',
      '#SBATCH --account=lab',
      '#SBATCH --signal=USR1@300',            # SIGUSR1 5 minutes before the time limit
      '#SBATCH --requeue',
      '#SBATCH --open-mode=append',           # one log for every leg of a requeued job
      f'#SBATCH --output={jobs}/%j.out',
      f'#SBATCH --error={jobs}/%j.err',
      '# written by `launch.py submit|sweep --target slurm`; jax.distributed reads SLURM_*',
      'set -euo pipefail',
      *XLA,
      f'cd {ROOT}',
      f'if [ -x {VENV_PY} ]; then python={VENV_PY}; else python=python3; fi',
      'echo "python: $python ($("$python" --version 2>&1))"',
      'code=0',
      f'srun "$python" launch.py run tiny train.steps=2 train.workdir={tmp_path} || code=$?',
      'if [ "$code" -eq 138 ]; then   # stopped by SIGUSR1, checkpoint saved',
      '  echo "stopped by SIGUSR1 (300 s before the time limit) with a checkpoint: requeueing '
      'job $SLURM_JOB_ID to resume from it"',
      '  scontrol requeue "$SLURM_JOB_ID"',
      '  exit 0',
      'fi',
      'exit "$code"',
      f'sbatch --parsable {jobs}/run.sbatch']
  assert not jobs.exists()


def test_sweep_slurm_is_one_job_array(capsys, tmp_path):
  code, out, err = run_cli(capsys, 'sweep', 'tiny', '--grid', 'train.steps=1,2', '--grid',
                           'optim.lr=1e-3,3e-3,1e-2', f'train.workdir={tmp_path}', '--target',
                           'slurm', '--python', 'python3', '--signal-before', '0', '--dry-run')
  assert code == 0, err
  assert '#SBATCH --array=0-5' in out
  assert f'#SBATCH --output={tmp_path}/tiny/slurm/%A_%a.out' in out
  assert out[-4:-1] == [   # --signal-before 0: no signal, no requeue
      'python=python3', 'echo "python: $python ($("$python" --version 2>&1))"',
      f'srun "$python" launch.py sweep tiny train.workdir={tmp_path} --grid train.steps=1,2 '
      '--grid optim.lr=1e-3,3e-3,1e-2 --point "$SLURM_ARRAY_TASK_ID"']
  assert not any(line.startswith(('#SBATCH --signal', '#SBATCH --requeue')) for line in out)
  assert '#SBATCH --ntasks-per-node=8' in out and '#SBATCH --nodes=1' in out


@pytest.mark.parametrize('code, venv', [(138, True), (143, False), (0, True)])
def test_slurm_script_requeues_only_a_run_stopped_by_sigusr1(tmp_path, monkeypatch, code, venv):
  """The sbatch script run by bash with a fake srun that exits with `code` (138: the run
  stopped on SLURM's SIGUSR1 and saved) and a fake scontrol; in a checkout with or
  without .venv/bin/python."""
  checkout, bin_dir = tmp_path / 'checkout', tmp_path / 'bin'
  bin_dir.mkdir()
  stub = checkout / '.venv' / 'bin' / 'python'
  stub.parent.mkdir(parents=True)
  if venv:
    stub.write_text('#!/bin/sh\necho Python 3.0-venv\n')
    stub.chmod(0o755)
  for tool, exit_code in (('srun', code), ('scontrol', 0)):
    (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n'
                                f'exit {exit_code}\n')
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setattr(slurm, 'ROOT', checkout)
  text = slurm.script(['launch.py', 'run', 'tiny'], name='tiny', log_dir=tmp_path, nodes=1,
                      gpus=1)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', SLURM_JOB_ID='77')
  proc = subprocess.run(['bash', '-c', text], capture_output=True, text=True, env=env,
                        timeout=60)
  python = str(stub) if venv else 'python3'
  calls = (tmp_path / 'calls').read_text().splitlines()
  assert calls[0] == f'srun {python} launch.py run tiny'
  assert proc.stdout.splitlines()[0].startswith(f'python: {python} (Python 3.')
  if code == 138:
    assert calls[1:] == ['scontrol requeue 77'] and proc.returncode == 0
    assert 'requeueing job 77' in proc.stdout
  else:
    assert calls[1:] == [] and proc.returncode == code


def test_signal_before_must_fit_in_the_time_limit(capsys):
  argv = ['submit', '--target', 'slurm', '--dry-run', 'tiny']
  code, _, err = run_cli(capsys, *argv, '--time', '5', '--signal-before', '300')
  assert code == 2 and err == ('error: --signal-before 300 is not shorter than --time 5 (300 s): '
                               'the job would be stopped and requeued before it trains; raise '
                               '--time or lower --signal-before (0: no requeue)\n')
  code, _, err = run_cli(capsys, *argv, '--signal-before', '70000')
  assert code == 2 and '--signal-before 70000 must be 0 (no signal, no requeue)' in err
  code, out, err = run_cli(capsys, *argv, '--time', '1-0:10', '--signal-before', '600')
  assert code == 0 and '#SBATCH --signal=USR1@600' in out and '#SBATCH --time=1-0:10' in out
  assert slurm.check_signal_before(None, '6') == 300 and slurm.check_signal_before(0, '1') == 0


def test_sweep_tpu_is_one_detached_loop(capsys):
  code, out, err = run_cli(capsys, 'sweep', 'tiny', '--grid', 'train.steps=1,2,3', *TPU,
                           '--dry-run')
  assert code == 0, err
  loop = ('(trap "" HUP; set +e; for i in $(seq 0 2); do .venv/bin/python launch.py sweep tiny '
          '--grid train.steps=1,2,3 --point $i > logs/tiny.point$i.worker$W.log 2>&1 < /dev/null; '
          'rc=$?; echo "point $i exited with $rc"; [ $rc -lt 128 ] || exit $rc; done) > '
          'logs/tiny.sweep.worker$W.log 2>&1 < /dev/null & echo $! > logs/tiny.worker$W.pid; '
          'echo "$(hostname)": started ~/jaxlab/logs/tiny.sweep.worker$W.log')
  assert out == [PACK, shlex.join(SCP), shlex.join(SSH_ALL + ['--command=' + SETUP]),
                 shlex.join(SSH_ALL + ['--command=' + START + loop])]


def test_sweep_point_selects_and_trains_only_that_point(capsys, monkeypatch, tmp_path):
  grid = ['sweep', 'tiny', '--grid', 'train.steps=3,5,7', f'train.workdir={tmp_path}']
  code, out, _ = run_cli(capsys, *grid, '--point', '1', '--dry-run')
  assert code == 0 and out[1:] == ['  --point 1: train.steps=5']
  code, _, err = run_cli(capsys, *grid, '--point', '3')
  assert code == 2 and '--point 3 is out of range: this sweep has 3 points, 0 to 2' in err
  import jaxlab.train
  trained = []
  monkeypatch.setattr(jaxlab.train, 'train', lambda cfg, origin=None: trained.append(cfg))
  code, _, err = run_cli(capsys, *grid, '--point', '2')
  assert code == 0, err
  assert [(c.name, c.train.steps) for c in trained] == [('train.steps=7', 7)]


def test_bad_override_exits_2_before_anything(capsys, tmp_path, monkeypatch):
  bin_dir = _fake_tools(tmp_path, monkeypatch)
  for argv in (['submit', *SUBMIT_TPU, 'tiny', 'model.d_modle=64'],
               ['submit', '--target', 'slurm', 'tiny', 'model.d_modle=64'],
               ['sweep', 'tiny', '--grid', 'train.steps=1,2', 'model.d_modle=64', *TPU]):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == []
    assert err == "error: unknown config key 'model.d_modle'; did you mean 'model.d_model'?\n"
  assert not (bin_dir / 'calls.jsonl').exists()


def test_tpu_run_asks_for_shared_checkpoints_unless_given(capsys):
  _, _, err = run_cli(capsys, 'submit', *SUBMIT_TPU, '--dry-run', 'tiny')
  assert 'set train.checkpoint_dir=gs://BUCKET/PATH' in err
  _, _, err = run_cli(capsys, 'submit', *SUBMIT_TPU, '--dry-run', 'tiny',
                      'train.checkpoint_dir=gs://bucket/ckpt')
  assert 'checkpoint_dir' not in err


@pytest.mark.parametrize('argv, tool', [
    (['submit', *SUBMIT_TPU, 'tiny', '{workdir}'], 'gcloud'),
    (['submit', *SUBMIT_TPU, '--action', 'stop'], 'gcloud'),
    (['submit', '--target', 'slurm', 'tiny', '{workdir}'], 'sbatch'),
    (['sweep', 'tiny', '--grid', 'train.steps=1,2', '--target', 'slurm', '{workdir}'], 'sbatch')])
def test_missing_tool_exits_2_and_names_it(capsys, monkeypatch, tmp_path, argv, tool):
  monkeypatch.setenv('PATH', str(tmp_path))       # an empty directory
  argv = [a.format(workdir=f'train.workdir={tmp_path}') for a in argv]
  code, out, err = run_cli(capsys, *argv)
  assert code == 2, err
  assert f"error: '{tool}' is not on PATH" in err
  assert not os.path.exists(TARBALL) and not (tmp_path / 'tiny').exists()


def test_options_of_another_target_are_refused(capsys):
  code, _, err = run_cli(capsys, 'submit', '--target', 'slurm', '--tpu-name', 'x', 'tiny')
  assert code == 2 and '--tpu-name applies to --target tpu, not --target slurm' in err
  code, _, err = run_cli(capsys, 'sweep', 'tiny', '--grid', 'train.steps=1,2', '--nodes', '2')
  assert code == 2 and '--nodes applies to --target slurm, not --target local' in err
  code, _, err = run_cli(capsys, 'submit', '--target', 'tpu', '--zone', 'z', 'tiny')
  assert code == 2 and '--target tpu needs --tpu-name (or $TPU_NAME)' in err


def _fake_tools(tmp_path, monkeypatch):
  """gcloud and sbatch that record their argv; describe says NOT_FOUND until create."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  script = textwrap.dedent(f'''\
      #!{sys.executable}
      import json, os, sys, tarfile
      here = {str(bin_dir)!r}
      argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
      with open(os.path.join(here, 'calls.jsonl'), 'a') as f:
        f.write(json.dumps(argv) + '\\n')
      states = os.path.join(here, 'states')
      if argv[0] == 'sbatch':
        print('4242;cluster')
      elif 'create' in argv:
        ready = 'ACTIVE' if 'queued-resources' in argv else 'READY'
        open(states, 'w').write('WAITING_FOR_RESOURCES\\n' + ready)
      elif 'describe' in argv:
        if not os.path.exists(states):
          sys.exit(print('ERROR: NOT_FOUND: Resource was not found', file=sys.stderr) or 1)
        lines = open(states).read().split()
        print(lines[0])
        open(states, 'w').write('\\n'.join(lines[1:] or lines))
      elif 'scp' in argv:
        names = tarfile.open(argv[5]).getnames()
        open(os.path.join(here, 'packed.json'), 'w').write(json.dumps(names))
      ''')
  for name in ('gcloud', 'sbatch'):
    (bin_dir / name).write_text(script)
    (bin_dir / name).chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  return bin_dir


def _calls(bin_dir):
  return [json.loads(line) for line in (bin_dir / 'calls.jsonl').read_text().splitlines()]


def test_tpu_launch_runs_the_dry_run_commands(capsys, monkeypatch, tmp_path):
  bin_dir = _fake_tools(tmp_path, monkeypatch)
  monkeypatch.setattr(tpu, 'POLL_SECONDS', 0)
  argv = ['submit', *SUBMIT_TPU, '--queued', '--accelerator', 'v5p-32', 'tiny', 'train.steps=2',
          MIRROR]
  code, dry, _ = run_cli(capsys, *argv, '--dry-run')
  assert code == 0
  commands = [shlex.split(line) for line in dry if not line.startswith('#')]
  describe, create, scp, setup, run = commands
  code, out, err = run_cli(capsys, *argv)
  assert code == 0, err
  # NOT_FOUND -> create -> WAITING_FOR_RESOURCES -> ACTIVE, then setup and run
  assert _calls(bin_dir) == [describe, create, describe, describe, scp, setup, run]
  assert any('is WAITING_FOR_RESOURCES; waiting until ACTIVE' in line for line in out)
  packed = json.loads((bin_dir / 'packed.json').read_text())
  assert {'launch.py', 'jaxlab/launch/submit/tpu.py', 'experiments/tiny.py'} <= set(packed)
  assert not any(n.startswith(('.venv/', 'runs/', '.git/')) for n in packed)
  assert not os.path.exists(TARBALL)
  # the TPU exists now: a second launch goes straight to setup + run
  (bin_dir / 'calls.jsonl').unlink()
  assert run_cli(capsys, *argv)[0] == 0
  assert _calls(bin_dir) == [describe, scp, setup, run]


def test_slurm_submit_writes_script_and_prints_job_id(capsys, monkeypatch, tmp_path):
  bin_dir = _fake_tools(tmp_path, monkeypatch)
  code, out, err = run_cli(capsys, 'submit', '--target', 'slurm', 'tiny', 'train.steps=2',
                           f'train.workdir={tmp_path}')
  assert code == 0, err
  path = tmp_path / 'tiny' / 'slurm' / 'run.sbatch'
  assert _calls(bin_dir) == [['sbatch', '--parsable', str(path)]]
  assert out[-1] == f'submitted SLURM job 4242; logs: {path.parent}/4242.out'
  lines = path.read_text().splitlines()
  assert set(XLA) <= set(lines)
  srun = f'srun "$python" launch.py run tiny train.steps=2 train.workdir={tmp_path} || code=$?'
  assert srun in lines


# ----------------------------------------------------------------------------- remote scripts

@pytest.fixture
def sandbox(tmp_path, monkeypatch):
  """A worker's home: ~/jaxlab/.venv/bin/python is a stub that echoes its arguments and
  exits with 1 for --point 0, 143 (as after SIGTERM) for --point 1, else sleeps."""
  home = tmp_path / 'home'
  stub = home / 'jaxlab' / '.venv' / 'bin' / 'python'
  stub.parent.mkdir(parents=True)
  stub.write_text('#!/bin/bash\necho "args: $*"\ncase "$*" in *"--point 0") exit 1;; '
                  '*"--point 1") exit 143;; esac\nexec sleep 60\n')
  stub.chmod(0o755)
  fake_bin = tmp_path / 'bin'        # no metadata server here: curl fails, W = hostname
  fake_bin.mkdir()
  (fake_bin / 'curl').write_text('#!/bin/sh\nexit 7\n')
  (fake_bin / 'curl').chmod(0o755)
  monkeypatch.setenv('PATH', f'{fake_bin}{os.pathsep}{os.environ["PATH"]}')
  return home


def _remote(home, script):
  return subprocess.run(['bash', '-c', script], cwd=home, capture_output=True, text=True,
                        timeout=30)


def _wait_for(predicate, seconds=10.0):
  end = time.time() + seconds
  while time.time() < end:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_remote_run_is_detached_refuses_a_second_and_stops(sandbox):
  logs = sandbox / 'jaxlab' / 'logs'
  start = _remote(sandbox, tpu.run_script('tiny', ['launch.py', 'run', 'tiny']))
  assert start.returncode == 0, start.stderr
  (pid_file,) = logs.glob('tiny.worker*.pid')
  pgid = int(pid_file.read_text())
  try:
    assert _wait_for(lambda: 'args: launch.py run tiny' in next(logs.glob('*.log')).read_text())
    busy = _remote(sandbox, tpu.run_script('other', ['launch.py', 'run', 'other']))
    assert busy.returncode == 1 and 'is still running; stop it first' in busy.stderr
    stop = _remote(sandbox, tpu.STOP)
    assert f'sent SIGTERM to logs/{pid_file.stem} (process group {pgid})' in stop.stdout
    assert _wait_for(lambda: not _alive(pgid))
    assert not pid_file.exists()
  finally:
    if _alive(pgid):
      os.killpg(pgid, signal.SIGKILL)


def _alive(pgid):
  try:
    os.killpg(pgid, 0)
    return True
  except ProcessLookupError:
    return False


def test_remote_sweep_runs_points_in_order_and_stops_on_a_signal(sandbox):
  logs = sandbox / 'jaxlab' / 'logs'
  argv = ['launch.py', 'sweep', 'tiny', '--grid', 'train.steps=1,2,3']
  assert _remote(sandbox, tpu.sweep_script('tiny', argv, 3)).returncode == 0
  (sweep_log,) = logs.glob('tiny.sweep.worker*.log')
  assert _wait_for(lambda: 'point 1 exited with 143' in sweep_log.read_text())
  assert sweep_log.read_text() == 'point 0 exited with 1\npoint 1 exited with 143\n'
  point0 = next(logs.glob('tiny.point0.worker*.log')).read_text()
  assert point0 == 'args: launch.py sweep tiny --grid train.steps=1,2,3 --point 0\n'
  assert not list(logs.glob('tiny.point2.*'))     # a signal ends the sweep


# ----------------------------------------------------------------------------- tpu/*.sh, flags

def test_tpu_scripts_are_executable_valid_bash_and_call_submit():
  scripts = sorted((ROOT / 'tpu').glob('*.sh'))
  assert [s.stem for s in scripts] == ['create', 'delete', 'logs', 'run', 'setup', 'stop']
  for script in scripts:
    assert script.stat().st_mode & stat.S_IXUSR, script
    assert subprocess.run(['bash', '-n', str(script)]).returncode == 0
    assert f'submit --target tpu --action {script.stem} "$@"' in script.read_text()
  env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
  out = subprocess.run([str(ROOT / 'tpu' / 'stop.sh'), '--dry-run'], capture_output=True,
                       text=True, env=dict(env, TPU_NAME='my-tpu', ZONE='us-east5-a'))
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [shlex.join(SSH_ALL + ['--command=' + STOP])]


def test_slurm_xla_flags_are_known_to_this_jaxlib():
  code = 'import jax.numpy as jnp; print(float(jnp.ones(2).sum()))'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       env=dict(os.environ, XLA_FLAGS=gpu_flags.flags_string(), JAX_PLATFORMS='cpu'))
  assert out.returncode == 0 and out.stdout.strip() == '2.0', out.stderr[-500:]


def test_experiment_paths_are_made_portable(capsys, tmp_path):
  code, out, _ = run_cli(capsys, 'submit', *SUBMIT_TPU, '--action', 'run', '--dry-run',
                         str(ROOT / 'experiments' / 'tiny.py'))
  assert code == 0 and 'launch.py run experiments/tiny.py > logs/tiny' in out[0]
  outside = tmp_path / 'mine.py'
  outside.write_text((ROOT / 'experiments' / 'tiny.py').read_text())
  code, _, err = run_cli(capsys, 'submit', *SUBMIT_TPU, '--action', 'run', '--dry-run',
                         str(outside))
  assert code == 2 and 'lies outside the project' in err
  code, out, _ = run_cli(capsys, 'submit', '--target', 'slurm', '--dry-run', str(outside))
  assert code == 0 and f'srun "$python" launch.py run {outside} || code=$?' in out
