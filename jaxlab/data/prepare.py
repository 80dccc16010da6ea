"""`launch.py prepare`'s engine: text files tokenised once, in parallel, into a prepared
dataset (the format is jaxlab.data.prepared's).

The main process reads the sources (sorted by path, each in file order) in chunks: about
1 MiB of whole .jsonl lines (decompressed), 1024 parquet rows, or a whole .txt file, and
hashes each file's bytes as it goes (the manifest's SHA-256). Worker processes (fork,
each running its tokenizer on one thread: TOKENIZERS_PARALLELISM=false,
RAYON_NUM_THREADS=1) decode and check the chunk (jaxlab.data.texts: the one-line errors
naming the file and line or row), split it by `is_validation` and tokenise it. At most
2 x workers + 2 chunks are in flight, so memory stays flat whatever the corpus's size;
the main process takes the results back in the order it read them and writes the
records with one ShardWriter per split, so the output, shards and manifest alike, is the
same bytes whatever the number of workers. A worker whose parent is gone (killed) exits
within a second.

Blank .jsonl lines are skipped (they are not documents; line numbers still count them);
an empty string is a document of no tokens. A file with no documents (empty, or only
blank lines) is an error, as is a source that names nothing.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib

import numpy as np
from etils import epath

from jaxlab.config.types import DataConfig, is_url
from jaxlab.data import prepared, texts
from jaxlab.data.tokenizers import HFTokenizer, SentencePieceTokenizer, make_tokenizer

PREFIX, KEY = 'prepare', '--text-field'       # what the reading errors name
_CHUNK = 1 << 20                # bytes of .jsonl lines per task
_ROWS = 1024                    # parquet rows per task
_SHARD_TEXT = 512 << 20         # default: one train shard per this much source text ...
_PACKED = 4                     # ... a .jsonl.gz or .parquet byte counted as this many
_PROGRESS_SECONDS = 30.0
NEWLINE = b'\n'


@dataclasses.dataclass(frozen=True)
class Source:
  path: str        # as the manifest records it: absolute for a local file, else its URL
  fmt: str
  size: int


@dataclasses.dataclass(frozen=True)
class Plan:
  sources: tuple[Source, ...]
  tokenizer: str   # the spec the workers load: 'byte', or an absolute local path
  text_field: str
  val_fraction: float
  shards: int      # train shards
  val_shards: int
  workers: int


def _matches(pattern: str) -> list[str]:
  if not is_url(pattern):
    return glob.glob(os.path.expanduser(pattern), recursive=True)
  parts = pattern.split('/')
  k = next(i for i, p in enumerate(parts) if glob.has_magic(p))
  return [str(p) for p in epath.Path('/'.join(parts[:k])).glob('/'.join(parts[k:]))]


def expand(patterns: list[str]) -> tuple[Source, ...]:
  """The files SRC... name (globs expanded), sorted by path; ValueError for a glob that
  matches nothing, a file that is missing or has an unknown extension."""
  paths = set()
  for pattern in patterns:
    if glob.has_magic(pattern):
      found = [p for p in _matches(pattern) if not epath.Path(p).is_dir()]
      if not found:
        raise ValueError(f'{PREFIX}: {pattern!r} matches no file')
    else:
      found = [pattern]
    for path in found:
      paths.add(path if is_url(path) else os.path.abspath(os.path.expanduser(path)))
  out = []
  for path in sorted(paths):
    fmt = texts.file_format(path, PREFIX)
    try:
      stat = epath.Path(path).stat()
    except FileNotFoundError:
      raise ValueError(f'{PREFIX}: no such file: {path}') from None
    except (OSError, ImportError) as err:
      raise ValueError(f'{PREFIX}: cannot read {path} ({type(err).__name__}: {err})') from None
    if stat.is_directory:
      raise ValueError(f'{PREFIX}: {path} is a directory: name its files, or a glob such as '
                       f'{path}/*.jsonl')
    out.append(Source(path, fmt, int(stat.length)))
  return tuple(out)


def default_shards(sources, val_fraction: float, shards: int | None) -> tuple[int, int]:
  """(train, validation) shard counts: `shards`, else one per 512 MiB of source text (a
  compressed source, .jsonl.gz or .parquet, counted at 4x its size), at least 1; the
  validation split gets val_fraction of that, at least 1."""
  if shards is None:
    text = sum(s.size * (1 if s.fmt in ('.txt', '.jsonl') else _PACKED) for s in sources)
    shards = max(1, math.ceil(text / _SHARD_TEXT))
  return shards, max(1, math.ceil(shards * val_fraction))


def load_tokenizer(spec: str):
  """(spec as recorded, tokenizer); a local path is made absolute."""
  if spec != 'byte':
    spec = os.path.abspath(os.path.expanduser(spec))
  try:
    return spec, make_tokenizer(DataConfig(tokenizer=spec))
  except ValueError as err:
    raise ValueError(str(err).replace('data.tokenizer=', '--tokenizer ')) from None


def make_plan(patterns, tokenizer: str, text_field: str = 'text', val_fraction: float = 0.05,
              shards: int | None = None, workers: int | None = None):
  """(Plan, tokenizer) of a prepare; ValueError, one line, for anything it refuses."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'--val-fraction {val_fraction}: expected 0 <= fraction < 1')
  if shards is not None and shards < 1:
    raise ValueError(f'--shards {shards}: expected >= 1')
  if workers is None:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
        os.cpu_count() or 1)
  if workers < 1:
    raise ValueError(f'--workers {workers}: expected >= 1')
  sources = expand(list(patterns))
  spec, tok = load_tokenizer(tokenizer)
  train, val = default_shards(sources, val_fraction, shards)
  return Plan(sources, spec, text_field, float(val_fraction), train, val, workers), tok


