"""Hugging Face tokenizers (data.tokenizer=tokenizer.json or its directory) and file corpora
(data.source=files: .jsonl, .jsonl.gz, .parquet): documents come back whole, validation is
each file's tail, tokens are cached, and bad input names the file and line or row."""
import gzip
import json

import numpy as np
import pytest

pytest.importorskip('tokenizers')

import hf_models as H  # noqa: E402
from jaxlab.config import DataConfig  # noqa: E402
from jaxlab.data import HFTokenizer, eval_batches, make_tokenizer, make_train_iterator  # noqa: E402
from jaxlab.data import files as file_corpora  # noqa: E402


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory):
  return H.make_tokenizer(tmp_path_factory.mktemp('tok'), vocab_size=280)


def test_hf_tokenizer_matches_transformers_and_reads_bos_eos(tok_dir, tmp_path):
  import transformers
  tok = make_tokenizer(DataConfig(tokenizer=str(tok_dir)))
  same = make_tokenizer(DataConfig(tokenizer=str(tok_dir / 'tokenizer.json')))
  ref = transformers.AutoTokenizer.from_pretrained(tok_dir)
  assert isinstance(tok, HFTokenizer) and tok.fingerprint == same.fingerprint
  assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (0, 1)
  assert tok.vocab_size == len(ref) == 280
  text = 'The lazy zebras jump over five dozen quick jugs.'
  ids = tok.encode(text)
  assert ids.tolist() == ref(text, add_special_tokens=False)['input_ids']
  assert [x.tolist() for x in tok.encode_batch([text, 'fox'])] == [ids.tolist(),
                                                                    tok.encode('fox').tolist()]
  assert tok.decode(ids) == text
  # No BOS (GPT-2 / Qwen style): documents are separated by EOS.
  config = json.loads((tok_dir / 'tokenizer_config.json').read_text())
  for name in ('tokenizer.json', 'tokenizer_config.json'):
    (tmp_path / name).write_text((tok_dir / name).read_text())
  config['bos_token'] = None
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(config))
  assert HFTokenizer(tmp_path).bos_id == 1
  with pytest.raises(ValueError, match='data.tokenizer'):
    make_tokenizer(DataConfig(tokenizer=str(tmp_path / 'missing' / 'tokenizer.json')))


def _docs(n, seed=0):
  rng = np.random.RandomState(seed)
  words = H.TEXT.split()
  return [f'doc {i}: ' + ' '.join(rng.choice(words, rng.randint(5, 25))) for i in range(n)]


def _write(path, docs, field='text'):
  if path.suffix == '.parquet':
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({field: docs, 'id': list(range(len(docs)))}), path, row_group_size=7)
  else:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'wt', encoding='utf-8') as f:
      for d in docs:
        f.write(json.dumps({field: d, 'meta': 1}) + '\n')
  return str(path)


def _read_back(batches, tok):
  """The documents the packed rows hold (BOS starts each), decoded."""
  docs = []
  for batch in batches:
    for toks, seg in zip(batch['tokens'], batch['segment_ids']):
      for s in np.unique(seg[seg > 0]):
        piece = toks[seg == s]
        if piece[0] == tok.bos_id:
          docs.append(list(piece[1:]))
        else:
          docs[-1].extend(piece)
  return [tok.decode(d) for d in docs]


