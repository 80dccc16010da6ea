"""What a run trains on, as a record it can be held to: the data's identity.

  {"source": "files", "tokenizer": "<fingerprint>",
   "files": [{"path": "/abs/a.jsonl", "size": 52310, "sha256": "..."}, ...]}

A run writes it (data.json in its directory) when it first starts, and checks it before
anything compiles when it resumes: a file that changed (in size or content), that is
gone, or that the config now names by another path, and another tokenizer, are refused
with one line naming the file and what changed (jaxlab.train.trainer). For the embedded
corpus and TFDS sources the record holds the source and its name; their builders fix the
content by version. A prepared dataset (data.path, or each of data.mixture's) is its
manifest: its SHA-256 (the manifest holds every shard's documents and tokens and every
source file's hash) and its tokenizer's fingerprint; a changed manifest is refused like a
changed file, and a dataset moved to another place (data.path) is the same dataset.

Hashing a corpus costs one read of it (about 1 GB/s); `file_sha256` remembers each file's
digest for its (size, modification and change times, inode) within a process, so the token cache, which is
keyed by the same digest (jaxlab.data.files), does not read it twice.
"""
from __future__ import annotations

import functools
import hashlib
import os

from jaxlab.config.types import DataConfig
from jaxlab.data import mixture

_CHUNK = 1 << 22


@functools.lru_cache(maxsize=1024)
def _sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes."""
  st = os.stat(path)   # ctime moves on every write, also when the mtime is set back
  return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def describe(cfg: DataConfig, tokenizer) -> dict:
  """The identity of the data `cfg` reads through `tokenizer`."""
  out = {'source': cfg.source, 'tokenizer': tokenizer.fingerprint}
  if cfg.source == 'files':
    out['files'] = [{'path': os.path.abspath(p), 'size': os.path.getsize(p),
                     'sha256': file_sha256(p)} for p in cfg.files]
  elif cfg.source == 'tfds':
    out['tfds_name'] = cfg.tfds_name
  elif cfg.source == 'prepared':
    out['datasets'] = mixture.identity(cfg)
  return out


def differences(recorded: dict, cfg: DataConfig, tokenizer) -> list[str]:
  """What differs between a recorded identity and the data as it is now (one phrase per
  difference, each naming the file); [] when it is the same."""
  out = []
  if recorded.get('tokenizer') != tokenizer.fingerprint:
    out.append(f'the tokenizer (data.tokenizer={cfg.tokenizer!r}) is another one than the run '
               'started with')
  if recorded.get('source') != cfg.source:
    out.append(f'data.source is {cfg.source!r}, the run started with {recorded.get("source")!r}')
    return out
  if cfg.source == 'prepared':
    return out + _prepared_differences(recorded.get('datasets', []), cfg)
  if cfg.source != 'files':
    return out
  now = [os.path.abspath(p) for p in cfg.files]
  before = [f['path'] for f in recorded.get('files', [])]
  if now != before:
    out.append(f'data.files names {", ".join(now)}; the run started with {", ".join(before)}')
    return out
  for entry in recorded['files']:
    path = entry['path']
    if not os.path.isfile(path):
      out.append(f'{path} is gone')
      continue
    size = os.path.getsize(path)
    if size != entry['size']:
      out.append(f'{path} changed: {entry["size"]} bytes when the run started, {size} now')
    elif file_sha256(path) != entry['sha256']:
      out.append(f'{path} changed: same size ({size} bytes), other content (SHA-256 '
                 f'{entry["sha256"][:12]}... then, {file_sha256(path)[:12]}... now)')
  return out


def _prepared_differences(before: list[dict], cfg: DataConfig) -> list[str]:
  now = mixture.identity(cfg)
  if len(now) != len(before):
    return [f'{mixture.config_key(cfg)} names {len(now)} dataset(s); the run started with '
            f'{len(before)}']
  return [f'{new["path"]} is another dataset than {old["path"]} was when the run started '
          f'(its manifest\'s SHA-256 {old["manifest_sha256"][:12]}... then, '
          f'{new["manifest_sha256"][:12]}... now)'
          for old, new in zip(before, now) if old['manifest_sha256'] != new['manifest_sha256']]

