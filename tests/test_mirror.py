"""train.mirror_dir: the run directory copied to a bucket as it goes (a file:// URL stands
in for gs:// here; both go through jaxlab.rundir.mirror), checkpoints written there
directly, and a resume on a machine that never held the run."""
import importlib.util
import json

from cli_runs import copy_keeping, launch, trajectory


def _files(root):
  return sorted(p.relative_to(root).as_posix() for p in root.rglob('*') if p.is_file())


def test_the_mirror_holds_the_run_and_a_machine_without_it_resumes_from_it(tmp_path):
  bucket = tmp_path / 'bucket'
  proc = launch('run', 'tiny', f'train.mirror_dir=file://{bucket}', 'train.log_every=1',
                'train.keep_checkpoints=10', workdir=tmp_path / 'host1')
  assert proc.returncode == 0, proc.stderr
  local, mirrored = tmp_path / 'host1' / 'tiny', bucket / 'tiny'
  # Checkpoints go straight to the mirror; every other file is copied, byte for byte,
  # except the lock.
  assert not (local / 'checkpoints').exists()
  assert sorted(int(p.name) for p in (mirrored / 'checkpoints').iterdir()) == [5, 10, 15, 20]
  copied = [f for f in _files(mirrored) if not f.startswith('checkpoints/')]
  assert copied == [f for f in _files(local) if f != '.lock']
  assert {'config.json', 'metrics.jsonl', 'summary.json', 'data.json'} <= set(copied)
  assert any(f.startswith('tensorboard/events.out.tfevents') for f in copied)
  for f in copied:
    assert (mirrored / f).read_bytes() == (local / f).read_bytes(), f
  assert json.loads((mirrored / 'summary.json').read_text())['status'] == 'completed'

  # Another machine (an empty workdir), and a mirror whose run was preempted after step 10:
  # the run comes down from the mirror, resumes from its checkpoint and ends as the
  # uninterrupted run did, pushing the rest back.
  copy_keeping(mirrored, tmp_path / 'bucket2' / 'tiny', 10)
  proc = launch('run', 'tiny', f'train.mirror_dir=file://{tmp_path / "bucket2"}',
                'train.log_every=1', 'train.keep_checkpoints=10', workdir=tmp_path / 'host2')
  assert proc.returncode == 0, proc.stderr
  assert 'copied it from file://' in proc.stderr and 'from step 10' in proc.stdout
  assert trajectory(tmp_path / 'bucket2' / 'tiny') == trajectory(mirrored)
  assert trajectory(tmp_path / 'host2' / 'tiny') == trajectory(mirrored)


def test_a_mirror_that_cannot_be_written_is_one_line_before_any_compile(tmp_path):
  (tmp_path / 'file').write_text('x')
  proc = launch('run', 'tiny', f'train.mirror_dir=file://{tmp_path / "file"}',
                workdir=tmp_path)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f'error: train.mirror_dir: cannot create file://{tmp_path / "file" / "tiny"} (Not a '
      'directory); set it to a directory this machine can write']
  if importlib.util.find_spec('gcsfs') is None:   # gs:// needs gcsfs, not installed here
    proc = launch('run', 'tiny', 'train.mirror_dir=gs://a-bucket/runs', workdir=tmp_path)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'error: train.mirror_dir: cannot reach gs://a-bucket/runs/tiny: Please install '
        'gcsfs to access Google Storage']
