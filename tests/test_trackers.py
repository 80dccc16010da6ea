"""train.trackers (TensorBoard, Weights & Biases offline) and train.profile_steps (a
jax.profiler trace), end to end through the CLI on the tiny experiment."""
import glob
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest

from cli_runs import ROOT, steps_of
from test_tensorboard import read_scalars
from jaxlab.config import ConfigError, load

pytest.importorskip('wandb')
from wandb.proto import wandb_internal_pb2   # noqa: E402  (after the skip)

SECRET = 'wandb-key-that-must-never-be-written-0123456789'
RUN = ['run', 'tiny', 'train.trackers=jsonl,tensorboard,wandb', 'train.profile_steps=3-4',
       'train.log_every=1', 'train.keep_checkpoints=10', 'train.wandb_project=jaxlab-test']


def launch(tmp_path):
  env = dict(os.environ, WANDB_MODE='offline', WANDB_API_KEY=SECRET,
             WANDB_CONFIG_DIR=str(tmp_path / 'wandb-config'),
             WANDB_CACHE_DIR=str(tmp_path / 'wandb-cache'),
             WANDB_DATA_DIR=str(tmp_path / 'wandb-data'))
  return subprocess.run([sys.executable, 'launch.py', *RUN, f'train.workdir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def wandb_records(path: str) -> list:
  """The records of an offline W&B run file: a 7-byte header (':W&B', magic, version),
  then LevelDB log blocks of 32 KiB, each record a 7-byte header (crc32c, length, type:
  1 full, 2 first, 3 middle, 4 last) and a piece of a serialized wandb Record."""
  buf = pathlib.Path(path).read_bytes()
  assert buf[:4] == b':W&B'
  pos, block, out, part = 7, 32768, [], b''
  while pos + 7 <= len(buf):
    if block - pos % block < 7:            # a block's tail too short for a header: padding
      pos += block - pos % block
      continue
    _, n, kind = struct.unpack('<IHB', buf[pos:pos + 7])
    if kind == 0 and n == 0:
      break
    part += buf[pos + 7:pos + 7 + n]
    pos += 7 + n
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(part)
      out.append(record)
      part = b''
  return out


def history(path: str) -> dict[int, dict]:
  """{step: {key: value}} of the W&B run file's history records (W&B's own keys aside)."""
  out = {}
  for r in wandb_records(path):
    if r.WhichOneof('record_type') == 'history':
      row = {'/'.join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
      out[int(row['_step'])] = {k: v for k, v in row.items() if not k.startswith('_')}
  return out


def numbers(record: dict) -> dict:
  return {k: v for k, v in record.items() if k != 'step' and isinstance(v, (int, float))}


def test_wandb_logs_what_metrics_jsonl_holds_resumes_its_run_and_never_writes_the_key(tmp_path):
  proc = launch(tmp_path)
  assert proc.returncode == 0, proc.stderr
  run_dir = tmp_path / 'tiny'
  run_id = json.loads((run_dir / 'wandb.json').read_text())['id']
  [first] = glob.glob(str(run_dir / 'wandb' / 'offline-run-*' / f'run-{run_id}.wandb'))
  logged = history(first)
  records = steps_of(run_dir)
  assert sorted(logged) == [r['step'] for r in records] == list(range(1, 21))
  for r in records:
    assert logged[r['step']] == numbers(r), r['step']
  config = {i.key: json.loads(i.value_json) for r in wandb_records(first)
            if r.WhichOneof('record_type') == 'run' for i in r.run.config.update}
  stored = json.loads((run_dir / 'config.json').read_text())
  assert config['train'] == stored['train'] and config['model'] == stored['model']
  # The profile: a TensorBoard profile-plugin trace that names the train step, and Perfetto's.
  [xplane] = glob.glob(str(run_dir / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert b'train_step' in pathlib.Path(xplane).read_bytes()
  assert glob.glob(str(run_dir / 'profile' / 'plugins' / 'profile' / '*' / '*perfetto*'))
  assert 'profile of steps 3-4' in proc.stdout

  # A second session resumed from step 10 logs into the same W&B run, from step 11 on.
  for ckpt in (run_dir / 'checkpoints').iterdir():
    if int(ckpt.name) > 10:
      shutil.rmtree(ckpt)
  (run_dir / 'summary.json').unlink()
  proc = launch(tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert 'from step 10' in proc.stdout
  files = glob.glob(str(run_dir / 'wandb' / 'offline-run-*' / f'run-{run_id}.wandb'))
  [second] = [f for f in files if f != first]
  again = history(second)
  assert sorted(again) == list(range(11, 21))
  resumed = steps_of(run_dir)             # metrics.jsonl: steps 11-20 from the second session
  assert again == {r['step']: numbers(r) for r in resumed[10:]}
  assert [again[s]['loss'] for s in range(11, 21)] == [logged[s]['loss'] for s in range(11, 21)]
  # TensorBoard, as it reads the two sessions' files: every number of metrics.jsonl at
  # float32 precision, the first session's steps past 10 hidden by the second's start.
  board = read_scalars(run_dir / 'tensorboard')
  assert sorted(board) == list(range(1, 21))
  for r in resumed:
    assert board[r['step']] == pytest.approx(numbers(r), rel=1e-6), r['step']

  # The API key is W&B's to read from the environment; jaxlab writes it nowhere.
  for path in tmp_path.rglob('*'):
    if path.is_file():
      assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize('override, needle', [
    ('train.trackers=tensorboard', 'must include jsonl'),
    ('train.trackers=jsonl,mlflow', "train.trackers='mlflow' is not allowed: expected one of 'jsonl'"),
    ('train.profile_steps=5', "must be 'A-B'"),
    ('train.profile_steps=4-3', "must be 'A-B'"),
    ('train.profile_steps=10-30', 'ends after the run (train.steps=20)'),
])
def test_bad_tracker_and_profile_settings_name_the_key(override, needle):
  with pytest.raises(ConfigError) as err:
    load('tiny', [override])
  assert needle in str(err.value)


def test_each_population_member_logs_to_its_own_wandb_run(tmp_path):
  """Two runs trained as one population (launch.py sweep --population 2) in one process:
  each member's W&B run holds its own metrics.jsonl, not the first member's."""
  env = dict(os.environ, WANDB_MODE='offline', WANDB_API_KEY=SECRET,
             WANDB_CONFIG_DIR=str(tmp_path / 'wandb-config'),
             WANDB_CACHE_DIR=str(tmp_path / 'wandb-cache'),
             WANDB_DATA_DIR=str(tmp_path / 'wandb-data'))
  done = subprocess.run([sys.executable, 'launch.py', 'sweep', 'tiny', '--grid',
                         'optim.lr=1e-3,1e-2', '--population', '2', 'train.steps=6',
                         'train.log_every=1', 'train.trackers=jsonl,wandb',
                         'train.wandb_project=jaxlab-test', f'train.workdir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert done.returncode == 0, done.stdout + done.stderr
  losses = []
  for lr in ('1e-3', '1e-2'):
    run_dir = tmp_path / 'tiny' / f'optim.lr={lr}'
    run_id = json.loads((run_dir / 'wandb.json').read_text())['id']
    [path] = glob.glob(str(run_dir / 'wandb' / 'offline-run-*' / f'run-{run_id}.wandb'))
    logged = {r['step']: r['loss'] for r in map(json.loads,
                                                 (run_dir / 'metrics.jsonl').open())}
    assert {step: row['loss'] for step, row in history(path).items()} == logged
    losses.append(logged[6])
  assert losses[0] != losses[1]
