"""Nothing silently lost or corrupted (issue 14), replayed case by case on the tiny
experiment: corrupt checkpoints, unreadable ones, damaged metrics, the run-directory
lock, the config guard, a full disk, a read-only directory, a stop agreed by two
processes, SIGINT during the first compile, and bad inputs. Each case checks the exit
code, the one-line message, and that nothing was lost: the losses after a resume equal
an uninterrupted run's bit for bit and no metrics record is missing.

Most runs are in-process through `jaxlab.launch.cli.main` (no interpreter start-up, compiled
programs cached); a finished reference run is copied instead of training again. Only
the lock holder, the two-process stop, SIGINT and the full disk need other processes.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from jaxlab.launch import cli

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
# 12 steps, a checkpoint every 4 (kept: 4, 8, 12), val loss at 6 and 12, every step logged.
RUN = ['train.steps=12', 'train.checkpoint_every=4', 'train.eval_every=6', 'train.log_every=1',
       'train.keep_checkpoints=5']
IS_ROOT = os.geteuid() == 0


def main(capsys, *args) -> tuple[int, str, str]:
  """launch.py in this process: (exit code, stdout, stderr)."""
  capsys.readouterr()
  rc = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return rc, out, err


def run(capsys, workdir, *extra, experiment='tiny'):
  return main(capsys, 'run', experiment, *RUN, *extra, f'train.workdir={workdir}')


def records(run_dir):
  return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def trajectory(run_dir):
  """What must not depend on interruptions: every logged number but timings."""
  keep = ('step', 'tokens', 'flops', 'loss', 'val_loss', 'lr', 'grad_norm', 'param_norm')
  return [{k: r[k] for k in keep if k in r} for r in records(run_dir)]


def one_error_line(err: str) -> str:
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def copy_run(reference, dest, keep_steps=None):
  """A copy of the reference run dir, optionally with only some checkpoints and without
  its summary (so that rerunning it resumes)."""
  shutil.copytree(reference, dest)
  if keep_steps is not None:
    for p in (dest / 'checkpoints').iterdir():
      if int(p.name) not in keep_steps:
        shutil.rmtree(p)
    (dest / 'summary.json').unlink()
  return dest


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted run that every resumed one must reproduce bit for bit."""
  workdir = tmp_path_factory.mktemp('ref')
  rc = cli.main(['run', 'tiny', *RUN, f'train.workdir={workdir}'])
  assert rc == 0
  run_dir = workdir / 'tiny'
  assert [r['step'] for r in records(run_dir)] == list(range(1, 13))
  assert sorted(int(p.name) for p in (run_dir / 'checkpoints').iterdir()) == [4, 8, 12]
  return run_dir


@pytest.fixture
def no_compile():
  """Fails the test if anything is compiled (or read from the compilation cache)."""
  events = []

  def listen(event, *args, **kwargs):
    if 'compil' in event:
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  yield events
  jax.monitoring.unregister_event_duration_listener(listen)
  assert events == [], events


# ------------------------------------------------------------------ checkpoints

def test_corrupt_checkpoint_and_damaged_metrics_resume_bit_exactly(reference, tmp_path, capsys):
  """Issue cases 1 (flipped bytes restore silently) and 7 (a line `42`), and a record cut
  mid-line at the checkpoint step it resumes from: all reported, nothing lost. The data
  files are zstd-compressed, so where 64 flipped bytes land decides whether orbax fails
  to decode the step ("cannot be read") or decodes wrong values that the fingerprint
  catches ("is corrupt"); either way the step is set aside. The fingerprint's own path is
  pinned down deterministically by the next test."""
  run_dir = copy_run(reference, tmp_path / 'tiny', keep_steps=[4, 8, 12])
  data = run_dir / 'checkpoints' / '12' / 'state' / 'ocdbt.process_0' / 'd'
  largest = max(data.iterdir(), key=lambda f: f.stat().st_size)
  raw = bytearray(largest.read_bytes())
  mid = len(raw) // 2
  raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])   # XOR 64 bytes
  largest.write_bytes(bytes(raw))
  lines = (run_dir / 'metrics.jsonl').read_text().splitlines()
  lines = lines[:7] + [lines[7][:30]]          # steps 1-7, then step 8's record cut short
  lines.insert(3, '42')                        # valid JSON, not an object
  (run_dir / 'metrics.jsonl').write_text('\n'.join(lines))

  rc, out, err = run(capsys, tmp_path)
  assert rc == 0, err
  assert re.search(r'checkpoint step 12 in \S+ (is corrupt|cannot be read) \(', err), err
  assert (tmp_path / 'tiny' / 'checkpoints_unreadable' / '12').is_dir()
  assert f'resuming {run_dir} from step 8' in out
  assert 'line 4 is not a JSON object' in err and 'line 9 is cut short' in err
  assert 'restored it from the checkpoint' in err
  assert 'Traceback' not in err
  assert trajectory(run_dir) == trajectory(reference)
  assert json.loads((run_dir / 'summary.json').read_text())['status'] == 'completed'


