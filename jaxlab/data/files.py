"""data.source=files: local corpora, tokenised once and cached.

  .txt                one document per file; its last data.val_fraction (cut at the line
                      nearest to that point) is validation
  .jsonl, .jsonl.gz   one document per line: the line's data.text_field (default 'text')
  .parquet            one document per row: the column data.text_field
For .jsonl and .parquet the last data.val_fraction of each file's documents (rounded)
is validation, so training never sees a validation document. A malformed line or row is
an error naming the file and the line (1-based) or row (0-based) number (the reading
rules and their messages are jaxlab.data.texts's, shared with `launch.py prepare`).

Tokenisation runs in batches through the tokenizer's encode_batch (threads outside the
GIL for SentencePiece and Hugging Face tokenizers) and is cached: a file's token ids are
written once to <data dir>/tokenized/<key>/ (tokens.npy, offsets.npy, meta.json; written
to a temporary directory `.tmp-<host>-<pid>-*` and renamed, under a lock, so concurrent
processes share one build) and memory-mapped afterwards. The key hashes the file's
content (SHA-256, jaxlab.data.identity), the tokenizer's fingerprint, data.text_field and
data.val_fraction: an edit that keeps the size and the modification time (cp -p,
rsync -t) still re-tokenises. A temporary directory whose process is gone (killed while
tokenising) is removed by the next build on that host. A data dir that is full or
read-only is one line naming it.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import shutil
import socket
import tempfile
from typing import Iterator, Sequence

import numpy as np

from jaxlab.config.types import DataConfig
from jaxlab.data import corpus, identity, texts

FORMATS = texts.FORMATS
_BATCH = 1024          # documents per encode_batch call
_CACHE_VERSION = 2   # 2: keyed by the file's content
_PREFIX, _KEY = 'data.files', 'data.text_field'   # what the reading errors name


def split_at_line(text: str, val_fraction: float) -> tuple[str, str]:
  """(train, validation): validation is about the last `val_fraction` of `text`,
  starting at the line boundary nearest to that point."""
  target = int(round(len(text) * (1.0 - val_fraction)))
  before = text.rfind('\n', 0, target)       # a line starts right after a newline
  after = text.find('\n', target)
  starts = [i + 1 for i in (before, after) if i >= 0] or [len(text)]
  cut = min(starts, key=lambda i: (abs(i - target), i))
  return text[:cut], text[cut:]


def file_format(path: str) -> str:
  return texts.file_format(path, _PREFIX)


# ----------------------------------------------------------------------------- reading

def _jsonl_texts(path: str, field: str) -> Iterator[str]:
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      yield from texts.jsonl_texts(f, path, field, _PREFIX, _KEY)
  except (OSError, EOFError) as err:
    raise ValueError(f'data.files: cannot read {path} ({type(err).__name__}: {err})') from err


def _documents(path: str, cfg: DataConfig) -> tuple[Iterator[str], int | None]:
  """(texts, number of training documents or None = by val_fraction of the count)."""
  fmt = file_format(path)
  if fmt == '.txt':
    try:
      with open(path, 'rb') as f:
        text = texts.txt_text(f.read(), path, _PREFIX)
    except OSError as e:
      raise ValueError(f'data.files: cannot read {path!r}: {e}') from e
    return iter(split_at_line(text, cfg.val_fraction)), 1
  if fmt == '.parquet':
    return texts.parquet_texts(path, cfg.text_field, _PREFIX, _KEY, _BATCH), None
  return _jsonl_texts(path, cfg.text_field), None


# ----------------------------------------------------------------------------- cache

class TokenDocs(Sequence):
  """Documents [lo, hi) of one tokenised file: item i is its token ids (int32)."""

  def __init__(self, tokens: np.ndarray, offsets: np.ndarray, lo: int, hi: int):
    self._tokens, self._offsets, self._lo, self._n = tokens, offsets, lo, hi - lo

  def __len__(self) -> int:
    return self._n

  @property
  def n_tokens(self) -> int:
    return int(self._offsets[self._lo + self._n] - self._offsets[self._lo])

  def __getitem__(self, i):
    if not -self._n <= i < self._n:
      raise IndexError(i)
    i = self._lo + (i % self._n)
    return np.asarray(self._tokens[self._offsets[i]:self._offsets[i + 1]])


class ChainedDocs(Sequence):
  """Several TokenDocs read as one sequence."""

  def __init__(self, parts: list[TokenDocs]):
    self._parts = [p for p in parts if len(p)]
    self._ends = np.cumsum([len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, i):
    n = len(self)
    if not -n <= i < n:
      raise IndexError(i)
    i %= n
    k = int(np.searchsorted(self._ends, i, side='right'))
    return self._parts[k][i - (int(self._ends[k - 1]) if k else 0)]


def _key(path: str, cfg: DataConfig, tokenizer) -> str:
  text = json.dumps([_CACHE_VERSION, identity.file_sha256(path), tokenizer.fingerprint,
                     cfg.text_field, cfg.val_fraction])
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def left_by_dead_processes(parent: pathlib.Path, prefix: str) -> list[pathlib.Path]:
  """The entries of `parent` named `<prefix><pid>[-...]` whose process (on this host: the
  prefix names the host) is gone: what a killed build or command left behind."""
  try:
    entries = list(parent.iterdir())
  except OSError:
    return []
  out = []
  for entry in entries:
    if entry.name.startswith(prefix):
      pid = entry.name[len(prefix):].split('-', 1)[0]
      if pid.isdigit() and not _alive(int(pid)):
        out.append(entry)
  return out


def _remove_dead_builds(root: pathlib.Path) -> None:
  """Temporary build directories of this host's processes that are gone (a kill while
  tokenising); called under the cache lock, so no live build of this host is touched."""
  for entry in left_by_dead_processes(root, f'.tmp-{socket.gethostname()}-'):
    shutil.rmtree(entry, ignore_errors=True)


def _tokenize(path: str, cfg: DataConfig, tokenizer, out: pathlib.Path):
  docs, n_train = _documents(path, cfg)
  chunks, lengths, batch = [], [], []

  def flush():
    for ids in tokenizer.encode_batch(batch):
      chunks.append(ids)
      lengths.append(len(ids))
    batch.clear()
  for text in docs:
    batch.append(text)
    if len(batch) == _BATCH:
      flush()
  flush()
  n = len(lengths)
  if n_train is None:
    n_train = n - int(round(n * cfg.val_fraction))
  tokens = np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32)
  offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
  np.save(out / 'tokens.npy', tokens)
  np.save(out / 'offsets.npy', offsets)
  (out / 'meta.json').write_text(json.dumps({'file': os.path.abspath(path), 'n_docs': n,
                                             'n_train': n_train,
                                             'tokenizer': tokenizer.fingerprint}))


def _build(path: str, cfg: DataConfig, tokenizer, root: pathlib.Path, entry: pathlib.Path):
  root.mkdir(parents=True, exist_ok=True)
  with corpus.file_lock(str(root / '.lock')):
    _remove_dead_builds(root)
    if (entry / 'meta.json').is_file():
      return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.tmp-{socket.gethostname()}-{os.getpid()}-',
                                        dir=root))
    try:
      _tokenize(path, cfg, tokenizer, tmp)
      os.replace(tmp, entry)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def tokenized(path: str, cfg: DataConfig, tokenizer) -> tuple[TokenDocs, TokenDocs]:
  """(train, validation) documents of one file, tokenised (from the cache when there)."""
  if not os.path.isfile(path):
    raise ValueError(f'data.files: {path!r} does not exist')
  root = pathlib.Path(corpus.default_data_dir(cfg.data_dir)) / 'tokenized'
  entry = root / _key(path, cfg, tokenizer)
  if not (entry / 'meta.json').is_file():
    try:
      _build(path, cfg, tokenizer, root, entry)
    except OSError as err:   # full or read-only: the data dir, not the run, is at fault
      raise ValueError(f'data.data_dir: cannot write the token cache of {path} in {root} '
                       f'({err.strerror or err}); free space there or set data.data_dir to a '
                       'writable directory') from None
  meta = json.loads((entry / 'meta.json').read_text())
  tokens = np.load(entry / 'tokens.npy', mmap_mode='r')
  offsets = np.load(entry / 'offsets.npy')
  n, k = meta['n_docs'], meta['n_train']
  return TokenDocs(tokens, offsets, 0, k), TokenDocs(tokens, offsets, k, n)


def documents(cfg: DataConfig, split: str, tokenizer) -> ChainedDocs:
  """Every file's `split` ('train' | 'validation') documents, as token ids."""
  parts = [tokenized(path, cfg, tokenizer)[0 if split == 'train' else 1] for path in cfg.files]
  if not sum(p.n_tokens for p in parts):
    raise ValueError(f'data.files={",".join(cfg.files)!r} give no {split} text (the last '
                     f'data.val_fraction={cfg.val_fraction} of each file is validation)')
  return ChainedDocs(parts)