def tokenizer_entry(plan: Plan, tok) -> dict:
  eos = getattr(tok, 'eos_id', None)
  if isinstance(tok, SentencePieceTokenizer):
    import sentencepiece   # pylint: disable=import-outside-toplevel
    eos = sentencepiece.SentencePieceProcessor(model_file=tok.path).eos_id()
    eos = eos if eos >= 0 else None
  return {'spec': plan.tokenizer, 'fingerprint': tok.fingerprint,
          'vocab_size': int(tok.vocab_size), 'bos_id': int(tok.bos_id), 'eos_id': eos}


# ----------------------------------------------------------------------------- reading

class _Hashed:
  """A binary file read through, keeping the SHA-256 and the count of its bytes."""

  def __init__(self, file):
    self._file, self.sha256, self.size = file, hashlib.sha256(), 0

  def read(self, n: int = -1) -> bytes:
    data = self._file.read(n)
    self.sha256.update(data)
    self.size += len(data)
    return data

  def drain(self) -> None:
    while self.read(_CHUNK):
      pass


@dataclasses.dataclass(frozen=True)
class _End:
  """The marker after a source's last chunk: its entry in the manifest but documents."""
  path: str
  size: int
  sha256: str


def _line_chunks(stream, path: str):
  """('lines', path, first line number, bytes of whole lines) of a decompressed stream."""
  buf, line = bytearray(), 1
  while True:
    try:
      block = stream.read(_CHUNK)
    except (OSError, EOFError, zlib.error) as err:
      done = line - 1 + buf.count(NEWLINE)
      raise ValueError(f'{PREFIX}: cannot read {path} after line {done} (truncated or '
                       f'corrupt: {type(err).__name__}: {err})') from None
    if not block:
      break
    buf += block
    cut = buf.rfind(NEWLINE) + 1
    if cut:
      chunk = bytes(buf[:cut])
      del buf[:cut]
      yield 'lines', path, line, chunk
      line += chunk.count(NEWLINE)
  if buf:
    yield 'lines', path, line, bytes(buf)


