"""End to end through the CLI: run dir layout, resume exactness after kill -9 and
SIGTERM, divergence, unreadable checkpoints, sweeps and the report. Runs that need no
signal or device flags go through `jaxlab.launch.cli.main` in this process (no interpreter
start-up); tests/test_reliability.py has the failure cases of issue 14."""
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A tiny run long enough to be interrupted on purpose: 60 steps, a checkpoint every 10.
LONG = ['train.steps=60', 'train.checkpoint_every=10', 'train.eval_every=20', 'train.log_every=1']


def inproc(capsys, *args, workdir) -> subprocess.CompletedProcess:
  """launch.py in this process, as a CompletedProcess (returncode, stdout, stderr)."""
  from jaxlab.launch import cli
  capsys.readouterr()
  rc = cli.main([*map(str, args), f'train.workdir={workdir}'])
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, rc, out, err)


def launch(*args, workdir, wait=True):
  cmd = [sys.executable, 'launch.py', *args, f'train.workdir={workdir}']
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def records(run_dir):
  return [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def trajectory(run_dir):
  """Everything in the metrics that must not depend on interruptions (not timings)."""
  keep = ('step', 'tokens', 'flops', 'loss', 'val_loss', 'lr', 'grad_norm', 'param_norm')
  return [{k: r[k] for k in keep if k in r} for r in records(run_dir)]


def wait_for_step(proc, run_dir, step, timeout=300):
  path = run_dir / 'metrics.jsonl'
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, f'run ended before step {step}: {proc.communicate()}'
    if path.exists():
      lines = path.read_text().splitlines()
      if lines and lines[-1].endswith('}') and json.loads(lines[-1])['step'] >= step:
        return
    time.sleep(0.01)
  raise TimeoutError(step)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One uninterrupted run that the interrupted ones must reproduce bit for bit."""
  from jaxlab.launch import cli
  workdir = tmp_path_factory.mktemp('ref')
  assert cli.main(['run', 'tiny', *LONG, f'train.workdir={workdir}']) == 0
  return workdir / 'tiny'


def test_run_dir_layout_and_metrics(reference):
  run_dir = reference
  for name in ('config.json', 'metrics.jsonl', 'summary.json'):
    assert (run_dir / name).is_file(), name
  assert list((run_dir / 'tensorboard').glob('events.out.tfevents.*'))
  assert sorted(int(p.name) for p in (run_dir / 'checkpoints').iterdir()) == [40, 50, 60]
  recs = records(run_dir)
  assert [r['step'] for r in recs] == list(range(1, 61))
  for r in recs:
    assert {'step', 'tokens', 'flops', 'loss', 'lr', 'tokens_per_sec', 'grad_norm', 'mfu'} <= set(r)
    assert r['tokens'] == r['step'] * 4 * 32          # batch 4 x seq_len 32
    assert r['mfu'] is None                            # no known peak on a CPU
  assert [r['step'] for r in recs if 'val_loss' in r] == [20, 40, 60]
  assert recs[0]['tokens_per_sec'] is None             # the compile window is not a rate
  assert all(r['tokens_per_sec'] > 0 for r in recs[1:] if r['tokens_per_sec'] is not None)
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert summary['status'] == 'completed' and summary['step'] == 60
  assert summary['final_loss'] == recs[-1]['loss'] and summary['final_val_loss'] == recs[-1]['val_loss']
  assert summary['flops'] == pytest.approx(60 * 128 * summary['flops_per_token'])
  assert recs[-1]['loss'] < recs[0]['loss'] - 1.0     # it learns something
  assert json.loads((run_dir / 'config.json').read_text())['train']['steps'] == 60


def test_kill_9_then_rerun_reproduces_the_uninterrupted_run(reference, tmp_path, capsys):
  proc = launch('run', 'tiny', *LONG, workdir=tmp_path, wait=False)
  run_dir = tmp_path / 'tiny'
  wait_for_step(proc, run_dir, 25)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (run_dir / 'summary.json').exists()      # it really was cut short
  assert records(run_dir)[-1]['step'] < 60
  rerun = inproc(capsys, 'run', 'tiny', *LONG, workdir=tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  assert 'resuming' in rerun.stdout
  assert trajectory(run_dir) == trajectory(reference)


def test_checkpoints_in_a_separate_directory_resume_exactly(reference, tmp_path, capsys):
  """train.checkpoint_dir (shared storage for multi-host runs) holds <name>/<step>."""
  shared = tmp_path / 'shared'
  args = ('run', 'tiny', *LONG, f'train.checkpoint_dir={shared}')
  first = inproc(capsys, *args, workdir=tmp_path)
  assert first.returncode == 0, first.stderr
  run_dir = tmp_path / 'tiny'
  assert not (run_dir / 'checkpoints').exists()
  assert sorted(int(p.name) for p in (shared / 'tiny').iterdir()) == [40, 50, 60]
  for step in (50, 60):
    shutil.rmtree(shared / 'tiny' / str(step))
  (run_dir / 'summary.json').unlink()
  rerun = inproc(capsys, *args, workdir=tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  assert f'resuming {run_dir} from step 40' in rerun.stdout
  assert trajectory(run_dir) == trajectory(reference)


# SIGUSR1: what SLURM sends before the time limit; its exit code, 138, makes the sbatch
# script requeue the job (tests/test_submit.py runs that script). SIGTERM takes the same
# handler (jaxlab/train/stop.py registers both); tests/test_reliability.py sends it to a
# two-process run. One signal here keeps the suite's time.
@pytest.mark.parametrize('sig', [signal.SIGUSR1], ids=lambda s: s.name)
def test_a_stop_signal_saves_and_exits_cleanly_then_resumes_exactly(reference, tmp_path, capsys,
                                                                    sig):
  proc = launch('run', 'tiny', *LONG, workdir=tmp_path, wait=False)
  run_dir = tmp_path / 'tiny'
  wait_for_step(proc, run_dir, 15)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + sig, err
  assert 'Traceback' not in err and f'stopped by {sig.name} at step' in err
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert summary['status'] == 'preempted'
  stopped_at = summary['step']
  assert 15 <= stopped_at < 60
  assert stopped_at in [int(p.name) for p in (run_dir / 'checkpoints').iterdir()]
  rerun = inproc(capsys, 'run', 'tiny', *LONG, workdir=tmp_path)
  assert rerun.returncode == 0, rerun.stderr
  lines = rerun.stdout.splitlines()    # a resumed run prints its header too
  assert lines[:2] == [f'resuming {run_dir} from step {stopped_at}', f'run {run_dir}: 60 steps']
  assert trajectory(run_dir) == trajectory(reference)


def test_unreadable_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, capsys):
  shutil.copytree(reference, tmp_path / 'tiny')
  run_dir = tmp_path / 'tiny'
  # Damage the newest step: its array data files are truncated to nothing.
  for f in (run_dir / 'checkpoints' / '60' / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      f.write_bytes(b'')
  proc = inproc(capsys, 'run', 'tiny', *LONG, workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert 'checkpoint step 60' in proc.stderr and 'cannot be read' in proc.stderr
  assert 'resuming' in proc.stdout and 'from step 50' in proc.stdout
  assert (run_dir / 'checkpoints_unreadable' / '60').is_dir()
  assert trajectory(run_dir) == trajectory(reference)


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  # lr 1e30 without warmup: the first update sends every parameter to ~1e30.
  proc = inproc(capsys, 'run', 'tiny', 'optim.lr=1e30', 'optim.warmup_steps=0',
                'optim.grad_clip=0', 'train.checkpoint_every=1', workdir=tmp_path)
  assert proc.returncode == 1
  assert 'Traceback' not in proc.stderr
  summary = json.loads((tmp_path / 'tiny' / 'summary.json').read_text())
  assert summary['status'] == 'diverged'
  bad = summary['diverged_at_step']
  assert f'at step {bad}' in proc.stderr
  steps = sorted(int(p.name) for p in (tmp_path / 'tiny' / 'checkpoints').iterdir())
  assert all(s < bad for s in steps)
  assert summary['last_good_checkpoint'] == (steps[-1] if steps else None)


def test_sweep_runs_the_grid_skips_finished_runs_and_reports(tmp_path, capsys):
  args = ['sweep', 'tiny', '--grid', 'optim.lr=1e-2,3e-3', 'train.steps=6', 'train.eval_every=3']
  first = inproc(capsys, *args, workdir=tmp_path)
  assert first.returncode == 0, first.stderr
  sweep_dir = tmp_path / 'tiny'
  runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
  assert runs == ['optim.lr=1e-2', 'optim.lr=3e-3']
  for r in runs:
    cfg = json.loads((sweep_dir / r / 'config.json').read_text())
    assert cfg['optim']['lr'] == float(r.split('=')[1])
  second = inproc(capsys, *args, workdir=tmp_path)
  assert second.stdout.count('finished earlier, skipped') == 2
  from jaxlab.launch import cli
  assert cli.main(['report', str(sweep_dir)]) == 0
  text = (sweep_dir / 'report.md').read_text()
  assert 'optim.lr=1e-2' in text and 'optim.lr=3e-3' in text
  assert (sweep_dir / 'loss_vs_flops.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_sharded_run_matches_single_device(tmp_path, capsys):
  """8 fake CPU devices as data 2 x fsdp 2 x tensor 2 give the single-device losses:
  the same math with other reduction orders, so equal to float32 rounding (the loss
  drifts by ~1e-6 relative over these steps; 1e-4 leaves room but catches a wrong
  sharding, which changes the loss in the first decimals)."""
  args = ['run', 'tiny', 'train.steps=8', 'train.batch_size=8', 'model.vocab_size=258']
  single = inproc(capsys, *args, workdir=tmp_path / 'one')
  assert single.returncode == 0, single.stderr
  env = xla_env.env(8)
  sharded = subprocess.run(
      [sys.executable, 'launch.py', *args, 'mesh.fsdp=2', 'mesh.tensor=2',
       f'train.workdir={tmp_path / "eight"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert sharded.returncode == 0, sharded.stderr
  assert '; 8 cpu device(s), mesh data 2 x fsdp 2 x tensor 2;' in sharded.stdout   # the header
  one, eight = records(tmp_path / 'one' / 'tiny'), records(tmp_path / 'eight' / 'tiny')
  assert json.loads((tmp_path / 'eight' / 'tiny' / 'summary.json').read_text())['n_devices'] == 8
  assert [r['step'] for r in one] == [r['step'] for r in eight]
  for a, b in zip(one, eight):
    assert b['loss'] == pytest.approx(a['loss'], rel=1e-5)
  assert eight[-1]['val_loss'] == pytest.approx(one[-1]['val_loss'], rel=1e-5)


def test_indivisible_sharded_dim_is_a_config_error(tmp_path):
  env = xla_env.env(2)
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', 'mesh.tensor=2',
                         f'train.workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 2
  assert 'model.vocab_size=257 cannot be split evenly over mesh axes tensor (2 ways)' in proc.stderr
