"""Prepared datasets: a corpus tokenised once (`launch.py prepare`) into ArrayRecord
shards and a manifest, read with random access by grain (data.source=prepared).

  DIR/manifest.json                              what the dataset is (written last)
  DIR/train-00000-of-00004.array_record ...      one record per document
  DIR/validation-00000-of-00001.array_record ...

A record is one document's token ids, with no BOS or EOS (the pipeline adds BOS when it
packs), as little-endian bytes of the manifest's `dtype` (uint16 where the vocabulary
fits, else uint32). The split is by document and fixed here: a document is validation
when the first 8 bytes of the SHA-256 of its UTF-8 text, read as a big-endian integer,
fall below val_fraction x 2^64 (so a duplicated document lands on one side, whatever the
file or order it comes in). Within a split the i-th document, in source order (sources
sorted by path, each read in file order), goes to shard i mod n_shards.

A directory is a dataset only once its manifest exists: `launch.py prepare` writes the
shards and the manifest in a temporary sibling and renames it into place, so a prepare
that was killed leaves nothing readable as a dataset. The manifest holds the tokenizer's
identity (spec, fingerprint, vocabulary size, BOS / EOS), the text field, the val
fraction, each source file (path, size, SHA-256, documents) and, per split, its shards
with their documents and tokens. Readers trust the manifest, not the source files: a
source changed after preparing is not read again.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
from etils import epath

FORMAT = 'jaxlab-prepared'
VERSION = 1
MANIFEST = 'manifest.json'
SPLITS = ('train', 'validation')
# One record per group: reading one document reads only that document (grain's random
# access). Uncompressed: one document's ids compress by about 13% (zstd, ArrayRecord's
# default), and compressing them was most of the writing process's CPU time
# (docs/data.md#throughput).
WRITER_OPTIONS = 'group_size:1,uncompressed'


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def token_dtype(vocab_size: int) -> str:
  return 'uint16' if vocab_size <= 1 << 16 else 'uint32'


def is_validation(text: str, val_fraction: float) -> bool:
  """Whether a document (its text) belongs to the validation split."""
  digest = hashlib.sha256(text.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') < val_fraction * 2.0 ** 64


def encode_record(ids, dtype: str) -> bytes:
  return np.asarray(ids, dtype=np.dtype(dtype).newbyteorder('<')).tobytes()


def decode_record(record: bytes, dtype: str) -> np.ndarray:
  return np.frombuffer(record, dtype=np.dtype(dtype).newbyteorder('<')).astype(np.int32)


class ShardWriter:
  """Writes a split's documents round-robin into `count` ArrayRecord shards of a
  directory, counting documents and tokens per shard."""

  def __init__(self, directory, split: str, count: int, dtype: str):
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    if count < 1:
      raise ValueError(f'shards: {count}; expected >= 1')
    self.split, self.dtype = split, dtype
    self.names = [shard_name(split, k, count) for k in range(count)]
    self._writers = [array_record_module.ArrayRecordWriter(str(directory) + '/' + name,
                                                           WRITER_OPTIONS)
                     for name in self.names]
    self.documents = [0] * count
    self.tokens = [0] * count
    self._next = 0

  def add(self, ids) -> None:
    k = self._next
    self._writers[k].write(encode_record(ids, self.dtype))
    self.documents[k] += 1
    self.tokens[k] += len(ids)
    self._next = (k + 1) % len(self._writers)

  def close(self) -> dict[str, Any]:
    for writer in self._writers:
      writer.close()
    return {'shards': self.names, 'documents': self.documents, 'tokens': self.tokens}


def read_manifest(path: str, key: str = 'data.path') -> dict[str, Any]:
  """The manifest of the prepared dataset at `path` (local or a URL etils.epath reads);
  ValueError, one line naming `key` and the path, when it is not one."""
  try:
    text = (epath.Path(path) / MANIFEST).read_text()
  except FileNotFoundError:
    raise ValueError(f'{key}={path!r} is not a prepared dataset (no {MANIFEST}: make one '
                     'with `launch.py prepare`; a prepare that did not finish leaves none)'
                     ) from None
  except (OSError, ImportError) as err:
    raise ValueError(f'{key}={path!r}: cannot read {MANIFEST} ({type(err).__name__}: '
                     f'{err})') from None
  try:
    manifest = json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f'{key}={path!r}: {MANIFEST} is not valid JSON ({err})') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ValueError(f'{key}={path!r}: {MANIFEST} is not a jaxlab prepared dataset\'s')
  if manifest.get('version') != VERSION:
    raise ValueError(f'{key}={path!r}: prepared with format version '
                     f'{manifest.get("version")}; this jaxlab reads version {VERSION} '
                     '(prepare it again)')
  return manifest


def manifest_sha256(path: str) -> str:
  """The SHA-256 of the dataset's manifest.json bytes: what the dataset is."""
  return hashlib.sha256((epath.Path(path) / MANIFEST).read_bytes()).hexdigest()


class SplitDocuments(Sequence):
  """One split of a prepared dataset: item i is document i's token ids (int32), the
  shards read one after another in the manifest's order."""

  def __init__(self, path: str, split: str, manifest: dict[str, Any] | None = None):
    import grain  # pylint: disable=import-outside-toplevel
    manifest = manifest if manifest is not None else read_manifest(path)
    if split not in SPLITS:
      raise ValueError(f'split {split!r}; expected one of {", ".join(SPLITS)}')
    entry = manifest['splits'][split]
    self._dtype = manifest['dtype']
    self.n_tokens = int(sum(entry['tokens']))
    paths = [str(epath.Path(path) / name) for name, n in zip(entry['shards'], entry['documents'])
             if n]
    self._source = grain.sources.ArrayRecordDataSource(paths) if paths else []

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    n = len(self)
    if not -n <= i < n:
      raise IndexError(i)
    return decode_record(self._source[i % n], self._dtype)
