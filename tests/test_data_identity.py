"""The data a run trains on is part of its identity (jaxlab.data.identity): a resumed run
whose files changed, moved or went is refused before anything compiles, naming the file;
relative paths are made absolute once; the token cache is keyed by content; a killed
tokenisation leaves nothing that the next build keeps; a full or read-only data dir is one
line naming data.data_dir."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxlab.config import DataConfig, load
from jaxlab.data import files as file_corpora
from jaxlab.data import identity
from jaxlab.data.tokenizers import ByteTokenizer

from cli_runs import refused

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _corpus(path: pathlib.Path, n: int = 60, seed: int = 0) -> pathlib.Path:
  rng = np.random.RandomState(seed)
  words = 'the growth of a model in depth and width over many steps of training'.split()
  path.write_text(''.join(json.dumps({'text': ' '.join(rng.choice(words, 40))}) + '\n'
                          for _ in range(n)))
  return path


def _run(argv, cwd=ROOT):
  return subprocess.run([sys.executable, str(ROOT / 'launch.py'), *argv], capture_output=True,
                        text=True, cwd=cwd, timeout=600)


def _refused(argv, cwd=ROOT):
  """A command that stops before anything compiles, run in this process (cli_runs)."""
  return refused(*argv, cwd=cwd)


def _args(tmp_path, corpus, *extra):
  return ['run', 'tiny', 'data.source=files', f'data.files={corpus}', 'train.steps=4',
          'train.checkpoint_every=2', 'train.eval_every=0', f'train.workdir={tmp_path / "runs"}',
          f'data.data_dir={tmp_path / "cache"}', *extra]


def test_a_changed_corpus_is_refused_on_resume_unless_accepted(tmp_path):
  corpus = _corpus(tmp_path / 'c.jsonl')
  assert _run(_args(tmp_path, corpus)).returncode == 0
  run_dir = tmp_path / 'runs' / 'tiny'
  recorded = json.loads((run_dir / 'data.json').read_text())
  assert recorded['files'] == [{'path': str(corpus), 'size': corpus.stat().st_size,
                                'sha256': identity.file_sha256(str(corpus))}]
  with open(corpus, 'a') as f:                       # 100 lines appended after the run
    f.write(''.join(json.dumps({'text': f'more {i}'}) + '\n' for i in range(100)))
  proc = _refused(_args(tmp_path, corpus))
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1, proc.stderr
  assert f'{corpus} changed: {recorded["files"][0]["size"]} bytes when the run started' in err[0]
  assert 'data.accept_changes=true' in err[0]
  # One byte changed, size and modification time kept (what cp -p or rsync -t leave).
  _corpus(corpus)
  st = corpus.stat()
  corpus.write_bytes(corpus.read_bytes().replace(b'growth', b'grOwth', 1))
  os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert corpus.stat().st_size == st.st_size and corpus.stat().st_mtime_ns == st.st_mtime_ns
  proc = _refused(_args(tmp_path, corpus))
  assert proc.returncode == 2 and 'same size' in proc.stderr and str(corpus) in proc.stderr
  # A moved corpus: the run names the path it started with.
  moved = corpus.rename(tmp_path / 'moved.jsonl')
  proc = _refused(['run', str(run_dir)])
  assert proc.returncode == 2 and f'{corpus} is gone' in proc.stderr
  moved.rename(corpus)
  # The documented way on: accepted, warned about, recorded in the history.
  proc = _run(_args(tmp_path, corpus, 'data.accept_changes=true'))
  assert proc.returncode == 0, proc.stderr
  assert 'going on with changed data' in proc.stderr
  history = json.loads((run_dir / 'config.json').read_text())['history']
  assert any('data' in h['changes'] and 'same size' in h['changes']['data'][1] for h in history)
  assert json.loads((run_dir / 'data.json').read_text())['files'][0]['sha256'] == \
      identity.file_sha256(str(corpus))


def test_relative_files_are_made_absolute_once(tmp_path):
  a, b = tmp_path / 'a', tmp_path / 'b'
  a.mkdir()
  b.mkdir()
  _corpus(a / 'c.jsonl', seed=0)
  _corpus(b / 'c.jsonl', seed=1)                    # same name, other text, elsewhere
  argv = ['run', 'tiny', 'data.source=files', 'data.files=c.jsonl', 'train.steps=4',
          'train.checkpoint_every=2', 'train.eval_every=0', f'train.workdir={tmp_path / "runs"}',
          f'data.data_dir={tmp_path / "cache"}']
  assert _run(argv, cwd=a).returncode == 0
  run_dir = tmp_path / 'runs' / 'tiny'
  assert json.loads((run_dir / 'config.json').read_text())['data']['files'] == [str(a / 'c.jsonl')]
  # Continued by path from b: the run reads a's file, which it recorded.
  proc = _refused(['run', str(run_dir)], cwd=b)
  assert proc.returncode == 0 and 'already finished' in proc.stdout
  # The same relative override from b names b's file: another config, refused.
  proc = _refused(argv, cwd=b)
  assert proc.returncode == 2 and 'data.files' in proc.stderr and str(b / 'c.jsonl') in proc.stderr
  assert load('tiny', ['data.source=files', 'data.files=x.jsonl']).data.files == (
      os.path.abspath('x.jsonl'),)


def test_token_cache_is_keyed_by_content_and_cleans_dead_builds(tmp_path):
  corpus = _corpus(tmp_path / 'c.jsonl')
  cfg = DataConfig(source='files', files=(str(corpus),), data_dir=str(tmp_path / 'cache'))
  tok = ByteTokenizer()
  root = tmp_path / 'cache' / 'tokenized'
  root.mkdir(parents=True)
  host = socket.gethostname()
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  (root / f'.tmp-{host}-{dead.pid}-abc').mkdir()            # left by a killed build
  (root / f'.tmp-{host}-{os.getpid()}-live').mkdir()         # a live process's build
  (root / f'.tmp-otherhost-{dead.pid}-x').mkdir()            # another host's: not ours to judge
  train, _ = file_corpora.tokenized(str(corpus), cfg, tok)
  names = {p.name for p in root.iterdir()}
  assert f'.tmp-{host}-{dead.pid}-abc' not in names
  assert {f'.tmp-{host}-{os.getpid()}-live', f'.tmp-otherhost-{dead.pid}-x'} <= names
  first = np.concatenate([train[i] for i in range(len(train))])
  st = corpus.stat()
  corpus.write_bytes(corpus.read_bytes().replace(b'the growth', b'THE growth', 1))
  os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))    # same size, same mtime
  train, _ = file_corpora.tokenized(str(corpus), cfg, tok)
  again = np.concatenate([train[i] for i in range(len(train))])
  assert again.shape == first.shape and not np.array_equal(again, first)   # re-tokenised
  assert len([p for p in root.iterdir() if not p.name.startswith('.')]) == 2


def test_full_or_read_only_data_dir_is_one_line_naming_it(tmp_path, monkeypatch):
  corpus = _corpus(tmp_path / 'c.jsonl')
  cfg = DataConfig(source='files', files=(str(corpus),), data_dir=str(tmp_path / 'cache'))

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(file_corpora, '_tokenize', full)
  with pytest.raises(ValueError, match=r'data.data_dir: cannot write the token cache of .* '
                     r'\(No space left on device\); free space there or set data.data_dir'):
    file_corpora.tokenized(str(corpus), cfg, ByteTokenizer())
  monkeypatch.undo()
  if os.geteuid() == 0:      # root writes anywhere: a file in the way stands for read-only
    (tmp_path / 'ro').write_text('')
    data_dir = tmp_path / 'ro' / 'x'
  else:
    (tmp_path / 'ro').mkdir(mode=0o500)
    data_dir = tmp_path / 'ro'
  proc = _refused(['run', 'tiny', 'data.source=files', f'data.files={corpus}', 'train.steps=2',
                    f'train.workdir={tmp_path / "runs"}', f'data.data_dir={data_dir}'])
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and err[0].startswith('error: data.data_dir: '), \
      proc.stderr
