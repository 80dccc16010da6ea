"""Exports and grows never overwrite a model they did not make, and are whole or absent
(jaxlab.launch.outputs): a refused --out is one line naming what it holds, a source is
never an --out, a kill -9 at any point leaves --out as it was and the same command again
writes the same bytes; a grown run knows where its weights came from and never trains
from random init."""
import hashlib
import json
import pathlib
import signal
import subprocess
import sys

import pytest

import hf_models as H

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tree_digest(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}


class _Done:
  def __init__(self, returncode, stderr):
    self.returncode, self.stderr = returncode, stderr


def _here(argv, capsys):
  """launch.py's code in this process (no fault to inject: saves a process start)."""
  from jaxlab.launch.cli import main
  capsys.readouterr()
  code = main(argv)
  return _Done(code, capsys.readouterr().err)


def _launch(argv, env_code=''):
  """launch.py in a fresh process; env_code runs first (the fault to inject)."""
  code = (f'import sys; sys.argv = ["launch.py"] + {argv!r}\n{env_code}\n'
          'from jaxlab.launch.cli import main\nsys.exit(main(sys.argv[1:]))')
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        cwd=ROOT, timeout=600)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  d = tmp_path_factory.mktemp('hf')
  H.make_tokenizer(d, vocab_size=280)
  H.make_model(d, vocab_size=288, hidden_size=32, intermediate_size=64, num_attention_heads=2,
               num_key_value_heads=1, num_hidden_layers=2, bos_token_id=0, eos_token_id=1)
  return d


@pytest.fixture(scope='module')
def trained(pretrained, tmp_path_factory):
  """A run initialised from `pretrained` (model.init=hf:DIR), 2 steps."""
  work = tmp_path_factory.mktemp('runs')
  proc = _launch(['run', 'tiny', f'model.init=hf:{pretrained}', 'train.steps=2', 'name=cpt',
                  'data.seq_len=32', 'train.batch_size=4', 'train.eval_every=0',
                  f'train.workdir={work}'])
  assert proc.returncode == 0, proc.stderr
  return work / 'cpt'


# Kill points: process kills itself (SIGKILL) right after the named write.
KILL_AFTER = {
    'weights': 'import jaxlab.interop.st_files as m; w = m.write_sharded\n'
               'def f(*a, **k):\n r = w(*a, **k); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
               'm.write_sharded = f',
    'first shard': 'import safetensors.numpy as m; w = m.save_file\n'
                   'def f(*a, **k):\n w(*a, **k); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
                   'm.save_file = f',
    'tokenizer': 'import shutil; c = shutil.copyfile\n'
                 'def f(*a, **k):\n c(*a, **k); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
                 'shutil.copyfile = f',
    'rename': 'import pathlib; r = pathlib.Path.rename\n'
              'def f(self, t):\n x = r(self, t); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
              'pathlib.Path.rename = f',
}


def test_export_refuses_its_source_and_a_full_folder_and_is_atomic(pretrained, trained, tmp_path,
                                                                   capsys):
  source_before = _tree_digest(pretrained)
  # Into the folder the run was initialised from: refused, even with --overwrite.
  for extra in ([], ['--overwrite']):
    proc = _here(['export', str(trained), '--format', 'hf', '--out', str(pretrained), *extra], capsys)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "is this command's source" in err[0], \
        proc.stderr
  assert _tree_digest(pretrained) == source_before
  # The uninterrupted export, the reference.
  ref = tmp_path / 'ref'
  assert _here(['export', str(trained), '--format', 'hf', '--out', str(ref)], capsys).returncode == 0
  want = _tree_digest(ref)
  assert 'tokenizer.json' in want and 'config.json' in want
  # A non-empty folder (an older export with another tokenizer): refused, named.
  old = tmp_path / 'old'
  old.mkdir()
  H.make_tokenizer(old, vocab_size=600)
  (old / 'config.json').write_text('{}')
  (old / 'model.safetensors').write_bytes(b'x')
  proc = _here(['export', str(trained), '--format', 'hf', '--out', str(old)], capsys)
  assert proc.returncode == 2 and f'--out {old} holds a Hugging Face model' in proc.stderr
  assert 'add --overwrite' in proc.stderr
  # --overwrite replaces it whole: no file of the old folder survives.
  assert _here(['export', str(trained), '--format', 'hf', '--out', str(old), '--overwrite'],
               capsys).returncode == 0
  assert _tree_digest(old) == want
  # kill -9 after each write: --out stays absent (or whole), the rerun is byte-identical.
  sharded = tmp_path / 'sharded_ref'
  assert _here(['export', str(trained), '--format', 'hf', '--out', str(sharded),
                '--max-shard-size', '20KB'], capsys).returncode == 0
  want = _tree_digest(sharded)
  assert len([n for n in want if n.endswith('.safetensors')]) > 1      # several shards
  for point, code in KILL_AFTER.items():
    out = tmp_path / f'killed_{point.replace(" ", "_")}'
    proc = _launch(['export', str(trained), '--format', 'hf', '--out', str(out),
                    '--max-shard-size', '20KB'], code)
    assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-500:])
    if point == 'rename':                   # killed right after the folder was renamed in
      assert _tree_digest(out) == want
    else:
      assert not out.exists(), point
    proc = _here(['export', str(trained), '--format', 'hf', '--out', str(out),
                  '--max-shard-size', '20KB', '--overwrite'], capsys)
    assert proc.returncode == 0, (point, proc.stderr)
    assert _tree_digest(out) == want, point
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f'.{out.name}.')], point
  assert _tree_digest(pretrained) == source_before


