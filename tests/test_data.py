"""Tests for jaxlab.data: embedded corpus, tokenizers, packing, resume, sharding, sources."""
import dataclasses
import hashlib
import json
import re
import os
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest

from jaxlab.config import DataConfig
from jaxlab.data import (ByteTokenizer, SentencePieceTokenizer, eval_batches, make_tokenizer,
                         make_train_iterator, train_sentencepiece)
from jaxlab.data import corpus, pipeline
from jaxlab.data import files as file_corpora

REPO = pathlib.Path(__file__).resolve().parent.parent
BOS = ByteTokenizer.bos_id
_NO_NETWORK = ('import socket\n'
               'def _refuse(*a, **k): raise OSError("network access during a test")\n'
               'socket.socket.connect = socket.socket.connect_ex = _refuse\n'
               'socket.create_connection = socket.getaddrinfo = _refuse\n')


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS dir for the whole run, shared by the xdist workers (whoever comes first
  builds the corpus, the other waits on the lock)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  return str(root / 'jaxlab_tfds')


@pytest.fixture(scope='session')
def embedded(data_dir):
  return DataConfig(data_dir=data_dir)


@pytest.fixture(scope='session')
def embedded_docs(data_dir):
  out = {}
  for split in corpus.SPLITS:
    src = corpus.data_source(split, data_dir)
    out[split] = {src[i]['id'].decode(): src[i]['text'].decode() for i in range(len(src))}
  return out


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _pieces(batches):
  """(row_position, tokens) of every document piece in the batches' rows, in order."""
  out = []
  for batch in batches:
    for toks, seg in zip(batch['tokens'], batch['segment_ids']):
      for s in np.unique(seg[seg > 0]):
        where = np.flatnonzero(seg == s)
        out.append((int(where[0]), toks[where]))
  return out


def _stream_documents(batches):
  """Rebuilds the documents (byte tokens without BOS) that the packed rows came from."""
  docs = []
  for start, toks in _pieces(batches):
    if toks[0] == BOS:
      docs.append(list(toks[1:]))
    else:
      assert start == 0 and docs, 'a piece without BOS must continue the previous row'
      docs[-1].extend(toks)
  return [ByteTokenizer().decode(d) for d in docs]


def _write_files(tmp_path, n_files, n_lines, tag='f'):
  paths = []
  for i in range(n_files):
    path = tmp_path / f'{tag}{i}.txt'
    path.write_text(''.join(f'{tag}{i} line {j:03d} ü\n' for j in range(n_lines)), encoding='utf-8')
    paths.append(str(path))
  return tuple(paths)


# ----------------------------------------------------------------------------- corpus

_BUILD = _NO_NETWORK + '''
import hashlib, sys
from jaxlab.data import corpus
h, counts, chars = hashlib.sha256(), [], 0
for split in corpus.SPLITS:
  src = corpus.data_source(split, sys.argv[1])
  counts.append(len(src))
  for i in range(len(src)):
    h.update(src[i]['id'] + b'\\0' + src[i]['text'] + b'\\0')
    chars += len(src[i]['text'].decode())
print(*counts, chars, h.hexdigest())
'''


