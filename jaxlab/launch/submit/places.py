"""Where a submitted run's data and checkpoints are, and whether every host can reach them.

A multi-host run reads its data on every host (each reads its own documents) and writes
one checkpoint whose shards come from every host, so those places must be ones all hosts
see: a bucket (gs://..., any URL etils.epath reads) or, on SLURM, a shared file system --
the checkout the job runs in (`cd` into it on every node, so it is shared already; a
relative path lies in it) or a directory the user marks shared with --shared-dir DIR.
TPU workers share no disk (each holds a copy of the project only): there only URLs count.
The embedded corpus and TFDS datasets need no shared place (each host builds or reads its
own copy under data.data_dir).
"""
from __future__ import annotations

import os
import pathlib

from jaxlab.config.types import Config, ConfigError, is_url, mixture_entries
from jaxlab.launch.submit.common import ROOT


def data_places(cfg: Config) -> list[tuple[str, str]]:
  """(key, place) of each path the run reads its data from ([] for embedded / TFDS)."""
  d = cfg.data
  if d.source == 'files':
    return [('data.files', f) for f in d.files]
  if d.source == 'prepared':
    return [('data.path', d.path)] if d.path else [
        ('data.mixture', p) for p, _ in mixture_entries(d.mixture)]
  return []


def checkpoint_place(cfg: Config) -> tuple[str, str]:
  """(key, place) where every host writes its checkpoint shards."""
  t = cfg.train
  if t.checkpoint_dir:
    return 'train.checkpoint_dir', t.checkpoint_dir
  if is_url(t.mirror_dir):   # checkpoints go straight into the mirror (jaxlab.rundir.mirror)
    return 'train.mirror_dir', t.mirror_dir
  return 'train.workdir', t.workdir


def describe(cfg: Config) -> str:
  """One line: where the run's data comes from (what a dry run shows)."""
  d = cfg.data
  if d.source == 'embedded':
    return 'data: the embedded corpus (each host builds its own copy)'
  if d.source == 'tfds':
    return f'data: TFDS dataset {d.tfds_name} (each host reads it under data.data_dir)'
  if d.source == 'prepared' and d.mixture:
    parts = ', '.join(f'{p} ({100 * w:.3g}%)' for p, w in mixture_entries(d.mixture))
    return f'data: a mixture of prepared datasets {parts}'
  what = 'prepared dataset' if d.source == 'prepared' else 'files'
  return f'data: {what} ' + ', '.join(p for _, p in data_places(cfg))


def _shared(place: str, shared_dirs: list[str]) -> bool:
  if is_url(place):
    return True
  if not shared_dirs:   # TPU: no file system is shared
    return False
  path = pathlib.Path(os.path.abspath(os.path.join(ROOT, place)))
  return any(path == pathlib.Path(d) or pathlib.Path(d) in path.parents for d in shared_dirs)


def check(cfg: Config, hosts: int, target: str, shared_dirs: list[str] = ()) -> None:
  """ConfigError (exit 2) naming the first place of a multi-host run that only this
  machine (TPU: each worker) has, and the remedy. shared_dirs: SLURM's shared file
  systems (the checkout and --shared-dir); none on TPU."""
  if hosts <= 1:
    return
  shared = [os.path.abspath(d) for d in shared_dirs]
  remedy = ('a bucket (gs://BUCKET/PATH)' if target == 'tpu' else
            'a bucket (gs://BUCKET/PATH) or a file system every node mounts (under the '
            f'checkout {ROOT}, or marked with --shared-dir DIR)')
  for key, place in data_places(cfg):
    if not _shared(place, shared):
      raise ConfigError(f'{key}={place} is local to this machine, but the run spans {hosts} '
                        f'hosts that each read it: put the data in {remedy} and point '
                        f'{key} there')
  key, place = checkpoint_place(cfg)
  if not _shared(place, shared):
    raise ConfigError(f'{key}={place} is local to each host, but the run spans {hosts} hosts '
                      'that write one checkpoint together: set train.mirror_dir (or '
                      f'train.checkpoint_dir) to {remedy}')
