"""A run directory kept in a bucket as well (`train.mirror_dir`): how a pod's metrics,
TensorBoard events and summary land where every host and the researcher's laptop can
read them, and how a run whose machine is gone resumes on another one.

The run writes its directory on local disk as always (the lock, the append-only
metrics.jsonl and the write-then-rename replacements need a POSIX file system; an object
store has neither flock nor rename). `Mirror` copies it to `<train.mirror_dir>/<name>/`:

  push   process 0, after every checkpoint save and when the session ends (completed,
         stopped, diverged or failed): every file that changed since the last push
         (by size and modification time), except the lock, W&B's own folder (W&B syncs
         it) and temporary files. At most one checkpoint interval of metrics is missing
         from the mirror while the run goes on.
  pull   every process, before the run directory is opened: when the local directory
         has no config.json and the mirror has one, the mirror's files are copied down
         (a new VM resuming a preempted run, or a host that never held the directory).

Checkpoints are not copied: with `train.mirror_dir` set and `train.checkpoint_dir` empty,
orbax writes them straight into `<train.mirror_dir>/<name>/checkpoints`
(jaxlab.rundir.checkpoint.checkpoint_dir), so the mirror is a whole run directory:
`launch.py report` or a resume can read it after a plain copy.

URLs go through etils.epath (gs:// needs gcsfs, s3:// s3fs; credentials come from the
environment as those libraries read them, never from a jaxlab config). `file:///path`
names a local or network-mounted directory used the same way (the tests' bucket).
"""
from __future__ import annotations

import os
import pathlib

from jaxlab.config.types import ConfigError
from jaxlab.rundir import atomic
from jaxlab.rundir.layout import CONFIG_FILE, LOCK_FILE, WANDB_DIR

FILE_SCHEME = 'file://'
# Top-level names a push leaves out: checkpoints are written to the mirror directly, or
# stay where train.checkpoint_dir puts them; W&B uploads its own folder.
SKIP_TOP = (LOCK_FILE, WANDB_DIR, 'checkpoints', 'checkpoints_unreadable',
            'checkpoints_superseded')


def location(text: str):
  """A directory named by a path or URL: pathlib for a plain path or file://, else an
  etils.epath path (gs://, s3://, ...)."""
  text = os.fspath(text)
  if text.startswith(FILE_SCHEME):
    return pathlib.Path(text[len(FILE_SCHEME):])
  if '://' not in text:
    return pathlib.Path(os.path.abspath(text))
  from etils import epath
  return epath.Path(text)


def _skipped(rel: pathlib.PurePath) -> bool:
  return rel.parts[0] in SKIP_TOP or rel.name.endswith('.tmp')


def _put(data: bytes, dest) -> None:
  """Writes `data` to `dest` whole: a temporary file renamed over it on a file system,
  one upload (atomic per object) on a bucket."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(dest, pathlib.Path):
    atomic.replace(dest, data)
  else:
    dest.write_bytes(data)


class Mirror:
  """The copy of run directory `local` at `url` (train.mirror_dir / name)."""

  def __init__(self, local: pathlib.Path, url: str):
    self.local = pathlib.Path(local)
    self.url = url
    self.remote = location(url)
    self._sent: dict[str, tuple[int, int]] = {}

  def check(self) -> None:
    """Creates the mirror directory: a URL this machine cannot write is the user's to fix
    (ConfigError naming train.mirror_dir), found before anything compiles."""
    try:
      self.remote.mkdir(parents=True, exist_ok=True)
    except ImportError as err:   # epath's backend for the scheme is not installed
      raise ConfigError(f'train.mirror_dir: cannot reach {self.url}: {err}') from None
    except OSError as err:
      raise ConfigError(f'train.mirror_dir: cannot create {self.url} ({err.strerror or err}); '
                        'set it to a directory this machine can write') from None

  def pull(self) -> bool:
    """Copies the mirror down when the local directory has no config.json and the mirror
    has one; True when it did."""
    if (self.local / CONFIG_FILE).exists() or not (self.remote / CONFIG_FILE).exists():
      return False
    for src in self.remote.rglob('*'):
      rel = pathlib.PurePosixPath(os.fspath(src)[len(os.fspath(self.remote)):].lstrip('/'))
      if not rel.parts or _skipped(rel) or src.is_dir():
        continue
      _put(src.read_bytes(), self.local / rel)
    self._sent = self._scan()   # what came down need not go up again
    return True

  def push(self) -> int:
    """Copies every file changed since the last push; returns how many."""
    now = self._scan()
    changed = [rel for rel, stamp in now.items() if self._sent.get(rel) != stamp]
    for rel in changed:
      _put((self.local / rel).read_bytes(), self.remote / rel)
    self._sent = now
    return len(changed)

  def _scan(self) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime)} of the files a push copies."""
    out = {}
    for root, dirs, files in os.walk(self.local):
      if pathlib.Path(root) == self.local:
        dirs[:] = [d for d in dirs if d not in SKIP_TOP]
      for name in files:
        rel = pathlib.Path(root, name).relative_to(self.local)
        if _skipped(rel):
          continue
        try:
          st = (self.local / rel).stat()
        except FileNotFoundError:   # renamed away since the walk listed it
          continue
        out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def mirror_url(cfg) -> str:
  """Where the run directory of cfg is mirrored ('' without train.mirror_dir)."""
  return f'{cfg.train.mirror_dir.rstrip("/")}/{cfg.name}' if cfg.train.mirror_dir else ''