def test_checkpoint_whose_values_changed_is_refused_by_its_fingerprint(reference, tmp_path,
                                                                       capsys):
  """A step whose files decode but whose values are not the saved ones (here one entry of
  the saved fingerprint off by one, which to the verifier is the same thing) is named
  as corrupt with the array it found, set aside, and the run resumes from the step
  before, bit for bit."""
  run_dir = copy_run(reference, tmp_path / 'tiny', keep_steps=[4, 8, 12])
  meta_file = run_dir / 'checkpoints' / '12' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  meta['fingerprint'][-1] = (meta['fingerprint'][-1] + 1) % 2**32
  meta_file.write_text(json.dumps(meta))
  rc, out, err = run(capsys, tmp_path)
  assert rc == 0, err
  assert re.search(r'checkpoint step 12 in \S+ is corrupt \(Unverified: the restored state '
                   r'differs from the saved one in 1 array\(s\) \(\S+\)\)', err), err
  assert (tmp_path / 'tiny' / 'checkpoints_unreadable' / '12').is_dir()
  assert f'resuming {run_dir} from step 8' in out
  assert 'Traceback' not in err
  assert trajectory(run_dir) == trajectory(reference)


def test_all_checkpoints_unreadable_start_fresh_and_keep_the_old_metrics(reference, tmp_path,
                                                                          capsys):
  """Issue case 2: every checkpoint unreadable -> a truly fresh run (the failed restores
  moved no iterator), and the old metrics.jsonl kept as .bak-<time>, not emptied."""
  run_dir = copy_run(reference, tmp_path / 'tiny')
  for meta in (run_dir / 'checkpoints').glob('*/state/_METADATA'):
    meta.unlink()
  rc, out, err = run(capsys, tmp_path)
  assert rc == 0, err
  for step in (4, 8, 12):
    assert f'checkpoint step {step} in' in err and (
        tmp_path / 'tiny' / 'checkpoints_unreadable' / str(step)).is_dir()
  assert 'resuming' not in out
  (backup,) = run_dir.glob('metrics.jsonl.bak-*')
  assert backup.read_text() == (reference / 'metrics.jsonl').read_text()
  # A fresh start is a fresh run: the step-1 loss (and everything after) as the reference.
  assert trajectory(run_dir) == trajectory(reference)
  assert json.loads((run_dir / 'config.json').read_text())['history'] == []


# --------------------------------------------------------------------- the guard

def test_config_guard_refuses_what_changes_the_run_with_both_ways_out(reference, tmp_path,
                                                                      capsys, no_compile):
  run_dir = copy_run(reference, tmp_path / 'tiny')
  before = (run_dir / 'metrics.jsonl').read_text()
  rc, _, err = run(capsys, tmp_path, 'model.d_model=64', 'optim.lr=5e-3')
  line = one_error_line(err)
  assert rc == 2
  assert 'model.d_model: 32 -> 64' in line and 'optim.lr: 0.01 -> 0.005' in line
  assert f'python launch.py run {run_dir}' in line and 'pick another name=' in line
  assert (run_dir / 'metrics.jsonl').read_text() == before