def test_corpus_builds_offline_concurrently_and_is_large(tmp_path, embedded_docs):
  """Two processes build the same fresh data dir at once, with the network refused;
  both read what the shared test corpus holds."""
  procs = [subprocess.Popen([sys.executable, '-c', _BUILD, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  results = [out.split() for out, _ in outs]
  assert results[0] == results[1]
  h = hashlib.sha256()
  for split in corpus.SPLITS:
    for doc_id, text in embedded_docs[split].items():
      h.update(doc_id.encode() + b'\0' + text.encode() + b'\0')
  train, val = embedded_docs['train'], embedded_docs['validation']
  chars = sum(len(t) for d in (train, val) for t in d.values())
  assert results[0] == [str(len(train)), str(len(val)), str(chars), h.hexdigest()]
  assert chars >= corpus.MIN_CHARS
  assert 0.02 * len(train) < len(val) < 0.10 * len(train)
  built = tmp_path / corpus.NAME / corpus.PY_CONFIG
  assert corpus.PY_CONFIG == f'py{sys.version_info.major}_{sys.version_info.minor}'
  assert list(built.glob('*/*validation.array_record*'))
  assert not list(tmp_path.glob(f'{corpus.NAME}/**/incomplete*'))


def test_corpus_documents_are_english_and_deterministic():
  docs = list(corpus.documents())
  assert docs == list(corpus.documents())
  assert sum(len(text) for _, text in docs) >= corpus.MIN_CHARS
  ids = [doc_id for doc_id, _ in docs]
  assert len(set(ids)) == len(ids)
  assert 'module:json' in ids and 'topic:assert' in ids
  assert not any(i.startswith(('module:test', 'module:idlelib')) or '.test' in i for i in ids)
  text = dict(docs)['module:json.decoder']
  assert text.startswith('module json.decoder\n\n') and '\n\nclass json.decoder.JSONDecoder\n\n' in text


def test_corpus_builder_refuses_a_small_corpus(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, 'documents', lambda: iter([('topic:x', 'tiny')]))
  with pytest.raises(RuntimeError, match='only 4 characters'):
    corpus.data_source('train', str(tmp_path))


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv('JAXLAB_DATA_DIR', '/tmp/from_env')
  assert corpus.default_data_dir('/tmp/explicit') == '/tmp/explicit'
  assert corpus.default_data_dir('') == '/tmp/from_env'
  monkeypatch.delenv('JAXLAB_DATA_DIR')
  assert corpus.default_data_dir('') == os.path.expanduser('~/.cache/jaxlab/tensorflow_datasets')


# ----------------------------------------------------------------------------- tokenizers

def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = 'Grüße, 世界! \t\n🙂'
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and list(ids) == list(text.encode('utf-8'))
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([[BOS], ids])) == text   # BOS is not text
  assert (tok.vocab_size, tok.bos_id) == (257, 256)
  assert isinstance(make_tokenizer(DataConfig()), ByteTokenizer)


def test_sentencepiece_train_and_round_trip(tmp_path):
  texts = [f'Line {i}: the quick brown fox jumps over the lazy dog, {i * i} times.\n  indented'
           for i in range(200)]
  tok = train_sentencepiece(texts, str(tmp_path / 'sp'), vocab_size=400)
  loaded = make_tokenizer(DataConfig(tokenizer=str(tmp_path / 'sp.model')))
  assert isinstance(loaded, SentencePieceTokenizer)
  assert loaded.vocab_size == tok.vocab_size == 400 and loaded.bos_id == 1
  for text in ['the quick brown fox\n\n  jumps', 'Grüße 世界 🙂\ttab  two  spaces ', '']:
    ids = loaded.encode(text)
    assert ids.dtype == np.int32 and (len(ids) == 0 or ids.max() < 400)
    assert loaded.decode(ids) == text
  assert len(loaded.encode('the quick brown fox')) <= 6   # merges were learned


def test_make_tokenizer_missing_file_names_the_key(tmp_path):
  with pytest.raises(ValueError, match='data.tokenizer'):
    make_tokenizer(DataConfig(tokenizer=str(tmp_path / 'nope.model')))


# ----------------------------------------------------------------------------- packing

def _check_rows(batches, seq_len, batch_size, allow_padding=False):
  for batch in batches:
    assert set(batch) == {'tokens', 'segment_ids'}
    for key in batch:
      assert batch[key].shape == (batch_size, seq_len + 1) and batch[key].dtype == np.int32
    for toks, seg in zip(batch['tokens'], batch['segment_ids']):
      real = seg > 0
      n_real = int(real.sum())
      assert real[:n_real].all(), 'padding only at the end of a row'
      if n_real < seq_len + 1:
        assert allow_padding and (toks[~real] == 0).all()
      ids = seg[real]
      assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}   # restart at 1, count up by one
      starts = np.flatnonzero(np.diff(ids)) + 1             # a new piece where the id changes
      assert (toks[starts] == BOS).all()
      bos_at = set(np.flatnonzero(toks[:n_real] == BOS))
      assert bos_at <= set(starts) | {0}                   # BOS only at a piece start


def test_packing_embedded(embedded):
  cfg = dataclasses.replace(embedded, seq_len=128)
  batches = _take(make_train_iterator(cfg, ByteTokenizer(), batch_size=8), 40)
  _check_rows(batches, 128, 8)
  seg = np.concatenate([b['segment_ids'] for b in batches])
  assert seg.max() >= 2   # some rows hold two documents


def test_packing_reassembles_documents_and_pads_only_the_end():
  docs = ['a' * 5, 'bb' * 40, '', 'ccc', 'd' * 300, 'é' * 7]
  rows = list(pipeline._rows(grain.MapDataset.source(docs), ByteTokenizer(), seq_len=31))
  tokens = np.stack([r['tokens'] for r in rows])
  seg = np.stack([r['segment_ids'] for r in rows])
  batches = [{'tokens': tokens, 'segment_ids': seg}]
  _check_rows(batches, 31, len(rows), allow_padding=True)
  assert _stream_documents(batches) == [d for d in docs if d]
  n_tokens = sum(len(d.encode()) + 1 for d in docs if d)
  assert len(rows) == -(-n_tokens // 32) and int((seg > 0).sum()) == n_tokens
  assert (seg[:-1] > 0).all() and (seg[-1] == 0).any()    # only the last row is padded


# ----------------------------------------------------------------------------- determinism, resume

_FIRST_BATCHES = '''
import hashlib, sys
from jaxlab.config import DataConfig
from jaxlab.data import make_tokenizer, make_train_iterator
cfg = DataConfig(data_dir=sys.argv[1], seq_len=64)
it = make_train_iterator(cfg, make_tokenizer(cfg), batch_size=4)
h = hashlib.sha256()
for _ in range(5):
  b = next(it); h.update(b['tokens'].tobytes()); h.update(b['segment_ids'].tobytes())
print(h.hexdigest())
'''


def test_same_seed_same_batches_even_in_a_fresh_process(embedded):
  cfg = dataclasses.replace(embedded, seq_len=64)
  first = _take(make_train_iterator(cfg, ByteTokenizer(), batch_size=4), 5)
  assert _same(first, _take(make_train_iterator(cfg, ByteTokenizer(), batch_size=4), 5))
  other = _take(make_train_iterator(dataclasses.replace(cfg, seed=1), ByteTokenizer(), 4), 5)
  assert not np.array_equal(first[0]['tokens'], other[0]['tokens'])
  digest = hashlib.sha256()
  for b in first:
    digest.update(b['tokens'].tobytes())
    digest.update(b['segment_ids'].tobytes())
  env = dict(os.environ, PYTHONHASHSEED='12345')
  out = subprocess.run([sys.executable, '-c', _FIRST_BATCHES, embedded.data_dir], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[-1] == digest.hexdigest()


def _resume_matches(cfg, batch_size, cut, reference):
  it = make_train_iterator(cfg, ByteTokenizer(), batch_size)
  _take(it, cut)
  state = json.loads(json.dumps(it.get_state()))
  fresh = make_train_iterator(cfg, ByteTokenizer(), batch_size)
  fresh.set_state(state)
  after = _take(fresh, len(reference) - cut)
  return _same(after, reference[cut:])


def test_exact_resume_embedded(embedded):
  cfg = dataclasses.replace(embedded, seq_len=64)
  reference = _take(make_train_iterator(cfg, ByteTokenizer(), 4), 30)
  for cut in (0, 1, 7, 23):
    assert _resume_matches(cfg, 4, cut, reference), cut


def test_exact_resume_across_epochs_and_reshuffle(tmp_path):
  files = _write_files(tmp_path, n_files=6, n_lines=12)
  # shuffle_rows=0: documents are rebuilt from consecutive rows (row shuffling is
  # resumed exactly too: see test_exact_resume_with_row_shuffle).
  cfg = DataConfig(source='files', files=files, data_dir=str(tmp_path / 'cache'),
                   seq_len=48, val_fraction=0.25, shuffle_rows=0)
  tok = ByteTokenizer()
  train_docs = [tok.decode(d) for d in file_corpora.documents(cfg, 'train', tok)]
  epoch_tokens = sum(len(d.encode()) + 1 for d in train_docs)
  batch_size = 2
  n = 3 * epoch_tokens // (batch_size * 49) + 2   # about three epochs
  reference = _take(make_train_iterator(cfg, ByteTokenizer(), batch_size), n)
  for cut in range(n - 3):   # every cut point, including the epoch boundaries
    assert _resume_matches(cfg, batch_size, cut, reference[:cut + 3]), cut
  # Epoch by epoch, every training document once, in a new order each epoch.
  stream = _stream_documents(reference)
  epochs = [stream[i * len(train_docs):(i + 1) * len(train_docs)] for i in range(2)]
  assert all(sorted(e) == sorted(train_docs) for e in epochs)
  assert epochs[0] != epochs[1]


def test_row_shuffle_mixes_documents_keeps_every_row_and_resumes(tmp_path):
  files = _write_files(tmp_path, n_files=8, n_lines=30)
  plain = DataConfig(source='files', files=files, data_dir=str(tmp_path / 'cache'),
                     seq_len=32, val_fraction=0.1, shuffle_rows=0)
  mixed = dataclasses.replace(plain, shuffle_rows=64)
  tok = ByteTokenizer()
  # 32 batches of 4 rows = two whole windows of 64 rows: the same rows, another order.
  rows = lambda batches: [tuple(r) for b in batches for r in b['tokens']]
  a = _take(make_train_iterator(plain, tok, 4), 32)
  b = _take(make_train_iterator(mixed, tok, 4), 32)
  assert sorted(rows(a)) == sorted(rows(b)) and rows(a) != rows(b)
  # Each line names its file (~16 rows per file): unshuffled, a batch of 4 consecutive
  # rows mostly sees one file; shuffled within 64 rows, it sees several.
  def files_per_batch(batches):
    return np.mean([len(set(re.findall(r'f(\d) line', tok.decode(batch['tokens'].ravel()))))
                    for batch in batches])
  assert files_per_batch(a) < 1.6 and files_per_batch(b) > 2.5
  reference = _take(make_train_iterator(mixed, tok, 4), 40)
  for cut in (0, 3, 16, 17, 33):   # inside and at the edges of shuffle windows
    assert _resume_matches(mixed, 4, cut, reference), cut


def test_set_state_rejects_another_pipeline(embedded):
  state = make_train_iterator(embedded, ByteTokenizer(), 4).get_state()
  with pytest.raises(ValueError, match='different pipeline'):
    make_train_iterator(embedded, ByteTokenizer(), 8).set_state(state)


# ----------------------------------------------------------------------------- splits, shards

def test_validation_disjoint_from_training_embedded(embedded, embedded_docs):
  train, val = embedded_docs['train'], embedded_docs['validation']
  assert train and val and not set(train) & set(val)
  assert all(corpus.split_of(i) == 'validation' for i in val)
  assert all(corpus.split_of(i) == 'train' for i in train)
  # Every piece of text the pipeline yields comes from its own split's documents
  # (compared as bytes: a piece may start or end inside a multi-byte character).
  train_bytes = b'\x00'.join(t.encode() for t in train.values())
  val_bytes = b'\x00'.join(t.encode() for t in val.values())
  tok = ByteTokenizer()
  cfg = dataclasses.replace(embedded, seq_len=128)
  for batches, source in [(eval_batches(cfg, tok, 8, 4), val_bytes),
                          (_take(make_train_iterator(cfg, tok, 8), 10), train_bytes)]:
    pieces = _pieces(batches)
    assert len(pieces) > 32
    for _, piece in pieces:
      assert piece[piece != BOS].astype(np.uint8).tobytes() in source


def test_eval_batches_fixed_and_sized(embedded):
  tok = ByteTokenizer()
  first = eval_batches(embedded, tok, batch_size=4, n_batches=3)
  assert len(first) == 3 and _same(first, eval_batches(embedded, tok, 4, 3))
  assert _same(first, eval_batches(dataclasses.replace(embedded, seed=7), tok, 4, 3))
  _check_rows(first, embedded.seq_len, 4, allow_padding=True)
  with pytest.raises(ValueError, match=r'only \d+ batches.*train.eval_batches=100000'):
    eval_batches(embedded, tok, batch_size=4, n_batches=100_000)


def test_process_shards_are_disjoint(tmp_path):
  files = _write_files(tmp_path, n_files=7, n_lines=6)
  cfg = DataConfig(source='files', files=files, data_dir=str(tmp_path / 'cache'),
                   seq_len=32, val_fraction=0.3, shuffle_rows=0)
  tok = ByteTokenizer()
  seen = []
  for index in range(2):
    it = make_train_iterator(cfg, tok, 2, process_index=index, process_count=2)
    docs = _stream_documents(_take(it, 12))[:-1]   # whole documents
    seen.append({d.split(' ')[0] for d in docs})
  assert seen[0] and seen[1] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == {f'f{i}' for i in range(7)}
  val = [{d.split(' ')[0] for d in _stream_documents(eval_batches(cfg, tok, 1, 2, i, 2))[:-1]}
         for i in range(2)]
  assert val[0] and val[1] and not val[0] & val[1]


# ----------------------------------------------------------------------------- sources

def test_files_source_holds_out_the_tail_of_each_file(tmp_path):
  files = _write_files(tmp_path, n_files=3, n_lines=40)
  cfg = DataConfig(source='files', files=files, data_dir=str(tmp_path / 'cache'),
                   seq_len=64, val_fraction=0.1, shuffle_rows=0)
  all_lines = {line for f in files for line in open(f, encoding='utf-8').read().splitlines()}
  val_lines = {f'f{i} line {j:03d} ü' for i in range(3) for j in range(36, 40)}
  tok = ByteTokenizer()
  train_docs = _stream_documents(_take(make_train_iterator(cfg, tok, 4), 20))[:-1]  # whole docs
  assert len(train_docs) > 3
  assert {line for d in train_docs for line in d.splitlines()} == all_lines - val_lines
  # 3 files x 4 held-out lines x 16 bytes + BOS = 3 rows of 65 tokens exactly.
  val_docs = _stream_documents(eval_batches(cfg, tok, 1, 3))
  assert sorted(val_docs) == sorted(''.join(f'f{i} line {j:03d} ü\n' for j in range(36, 40))
                                    for i in range(3))
  with pytest.raises(ValueError, match='only 3 batches'):
    eval_batches(cfg, tok, 1, 4)
  assert file_corpora.split_at_line('ab\ncd\nef\ngh\n', 0.25) == ('ab\ncd\nef\n', 'gh\n')
  assert file_corpora.split_at_line('one long line', 0.5) == ('one long line', '')


def test_tfds_source_by_name_matches_embedded(embedded):
  cfg = dataclasses.replace(embedded, source='tfds', tfds_name=corpus.NAME,
                            tfds_train_split='train', tfds_val_split='validation', seq_len=64)
  tok = ByteTokenizer()
  via_tfds = _take(make_train_iterator(cfg, tok, 4), 3)
  direct = _take(make_train_iterator(dataclasses.replace(embedded, seq_len=64), tok, 4), 3)
  assert _same(via_tfds, direct)
  assert _same(eval_batches(cfg, tok, 4, 2),
               eval_batches(dataclasses.replace(embedded, seq_len=64), tok, 4, 2))
  with pytest.raises(ValueError, match='data.text_field'):
    make_train_iterator(dataclasses.replace(cfg, text_field='body'), tok, 4)
  with pytest.raises(ValueError, match='data.tfds_name'):
    make_train_iterator(dataclasses.replace(cfg, tfds_name='no_such_dataset_xyz'), tok, 4)


class JaxlabUnpreparable(corpus.JaxlabCorpus):
  """A TFDS dataset that cannot be prepared here (like one that needs a download)."""
  BUILDER_CONFIGS = []

  def _split_generators(self, dl_manager):
    raise ConnectionError('no network')


def test_tfds_source_unpreparable_is_a_clear_error(tmp_path):
  cfg = DataConfig(source='tfds', tfds_name='jaxlab_unpreparable', data_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="data.tfds_name='jaxlab_unpreparable' is not prepared"):
    make_train_iterator(cfg, ByteTokenizer(), 4)


def test_eval_all_is_every_validation_token_for_any_process_count(embedded, embedded_docs):
  # train.eval_batches=all: the tokens (segment id != 0) of all batches are exactly the
  # split's, [BOS] + the UTF-8 bytes of each validation document; the first batches are
  # those of a fixed count; two processes get equally many batches whose rows, batch by
  # batch, are the single-process rows (the padding rows of the last batch aside).
  tok = ByteTokenizer()
  cfg = dataclasses.replace(embedded, seq_len=128)
  whole = eval_batches(cfg, tok, 8, 'all')
  n_tokens = sum(len(t.encode()) + 1 for t in embedded_docs['validation'].values())
  assert sum(int(np.sum(b['segment_ids'] != 0)) for b in whole) == n_tokens
  assert all(b['tokens'].shape == (8, 129) for b in whole)
  assert _same(whole[:3], eval_batches(cfg, tok, 8, 3))
  assert _same(whole, eval_batches(cfg, tok, 8, 'all'))
  halves = [eval_batches(cfg, tok, 4, 'all', p, 2) for p in range(2)]
  assert len(halves[0]) == len(halves[1]) == len(whole)
  for b, h0, h1 in zip(whole, *halves):
    for k in b:
      np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), b[k])


def test_eval_cost_note_by_hand():
  from jaxlab.data import eval_cost_note
  # 48 batches x 10 evaluations (steps 100..1000; the last is one of them) x 0.2 / 1000
  # steps = 9.6%: no note. 95 x 14 (30..420) x 0.2 / 420 = 63.3%: a note.
  assert eval_cost_note(48, 100, 1000) is None
  note = eval_cost_note(95, 30, 420)
  assert '95 batches at each of 14 evaluations, about 63%' in note
  assert 'train.eval_batches=N' in note
  assert eval_cost_note(187, 0, 500) is None          # only the final evaluation: 7.5%