@pytest.mark.parametrize('kind', ['jsonl', 'jsonl.gz', 'parquet'])
def test_file_corpora_give_whole_documents_and_hold_out_each_files_tail(tok_dir, tmp_path, kind):
  tok = make_tokenizer(DataConfig(tokenizer=str(tok_dir)))
  a, b = _docs(20, 0), _docs(20, 1)
  files = (_write(tmp_path / f'a.{kind}', a, 'body'), _write(tmp_path / f'b.{kind}', b, 'body'))
  cfg = DataConfig(source='files', files=files, text_field='body', seq_len=32,
                   val_fraction=0.1, shuffle_rows=0, tokenizer=str(tok_dir),
                   data_dir=str(tmp_path / 'cache'))
  train_docs = a[:18] + b[:18]
  n_tokens = sum(len(tok.encode(d)) + 1 for d in train_docs)
  it = make_train_iterator(cfg, tok, 2)
  got = _read_back([next(it) for _ in range(n_tokens // (2 * 33))], tok)
  assert sorted(got[:-1]) == sorted(set(got[:-1])) and set(got[:-1]) <= set(train_docs)
  assert len(got) >= len(train_docs) - 4   # the last partial batch is dropped
  held_out = (a[18], a[19], b[18], b[19])
  val = _read_back(eval_batches(cfg, tok, 2, 2), tok)
  assert val and all(any(h.startswith(v) for h in held_out) for v in val)


def test_tokens_are_cached_and_rebuilt_when_the_file_changes(tok_dir, tmp_path, monkeypatch):
  tok = make_tokenizer(DataConfig(tokenizer=str(tok_dir)))
  path = _write(tmp_path / 'c.jsonl', _docs(10))
  cfg = DataConfig(source='files', files=(path,), val_fraction=0.2,
                   data_dir=str(tmp_path / 'cache'))
  train, val = file_corpora.tokenized(path, cfg, tok)
  assert (len(train), len(val)) == (8, 2)
  assert [d.tolist() for d in train] == [tok.encode(d).tolist() for d in _docs(10)[:8]]

  def refuse(texts):
    raise AssertionError('tokenised again')
  monkeypatch.setattr(tok, 'encode_batch', refuse)
  again, _ = file_corpora.tokenized(path, cfg, tok)   # from the cache
  assert [d.tolist() for d in again] == [d.tolist() for d in train]
  _write(tmp_path / 'c.jsonl', _docs(10, seed=3))
  with pytest.raises(AssertionError, match='tokenised again'):
    file_corpora.tokenized(path, cfg, tok)


@pytest.mark.parametrize('content, message', [
    ('{"text": "a"}\n{"text": "b"\n', r'c\.jsonl line 2: not valid JSON'),
    ('{"text": "a"}\n\n{"body": "b"}\n', r"c\.jsonl line 3: no field 'text'.*body"),
    ('{"text": 7}\n', r"c\.jsonl line 1: field 'text' is int"),
    ('["text"]\n', r"c\.jsonl line 1: no field 'text'"),
])
def test_bad_jsonl_lines_are_named(tmp_path, content, message):
  path = tmp_path / 'c.jsonl'
  path.write_text(content)
  cfg = DataConfig(source='files', files=(str(path),), data_dir=str(tmp_path / 'cache'))
  with pytest.raises(ValueError, match=message):
    file_corpora.tokenized(str(path), cfg, make_tokenizer(cfg))


def test_bad_parquet_columns_and_rows_are_named(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  cfg = DataConfig(source='files', data_dir=str(tmp_path / 'cache'))
  tok = make_tokenizer(cfg)
  path = tmp_path / 'p.parquet'
  pq.write_table(pa.table({'content': ['a', 'b']}), path)
  with pytest.raises(ValueError, match=r"p\.parquet: no column 'text'.*content"):
    file_corpora.tokenized(str(path), cfg, tok)
  pq.write_table(pa.table({'text': ['a', None, 'c']}), path)
  with pytest.raises(ValueError, match=r"p\.parquet row 1: 'text' is null"):
    file_corpora.tokenized(str(path), cfg, tok)
  pq.write_table(pa.table({'text': [1, 2]}), path)
  with pytest.raises(ValueError, match=r"column 'text' holds int64"):
    file_corpora.tokenized(str(path), cfg, tok)
  with pytest.raises(ValueError, match=r'unknown extension; allowed: \.txt, \.jsonl'):
    file_corpora.file_format('corpus.csv')