def test_config_guard_accepts_eval_and_lr_changes_after_a_nan_stop(reference, tmp_path, capsys):
  """What the NaN error advises (lower optim.lr) and an eval-only change resume, with a
  warning, recorded in config.json's history at the step they apply from."""
  run_dir = copy_run(reference, tmp_path / 'tiny')
  summary = json.loads((run_dir / 'summary.json').read_text())
  (run_dir / 'summary.json').write_text(json.dumps(dict(summary, status='diverged')))
  rc, out, err = run(capsys, tmp_path, 'optim.lr=5e-3', 'train.eval_batches=1')
  assert rc == 0, err
  assert 'already finished at step 12' in out
  assert 'warning: resuming with train.eval_batches: 2 -> 1' in err
  assert 'warning: resuming a diverged run with optim.lr: 0.01 -> 0.005' in err
  config = json.loads((run_dir / 'config.json').read_text())
  assert config['optim']['lr'] == 5e-3
  assert config['history'] == [{'step': 12, 'changes': {
      'optim.lr': [0.01, 0.005], 'train.eval_batches': [2, 1],
      'train.workdir': [str(reference.parent), str(tmp_path)]}}]   # a copy: its new place


def test_a_finished_run_without_its_summary_gets_it_back(reference, tmp_path, capsys):
  """summary.json deleted (or never written: a kill between the last checkpoint and the
  summary): the rerun rebuilds it from metrics.jsonl instead of failing."""
  run_dir = copy_run(reference, tmp_path / 'tiny')
  (run_dir / 'summary.json').unlink()
  rc, out, err = run(capsys, tmp_path)
  assert rc == 0, err
  assert 'already finished at step 12' in out and 'rebuilt from metrics.jsonl' in out
  want = json.loads((reference / 'summary.json').read_text())
  got = json.loads((run_dir / 'summary.json').read_text())
  assert got['status'] == 'completed' and got['summary_rebuilt'] is True
  for key in ('step', 'tokens', 'flops', 'final_loss', 'final_val_loss', 'val_tokens'):
    assert got[key] == want[key], key


def test_run_dir_without_checkpoints_takes_a_new_config(reference, tmp_path, capsys):
  """A failed attempt left config.json (and metrics) but no checkpoint: the corrected
  command starts afresh with a note; the earlier metrics are kept."""
  run_dir = copy_run(reference, tmp_path / 'tiny')
  shutil.rmtree(run_dir / 'checkpoints')
  rc, out, err = run(capsys, tmp_path, 'data.seed=1')
  assert rc == 0, err
  assert 'holds no checkpoint: starting it afresh with the new config' in err
  assert 'data.seed: 0 -> 1' in err
  assert json.loads((run_dir / 'config.json').read_text())['data']['seed'] == 1
  assert [r['step'] for r in records(run_dir)] == list(range(1, 13))
  assert records(run_dir)[0]['loss'] != records(reference)[0]['loss']   # other data order
  assert len(list(run_dir.glob('metrics.jsonl.bak-*'))) == 1


def test_copied_run_dir_resumes_under_its_new_name(reference, tmp_path, capsys):
  copied = copy_run(reference, tmp_path / 'copied', keep_steps=[4, 8])
  rc, out, err = main(capsys, 'run', copied)
  assert rc == 0, err
  assert f'resuming {copied} from step 8' in out
  assert trajectory(copied) == trajectory(reference)
  config = json.loads((copied / 'config.json').read_text())
  assert config['name'] == 'copied'
  assert config['history'][0]['changes']['name'] == ['tiny', 'copied']


# ---------------------------------------------------------------------- the lock

def test_a_live_run_locks_its_dir_and_a_killed_one_does_not(reference, tmp_path, capsys):
  """Issue case 3: a second `run` on a live run dir exits 2 naming the holder's PID and
  host, touching nothing; once the holder is killed (-9), the same command resumes."""
  run_dir = copy_run(reference, tmp_path / 'tiny', keep_steps=[4, 8])
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from jaxlab.rundir.directory import RunDir; '
       'd = RunDir(sys.argv[1]); d.lock(); print("locked", flush=True); time.sleep(600)', str(run_dir)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    before = (run_dir / 'metrics.jsonl').read_text()
    rc, _, err = run(capsys, tmp_path)
    line = one_error_line(err)
    assert rc == 2
    assert f'pid {holder.pid} on host {socket.gethostname()}' in line
    assert (run_dir / 'metrics.jsonl').read_text() == before
    assert sorted(p.name for p in (run_dir / 'checkpoints').iterdir()) == ['4', '8']
  finally:
    holder.kill()
    holder.wait()
  rc, out, err = run(capsys, tmp_path)   # the lock file is still there, its flock is not
  assert rc == 0, err
  assert trajectory(run_dir) == trajectory(reference)