def test_export_to_a_folder_that_cannot_be_written_is_one_line(trained, tmp_path, capsys):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  proc = _here(['export', str(trained), '--format', 'hf', '--out', str(blocker / 'x')], capsys)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and f'--out {blocker / "x"}' in err[0], proc.stderr
  proc = _here(['export', str(trained), '--format', 'hf', '--out', str(blocker)], capsys)
  assert proc.returncode == 2 and 'is a file, not a directory' in proc.stderr


# Kill points of `launch.py grow`: after the config is written, as the step-0 checkpoint's
# save begins, and after the finished folder is renamed to --out.
GROW_KILLS = {
    'config': 'import jaxlab.rundir.directory as m; w = m.RunDir.write_config\n'
              'def f(*a, **k):\n w(*a, **k); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
              'm.RunDir.write_config = f',
    'checkpoint': 'import jaxlab.rundir.checkpoint as m\n'
                  'def f(*a, **k):\n import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n'
                  'm.Checkpointer.save = f',
    'rename': KILL_AFTER['rename'],
}


def _grown_digest(run: pathlib.Path, named: pathlib.Path) -> dict:
  """What a grown run holds, as bytes: every file but the lock and orbax's array chunks
  (which orbax names at random), with --out's path read as `named`'s, provenance without
  its start time; the checkpoint's arrays through their saved per-array fingerprints (in
  the step's meta) and its data position."""
  digest = {}
  for p in sorted(run.rglob('*')):
    rel = str(p.relative_to(run))
    if not p.is_file() or rel == '.lock' or '/state/' in rel or rel.endswith(
        ('commit_success.txt', '_CHECKPOINT_METADATA')):
      continue
    text = p.read_text().replace(str(run), str(named)).replace(run.name, named.name)
    if rel == 'provenance.json':
      text = json.dumps({k: v for k, v in json.loads(text).items() if k != 'first_started'})
    digest[rel] = hashlib.sha256(text.encode()).hexdigest()
  assert 'checkpoints/0/meta/metadata' in digest and 'config.json' in digest
  return digest


def test_grow_from_hf_is_atomic_refuses_models_and_knows_its_origin(pretrained, trained, tmp_path,
                                                                    capsys):
  source_before = _tree_digest(pretrained)
  argv = ['grow', '--from', f'hf:{pretrained}', '--method', 'zero', '--insert-every', '1',
          '--experiment', 'tiny', 'data.seq_len=32', 'train.batch_size=4', 'train.steps=3']
  # An existing Hugging Face folder as --out: refused, untouched.
  proc = _here(argv + ['--out', str(pretrained)], capsys)
  assert proc.returncode == 2 and "is this command's source" in proc.stderr
  other = tmp_path / 'other_model'
  H.make_model(other, vocab_size=288, hidden_size=32, intermediate_size=64,
               num_attention_heads=2, num_key_value_heads=1)
  other_before = _tree_digest(other)
  proc = _here(argv + ['--out', str(other)], capsys)
  assert proc.returncode == 2 and 'holds a Hugging Face model' in proc.stderr
  assert _tree_digest(other) == other_before
  # kill -9 before, during and after the writes: --out absent, or whole after the rename;
  # the same command again gives what an uninterrupted grow gives.
  ref = tmp_path / 'grown_ref'
  assert _launch(argv + ['--out', str(ref)]).returncode == 0   # provenance records argv:
  want = _grown_digest(ref, ref)                                # as a user's process
  for point, code in GROW_KILLS.items():
    out = tmp_path / f'grown_{point.replace(" ", "_")}'
    proc = _launch(argv + ['--out', str(out)], code)
    assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-500:])
    if point == 'rename':                   # whole; the same command now finds it
      assert _grown_digest(out, ref) == want
      proc = _here(argv + ['--out', str(out)], capsys)
      assert proc.returncode == 2 and 'holds a jaxlab run' in proc.stderr, proc.stderr
      continue
    assert not out.exists(), point
    proc = _here(['run', str(out)], capsys)       # nothing that `run` would start afresh
    assert proc.returncode == 2 and 'not found' in proc.stderr, point
    proc = _launch(argv + ['--out', str(out)])
    assert proc.returncode == 0, (point, proc.stderr[-500:])
    assert _grown_digest(out, ref) == want, point
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f'.{out.name}.')], point
  cfg = json.loads((out / 'config.json').read_text())
  assert cfg['growth']['source'].startswith(f'launch.py grow --from hf:{pretrained} --method zero')
  # The grown run's checkpoint gone: refused, naming the command; never random init.
  import shutil
  shutil.rmtree(out / 'checkpoints')
  proc = _here(['run', str(out)], capsys)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and 'launch.py grow --from hf:' in err[0] and \
      'never trains from random weights' in err[0], proc.stderr
  assert _tree_digest(pretrained) == source_before


def test_a_folder_set_aside_by_a_killed_overwrite_is_put_back(tmp_path):
  """--overwrite renames the old folder aside, then the new one in; killed between the two,
  the next command puts the old folder back before it looks at --out (so without
  --overwrite it is refused, not silently replaced) and removes the dead partial."""
  import socket
  from jaxlab.config.types import ConfigError
  from jaxlab.launch import outputs
  gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  out = tmp_path / 'model'
  out.mkdir()
  (out / 'config.json').write_text('{"old": 1}')
  (out / 'model.safetensors').write_bytes(b'weights')
  before = _tree_digest(out)
  host = socket.gethostname()
  out.rename(tmp_path / f'.model.replaced-{host}-{gone}')
  (tmp_path / f'.model.partial-{host}-{gone}').mkdir()
  with pytest.raises(ConfigError, match='holds a Hugging Face model'):
    with outputs.atomic_dir(out, option='--out'):
      pass
  assert _tree_digest(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model']
