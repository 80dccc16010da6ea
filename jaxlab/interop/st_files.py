"""Safetensors files of a Hugging Face model directory: reading regions of tensors and
writing sharded files, with bounded host memory.

Reading: `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
Every read opens its file, reads one region (`safe_open(...).get_slice(name)[...]`) and
closes it again: safetensors memory-maps the file, and the pages a read touches count in
the process's resident memory as long as the map is open, so one file held open over a
whole import would add a second copy of the checkpoint to the peak RSS (measured: 1.7x
the data for one 768 MB file, against 1.15x opening per read).

Writing: tensors arrive one at a time and are flushed into a file whenever the next one
would take it past `max_shard_bytes`; more than one file gets transformers' names
(model-00001-of-00003.safetensors) and the index. So the host holds one file's tensors.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable

import ml_dtypes  # noqa: F401 -- registers bfloat16 with numpy, for BF16 tensors
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxlab.config.types import ConfigError

SINGLE = 'model.safetensors'
INDEX = 'model.safetensors.index.json'


class Checkpoint:
  """The tensors of a model directory: names, shapes, dtypes, and region reads."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    index = self.path / INDEX
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())['weight_map']
      except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ConfigError(f'{index} is not a safetensors index ({err})') from None
      self.file_of = {name: self.path / f for name, f in weight_map.items()}
    elif (self.path / SINGLE).is_file():
      self.file_of = None
    else:
      others = sorted(p.name for p in self.path.glob('*.bin')) if self.path.is_dir() else []
      hint = (f' (it has {", ".join(others[:3])}: convert to safetensors first, e.g. '
              'save_pretrained(..., safe_serialization=True))') if others else ''
      raise ConfigError(f'{self.path}: no {SINGLE} or {INDEX}{hint}')
    self.shapes: dict[str, tuple[int, ...]] = {}
    self.dtypes: dict[str, str] = {}
    files = sorted(set(self.file_of.values())) if self.file_of else [self.path / SINGLE]
    found = {}
    for f in files:
      if not f.is_file():
        raise ConfigError(f'{self.path}: the index lists {f.name}, which is missing')
      with safe_open(f, 'numpy') as handle:   # the header only: no data pages touched
        for name in handle.keys():
          sl = handle.get_slice(name)
          self.shapes[name] = tuple(sl.get_shape())
          self.dtypes[name] = sl.get_dtype()
          found[name] = f
    if self.file_of is None:
      self.file_of = found
    else:
      absent = sorted(n for n in self.file_of if n not in found)
      if absent:
        raise ConfigError(f'{self.path}: the index lists tensors its files lack: '
                          f'{", ".join(absent[:5])}')

  def names(self) -> list[str]:
    return list(self.shapes)

  def read(self, name: str, region: tuple[slice, ...]) -> np.ndarray:
    """The region (one slice per dim) of tensor `name`, as a new array in its dtype."""
    with safe_open(self.file_of[name], 'numpy') as handle:
      return np.array(handle.get_slice(name)[region], copy=True)


def write_sharded(tensors: Iterable[tuple[str, np.ndarray]], path: str | os.PathLike,
                  max_shard_bytes: int) -> list[str]:
  """Writes (name, array) pairs into `path` as one safetensors file or several plus the
  index (transformers' layout); returns the file names. Holds one file's tensors."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  parts: list[list[str]] = []
  batch: dict[str, np.ndarray] = {}
  size = total = 0

  def flush():
    nonlocal batch, size
    if batch:
      save_file(batch, path / f'.part-{len(parts)}.safetensors', metadata={'format': 'pt'})
      parts.append(list(batch))
      batch, size = {}, 0

  for name, array in tensors:
    if batch and size + array.nbytes > max_shard_bytes:
      flush()
    batch[name] = np.ascontiguousarray(array)
    size += array.nbytes
    total += array.nbytes
  flush()
  for stale in [path / SINGLE, path / INDEX, *path.glob('model-*-of-*.safetensors')]:
    stale.unlink(missing_ok=True)
  if len(parts) == 1:
    os.replace(path / '.part-0.safetensors', path / SINGLE)
    return [SINGLE]
  names = [f'model-{i + 1:05d}-of-{len(parts):05d}.safetensors' for i in range(len(parts))]
  weight_map = {}
  for i, (fname, keys) in enumerate(zip(names, parts)):
    os.replace(path / f'.part-{i}.safetensors', path / fname)
    weight_map.update({k: fname for k in keys})
  (path / INDEX).write_text(json.dumps({'metadata': {'total_size': total},
                                        'weight_map': weight_map}, indent=2) + '\n')
  return names + [INDEX]