# ------------------------------------------------------------------- the storage

@pytest.fixture
def tmpfs(tmp_path):
  """A small tmpfs (root only), unmounted afterwards."""
  if not IS_ROOT:
    pytest.skip('needs root to mount a small tmpfs (disk full / read-only cases)')
  mounted = []

  def mount(name, options):
    path = tmp_path / name
    path.mkdir()
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
      pytest.skip(f'mount -t tmpfs failed: {proc.stderr.strip()}')
    mounted.append(path)
    return path
  yield mount
  for path in mounted:
    subprocess.run(['umount', str(path)], check=False)


def test_full_disk_is_one_line_and_the_run_resumes_bit_exactly(reference, tmpfs, capsys):
  """600 KiB hold the metrics and the step-4 checkpoint, not the step-8 one."""
  workdir = tmpfs('full', 'size=600k')
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', *RUN,
                         f'train.workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  line = one_error_line(proc.stderr)
  assert proc.returncode == 2
  assert 'No space left on device' in line and 'rerun the same command to resume' in line
  summary = json.loads((workdir / 'tiny' / 'summary.json').read_text())
  assert summary['status'] == 'failed'
  subprocess.run(['mount', '-o', 'remount,size=64m', str(workdir)], check=True)
  rc, out, err = run(capsys, workdir)
  assert rc == 0, err
  assert f'resuming {workdir / "tiny"} from step 4' in out
  assert trajectory(workdir / 'tiny') == trajectory(reference)


def test_read_only_workdir_is_one_line(tmpfs, capsys, no_compile):
  workdir = tmpfs('ro', 'ro,size=64k')
  rc, _, err = run(capsys, workdir)
  line = one_error_line(err)
  assert rc == 2
  assert f'cannot create the run directory {workdir / "tiny"}: Read-only file system' in line


