"""`launch.py prepare` (jaxlab.data.prepare, jaxlab.launch.prepare): every source format
read back through the prepared reader equals the tokenizer's ids of its documents, split
by the documents' hash; the output is the same bytes whatever --workers; a prepare killed
with SIGKILL leaves no dataset and its rerun writes the bytes of an uninterrupted one; bad
input is one line naming the file and the line or row (exit 2); a prepared --out is left
alone or refused. The CLI runs in this process (cli_runs.refused) but for the kill."""
import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxlab.config.types import DataConfig
from jaxlab.data import prepared
from jaxlab.data.tokenizers import ByteTokenizer, make_tokenizer

from cli_runs import refused

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORDS = ('the model grows in depth and width while the loss falls over many steps of '
         'training on tokens').split()


def _docs(n, seed=0, words=40):
  out = []
  for i in range(n):
    k = (i * 7 + seed * 13) % len(WORDS)
    out.append(' '.join(WORDS[(k + j * (i % 5 + 1)) % len(WORDS)] for j in range(words + i % 9))
               + f' ({seed}.{i}) é')
  return out


def _jsonl(path, docs, field='text', blank_every=0):
  lines = []
  for i, d in enumerate(docs):
    lines.append(json.dumps({field: d, 'id': i}))
    if blank_every and i % blank_every == 0:
      lines.append('')
  data = ('\n'.join(lines) + '\n').encode()
  if str(path).endswith('.gz'):
    data = gzip.compress(data, mtime=0)
  pathlib.Path(path).write_bytes(data)
  return path


def _parquet(path, docs, field='text'):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({field: docs}), path)
  return path


def _prepare(*args, out, tokenizer='byte', cwd=None):
  return refused('prepare', *map(str, args), '--tokenizer', str(tokenizer), '--out', str(out),
                 cwd=cwd)


def _read(out, split):
  return [d.tolist() for d in prepared.SplitDocuments(str(out), split)]


def _expected(docs, tok, val_fraction, shards, val_shards):
  """Each split's documents in SplitDocuments' order: shard by shard, shard k holding the
  split's documents k, k + n, ..."""
  out = {}
  for split, n in (('train', shards), ('validation', val_shards)):
    mine = [tok.encode(d).tolist() for d in docs
            if prepared.is_validation(d, val_fraction) == (split == 'validation')]
    out[split] = [ids for k in range(n) for ids in mine[k::n]]
  return out


def _files(out):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out).iterdir())}


def _one_line(proc):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
  return lines[0]