def _tasks(source: Source, field: str):
  """The chunks of one source, then its _End."""
  try:
    with epath.Path(source.path).open('rb') as raw:
      file = _Hashed(raw)
      if source.fmt == '.txt':
        yield 'txt', source.path, 1, file.read()
      elif source.fmt == '.parquet':
        file.drain()
        with epath.Path(source.path).open('rb') as f:
          for row, batch in texts.parquet_batches(f, source.path, field, PREFIX, KEY, _ROWS):
            yield 'texts', source.path, row, batch
      elif source.fmt == '.jsonl.gz':
        yield from _line_chunks(gzip.GzipFile(fileobj=file, mode='rb'), source.path)
      else:
        yield from _line_chunks(file, source.path)
      file.drain()
  except OSError as err:
    raise ValueError(f'{PREFIX}: cannot read {source.path} ({type(err).__name__}: {err})'
                     ) from None
  yield _End(source.path, file.size, file.sha256.hexdigest())


def source_hashes(plan: Plan) -> list[str]:
  """Each source's SHA-256, read through once."""
  out = []
  for source in plan.sources:
    with epath.Path(source.path).open('rb') as raw:
      file = _Hashed(raw)
      file.drain()
    out.append(file.sha256.hexdigest())
  return out


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _watch(parent: int) -> None:
  while True:
    if os.getppid() != parent:
      os._exit(1)   # the prepare was killed: nobody will read this worker's results
    time.sleep(0.5)


def _init_worker(spec: str, field: str, val_fraction: float, dtype: str, parent: int) -> None:
  os.environ.update(TOKENIZERS_PARALLELISM='false', RAYON_NUM_THREADS='1', OMP_NUM_THREADS='1')
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the main process's to handle
  _WORKER.update(tok=make_tokenizer(DataConfig(tokenizer=spec)), field=field,
                 val_fraction=val_fraction, dtype=dtype)
  threading.Thread(target=_watch, args=(parent,), daemon=True).start()


def _encode(tok, docs: list[str]) -> list:
  if isinstance(tok, HFTokenizer):
    return tok.encode_batch(docs)   # serial here: TOKENIZERS_PARALLELISM=false
  return [tok.encode(d) for d in docs]   # SentencePiece's batch call would start threads