# -------------------------------------------------------------------- signals

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_stop_together_when_only_one_gets_sigterm(tmp_path):
  """Gloo on localhost, one device each; only process 1 gets SIGTERM. Both must save the
  same step and exit 143 (before: process 0 went on into the next step's collectives
  while process 1 waited in the checkpoint's barrier)."""
  port = _free_port()
  env = xla_env.env(1)
  procs = [subprocess.Popen(
      [sys.executable, 'launch.py', 'run', 'tiny', 'train.steps=1000', 'train.log_every=1',
       'train.eval_batches=0', 'mesh.dcn_data=2', f'mesh.coordinator_address=127.0.0.1:{port}',
       'mesh.num_processes=2', f'mesh.process_id={i}', f'train.workdir={tmp_path}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  metrics = tmp_path / 'tiny' / 'metrics.jsonl'
  deadline = time.time() + 240
  try:
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
      assert time.time() < deadline and all(p.poll() is None for p in procs), 'no progress'
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    results = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  stops = []
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 128 + signal.SIGTERM, err
    assert 'Traceback' not in err
    (stop,) = [line for line in err.splitlines() if line.startswith('stopped by SIGTERM')]
    stops.append(stop)
  assert stops[0] == stops[1]                    # the same step on both processes
  step = int(stops[0].split('at step ')[1].split(';')[0])
  assert str(step) in os.listdir(tmp_path / 'tiny' / 'checkpoints')
  summary = json.loads((tmp_path / 'tiny' / 'summary.json').read_text())
  assert (summary['status'], summary['step']) == ('preempted', step)
  assert [r['step'] for r in records(tmp_path / 'tiny')] == list(range(1, step + 1))


def test_sigint_during_the_first_compile_exits_130_cleanly(tmp_path):
  """Issue case 6 (a KeyboardInterrupt traceback, then a segfault). Cold compiles: the
  shared compilation cache is left out of this process's environment, and JAX's compile
  log says when the first one has begun; the run stops before compiling anything else."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['JAX_LOG_COMPILES'] = '1'
  proc = subprocess.Popen([sys.executable, 'launch.py', 'run', 'tiny',
                           f'train.workdir={tmp_path}'], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if 'Compiling jit(' in line:
      break
  assert proc.poll() is None, ''.join(seen)
  proc.send_signal(signal.SIGINT)
  err = ''.join(seen) + proc.stderr.read()
  proc.wait(timeout=120)
  assert proc.returncode == 128 + signal.SIGINT, err
  assert 'Traceback' not in err
  assert 'stopped by SIGINT at step 0; nothing trained in this session' in err


# ------------------------------------------------------------------ bad inputs

BAD_EXPERIMENTS = {
    'syntax.py': ('def config(:\n', "has a syntax error at line 1"),
    'raises.py': ('raise RuntimeError("no data here")\n',
                  'raised RuntimeError while importing it (line 1'),
    'config_raises.py': ('def config():\n  return 1 / 0\n',
                         'raised ZeroDivisionError while running config() (line 2'),
}


@pytest.mark.parametrize('name', sorted(BAD_EXPERIMENTS))
def test_broken_experiment_file_is_one_line(tmp_path, capsys, name, no_compile):
  text, expected = BAD_EXPERIMENTS[name]
  (tmp_path / name).write_text(text)
  rc, _, err = main(capsys, 'run', tmp_path / name)
  assert rc == 2 and expected in one_error_line(err) and name in err


BAD_OVERRIDES = [
    (['name=' + 'x' * 300], 'name= is 300 bytes long; a directory name may have at most 255'),
    (['model.d_model=1e12'], 'model.d_model=1000000000000 is too large'),
    (['optim.lr=inf'], "optim.lr='inf' is not valid: expected a finite number"),
    (['optim.lr=1e400'], "optim.lr='1e400' is not valid: expected a finite number"),
    (['model.n_layers=4', 'growth.method=stack', 'growth.factor=3', 'growth.at_tokens=512'],
     'growth.factor=3 does not divide model.n_layers=4'),
    (['growth.method=layers', 'growth.layers=0,7', 'growth.at_tokens=512'],
     'the source model would have 8 layers, more than the target model.n_layers=2'),
]


@pytest.mark.parametrize('overrides,expected', BAD_OVERRIDES,
                         ids=['long_name', 'huge_d_model', 'lr_inf', 'lr_1e400',
                              'factor_not_dividing', 'layers_bigger_source'])
def test_bad_override_is_one_line_before_any_compile(tmp_path, capsys, overrides, expected,
                                                     no_compile):
  rc, _, err = run(capsys, tmp_path, *overrides)
  assert rc == 2 and expected in one_error_line(err)
  assert not (tmp_path / 'tiny').exists()


def test_cudnn_on_cpu_and_workdir_on_a_file_are_one_line(tmp_path, capsys):
  rc, _, err = run(capsys, tmp_path, 'model.attention=cudnn')
  line = one_error_line(err)
  assert rc == 2 and "model.attention='cudnn'" in line and 'needs a CUDA GPU' in line
  (tmp_path / 'afile').write_text('')
  rc, _, err = run(capsys, tmp_path / 'afile')
  assert rc == 2 and 'is a file, not a directory' in one_error_line(err)


def test_grow_factor_zero_and_slurm_time_are_one_line(reference, tmp_path, capsys,
                                                      no_compile):
  rc, _, err = main(capsys, 'grow', '--from', reference, '--factor', '0', '--out',
                    tmp_path / 'big')
  assert rc == 2 and '--factor 0 is not valid' in one_error_line(err)
  rc, _, err = main(capsys, 'submit', '--target', 'slurm', '--time', 'garbage', '--dry-run',
                    'tiny')
  assert rc == 2 and "--time 'garbage' is not a SLURM time limit" in one_error_line(err)