def test_every_format_and_a_glob_read_back_as_the_tokenizers_ids(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  a, b, c, d = _docs(30, 1), _docs(25, 2), _docs(20, 3), _docs(1, 4, words=300)
  _jsonl(src / 'a.jsonl', a, blank_every=7)
  _jsonl(src / 'b.jsonl.gz', b)
  _parquet(src / 'c.parquet', c)
  (src / 'd.txt').write_text(d[0])
  out = tmp_path / 'ds'
  proc = _prepare(src / '*.jsonl*', src / 'c.parquet', src / 'd.txt', '--val-fraction', '0.2',
                  '--shards', '3', '--workers', '2', out=out)
  assert proc.returncode == 0, proc.stderr
  assert f'prepared {out}' in proc.stdout
  manifest = prepared.read_manifest(str(out))
  assert [s['path'] for s in manifest['sources']] == [str(src / n) for n in (
      'a.jsonl', 'b.jsonl.gz', 'c.parquet', 'd.txt')]
  assert [s['documents'] for s in manifest['sources']] == [30, 25, 20, 1]
  assert manifest['sources'][1]['size'] == (src / 'b.jsonl.gz').stat().st_size
  assert manifest['tokenizer'] == {'spec': 'byte', 'fingerprint': 'byte', 'vocab_size': 257,
                                   'bos_id': 256, 'eos_id': None}
  assert manifest['dtype'] == 'uint16' and manifest['val_fraction'] == 0.2
  assert len(manifest['splits']['validation']['shards']) == 1      # ceil(3 x 0.2)
  expected = _expected(a + b + c + d, ByteTokenizer(), 0.2, 3, 1)
  assert 0 < len(expected['validation']) < len(expected['train'])
  assert _read(out, 'train') == expected['train']
  assert _read(out, 'validation') == expected['validation']
  assert sum(manifest['splits']['train']['tokens']) == sum(map(len, expected['train']))


def _hf_tokenizer(path, docs):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(docs, trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<s>', '</s>'], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path.mkdir()
  tok.save(str(path / 'tokenizer.json'))
  (path / 'tokenizer_config.json').write_text(json.dumps({'bos_token': '<s>',
                                                          'eos_token': '</s>'}))
  return path


def test_a_hugging_face_tokenizer_and_the_same_bytes_whatever_the_workers(tmp_path):
  docs = _docs(300, 5)
  tok_dir = _hf_tokenizer(tmp_path / 'tok', docs[:50])
  _jsonl(tmp_path / 'a.jsonl', docs[:150])
  _jsonl(tmp_path / 'b.jsonl', docs[150:])
  outs = []
  for workers in (1, 2):
    outs.append(tmp_path / f'w{workers}')
    proc = _prepare(tmp_path / 'a.jsonl', tmp_path / 'b.jsonl', '--workers', workers,
                    '--shards', '2', out=outs[-1], tokenizer=tok_dir)
    assert proc.returncode == 0, proc.stderr
  assert _files(outs[0]) == _files(outs[1])
  tok = make_tokenizer(DataConfig(tokenizer=str(tok_dir)))
  manifest = prepared.read_manifest(str(outs[0]))
  assert manifest['tokenizer'] == {'spec': str(tok_dir), 'fingerprint': tok.fingerprint,
                                   'vocab_size': tok.vocab_size, 'bos_id': 0, 'eos_id': 1}
  expected = _expected(docs, tok, 0.05, 2, 1)
  assert _read(outs[0], 'train') == expected['train']
  assert _read(outs[0], 'validation') == expected['validation']


def test_a_killed_prepare_leaves_no_dataset_and_its_rerun_writes_the_same_bytes(tmp_path):
  """The prepare reads a FIFO, so that it is surely mid-way when it is killed: its shards
  are open, and it has read 3 of the 4 MB (a write to a FIFO returns once all but the pipe's
  64 KB are read), so several 1 MiB chunks went through the workers; the rerun reads the
  same lines from a file at that path."""
  lines = b''.join(json.dumps({'text': d}).encode() + b'\n' for d in _docs(16000, 6))
  assert 4e6 < len(lines) < 5e6
  src, out = tmp_path / 'c.jsonl', tmp_path / 'ds'
  os.mkfifo(src)
  proc = subprocess.Popen([sys.executable, 'launch.py', 'prepare', str(src), '--tokenizer',
                           'byte', '--out', str(out), '--workers', '2'], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    with open(src, 'wb') as fifo:          # opens once the prepare reads
      fifo.write(lines[:3 * len(lines) // 4])
      fifo.flush()
      partial = None
      for _ in range(200):
        found = list(tmp_path.glob('.ds.partial-*'))
        if found and any(found[0].glob('train-*')):
          partial = found[0]
          break
        time.sleep(0.05)
      assert partial is not None
      time.sleep(0.3)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=30)
  except BrokenPipeError:
    pass
  finally:
    proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert partial.is_dir() and not out.exists()
  with pytest.raises(ValueError, match='not a prepared dataset'):
    prepared.read_manifest(str(out))
  src.unlink()
  src.write_bytes(lines)
  assert _prepare(src, out=out).returncode == 0
  assert not partial.exists()                        # what the killed one left is gone
  ref = tmp_path / 'ref'
  assert _prepare(src, '--workers', '1', out=ref).returncode == 0
  assert _files(out) == _files(ref)


def _bad_gz(path):
  data = gzip.compress(b''.join(b'{"text": "line %d"}\n' % i for i in range(2000)), mtime=0)
  path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('name, content, message', [
    ('e.jsonl', b'', r'e\.jsonl: no documents \(the file is empty\)'),
    ('b.jsonl', b'\n  \n\n', r'b\.jsonl: no documents \(only blank lines\)'),
    ('u.jsonl', b'{"text": "a"}\n{"text": "\xff"}\n', r'u\.jsonl line 2: not UTF-8'),
    ('u.txt', b'one\ntwo \xc3\n', r'u\.txt line 2: not UTF-8'),
    ('j.jsonl', b'{"text": "a"}\n\n{"text": \n', r'j\.jsonl line 3: not valid JSON'),
    ('l.jsonl', b'{"text": "a"}\n[1, 2]\n', r"l\.jsonl line 2: no field 'text' .*JSON list"),
    ('s.jsonl', b'"x"\n', r"s\.jsonl line 1: no field 'text' .*JSON str"),
    ('f.jsonl', b'{"text": "a"}\n{"body": "b"}\n',
     r"f\.jsonl line 2: no field 'text' \(--text-field; the line has: body\)"),
    ('n.jsonl', b'{"text": 7}\n', r"n\.jsonl line 1: field 'text' is int, not a string"),
    ('t.jsonl.gz', _bad_gz, r't\.jsonl\.gz after line \d+ \(truncated or corrupt'),
    ('c.parquet', {'body': ['a']}, r"c\.parquet: no column 'text' \(--text-field; columns: body"),
    ('c.parquet', {'text': ['a', None]}, r"c\.parquet row 1: 'text' is null"),
    ('c.parquet', {'text': [1, 2]}, r"c\.parquet: column 'text' holds int64, not strings"),
    ('c.csv', b'text\na\n', r"c\.csv' has an unknown extension; allowed: \.txt"),
])
def test_bad_input_is_one_line_naming_the_file_and_line(tmp_path, name, content, message):
  path = tmp_path / name
  if callable(content):
    content(path)
  elif isinstance(content, dict):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(content), path)
  else:
    path.write_bytes(content)
  good = _jsonl(tmp_path / 'a.jsonl', _docs(5))            # sorted first: read, then refused
  out = tmp_path / 'ds'
  line = _one_line(_prepare(good, path, '--workers', '2', out=out))
  assert line.startswith('error: prepare: ') and str(tmp_path) in line
  assert __import__('re').search(message, line), line
  assert not out.exists() and not list(tmp_path.glob('.ds.partial-*'))


def test_bad_arguments_are_one_line(tmp_path):
  good = _jsonl(tmp_path / 'a.jsonl', _docs(5))
  out = tmp_path / 'ds'
  assert "'" + str(tmp_path / '*.parquet') + "' matches no file" in _one_line(
      _prepare(tmp_path / '*.parquet', out=out))
  assert 'no such file: ' + str(tmp_path / 'z.jsonl') in _one_line(
      _prepare(tmp_path / 'z.jsonl', out=out))
  line = _one_line(_prepare(good, out=out, tokenizer=tmp_path / 'none.model'))
  assert '--tokenizer ' in line and 'none.model' in line and 'data.tokenizer' not in line
  assert '--val-fraction 1.0' in _one_line(_prepare(good, '--val-fraction', '1', out=out))
  assert not out.exists()


def test_a_prepared_out_is_kept_or_refused_and_a_foreign_one_refused(tmp_path):
  src = _jsonl(tmp_path / 'a.jsonl', _docs(40))
  out = tmp_path / 'ds'
  out.mkdir()                                                # empty: fine
  assert _prepare(src, out=out).returncode == 0
  before = _files(out)
  again = _prepare(src, '--workers', '1', out=out)
  assert again.returncode == 0 and 'already prepared' in again.stdout
  for args in (['--shards', '2'], ['--val-fraction', '0.5'], ['--text-field', 'body']):
    line = _one_line(_prepare(src, *args, out=out))
    assert f'--out {out} holds a prepared dataset of other inputs' in line
  _jsonl(src, _docs(40, seed=9))                             # the source's content changed
  assert 'differs in the sources' in _one_line(_prepare(src, out=out))
  assert _files(out) == before
  foreign = tmp_path / 'mine'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('keep')
  assert 'is not empty and holds no prepared dataset' in _one_line(_prepare(src, out=foreign))
  assert [p.name for p in foreign.iterdir()] == ['notes.txt']