def _work(task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(is validation, token counts, token ids) of a chunk's documents."""
  kind, path, first, payload = task
  w = _WORKER
  if kind == 'lines':
    docs = [texts.line_text(line, w['field'], path, first + i, PREFIX, KEY)
            for i, line in enumerate(payload.split(NEWLINE))]
    docs = [d for d in docs if d is not None]
  elif kind == 'txt':
    doc = texts.txt_text(payload, path, PREFIX)
    docs = [doc] if doc.strip() else []
  else:
    docs = payload
  flags = np.array([prepared.is_validation(d, w['val_fraction']) for d in docs], bool)
  ids = _encode(w['tok'], docs)
  lengths = np.array([len(x) for x in ids], np.int64)
  tokens = np.concatenate(ids).astype(w['dtype']) if ids else np.zeros(0, w['dtype'])
  return flags, lengths, tokens


def _context():
  methods = multiprocessing.get_all_start_methods()
  return multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')


# ----------------------------------------------------------------------------- writing

class _Writer:
  """Takes the chunks' results back in reading order and writes their records."""

  def __init__(self, plan: Plan, out, dtype: str, total_bytes: int):
    self.splits = {'train': prepared.ShardWriter(out, 'train', plan.shards, dtype),
                   'validation': prepared.ShardWriter(out, 'validation', plan.val_shards, dtype)}
    self.sources, self.documents, self.tokens = [], 0, 0
    self._docs, self._total, self._read = 0, total_bytes, 0
    self._start = self._last = time.monotonic()

  def settle(self, item) -> None:
    if isinstance(item, _End):
      if not self._docs:
        why = 'the file is empty' if not item.size else 'only blank lines'
        raise ValueError(f'{PREFIX}: {item.path}: no documents ({why})')
      self.sources.append({'path': item.path, 'size': item.size, 'sha256': item.sha256,
                           'documents': self._docs})
      self._read += item.size
      self._docs = 0
      return
    flags, lengths, tokens = item.result()
    train, val = self.splits['train'], self.splits['validation']
    ends = np.cumsum(lengths)
    for flag, end, n in zip(flags.tolist(), ends.tolist(), lengths.tolist()):
      (val if flag else train).add(tokens[end - n:end])
    self._docs += len(lengths)
    self.documents += len(lengths)
    self.tokens += int(ends[-1]) if len(ends) else 0
    now = time.monotonic()
    if now - self._last > _PROGRESS_SECONDS:
      self._last = now
      print(f'prepare: {self.documents} documents, {self.tokens} tokens, sources '
            f'{self._read / 1e9:.2f} of {self._total / 1e9:.2f} GB done '
            f'({self.tokens / (now - self._start):.4g} tokens/s)', file=sys.stderr, flush=True)

  def close(self) -> dict:
    return {name: w.close() for name, w in self.splits.items()}


def write(plan: Plan, tok, out) -> dict:
  """Tokenises the plan's sources into the directory `out` (which exists): the shards,
  then manifest.json. Returns the manifest; ValueError, one line, for bad input."""
  dtype = prepared.token_dtype(tok.vocab_size)
  writer = _Writer(plan, out, dtype, sum(s.size for s in plan.sources))
  pool = concurrent.futures.ProcessPoolExecutor(
      plan.workers, mp_context=_context(), initializer=_init_worker,
      initargs=(plan.tokenizer, plan.text_field, plan.val_fraction, dtype, os.getpid()))
  pending, limit = collections.deque(), 2 * plan.workers + 2
  tasks = (t for s in plan.sources for t in _tasks(s, plan.text_field))
  try:
    while True:
      try:
        task = next(tasks)
      except StopIteration:
        break
      except ValueError:   # a file unreadable here: an earlier document's error comes first
        while pending:
          writer.settle(pending.popleft())
        raise
      pending.append(task if isinstance(task, _End) else pool.submit(_work, task))
      while len(pending) > limit:
        writer.settle(pending.popleft())
    while pending:
      writer.settle(pending.popleft())
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  manifest = {'format': prepared.FORMAT, 'version': prepared.VERSION, 'dtype': dtype,
              'tokenizer': tokenizer_entry(plan, tok), 'text_field': plan.text_field,
              'val_fraction': plan.val_fraction, 'sources': writer.sources,
              'splits': writer.close()}
  text = json.dumps(manifest, sort_keys=True, indent=1) + '\n'
  (epath.Path(str(out)) / prepared.MANIFEST).write_text(text)   # last: now it is a dataset
  return manifest


def differences(manifest: dict, plan: Plan, tok) -> list[str]:
  """What differs between a prepared dataset's manifest and the inputs of `plan` (one
  phrase each); [] when preparing again would write the same dataset."""
  out = []
  recorded = [s.get('sha256') for s in manifest.get('sources', [])]
  if recorded != source_hashes(plan):
    out.append(f'the sources ({len(recorded)} files there, {len(plan.sources)} now, compared '
               'by content)')
  if manifest.get('tokenizer', {}).get('fingerprint') != tok.fingerprint:
    out.append('the tokenizer')
  for key, value in (('text_field', plan.text_field), ('val_fraction', plan.val_fraction)):
    if manifest.get(key) != value:
      out.append(f'{key} ({manifest.get(key)!r} there, {value!r} now)')
  splits = manifest.get('splits', {})
  shards = tuple(len(splits.get(k, {}).get('shards', ())) for k in prepared.SPLITS)
  if shards != (plan.shards, plan.val_shards):
    out.append(f'the shard counts ({shards[0]} + {shards[1]} there, {plan.shards} + '
               f'{plan.val_shards} now)')
  return out
