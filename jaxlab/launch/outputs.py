"""Folders a command makes whole or not at all: `launch.py export --out DIR` and
`launch.py grow --out RUN_DIR2`.

The command writes into a temporary sibling, `.<name>.partial-<host>-<pid>`, and renames it
to `--out` when everything is written: a command killed at any point leaves `--out` as it
was (absent, or the folder it held), never a folder that loads with mismatched parts, and
rerunning it writes the same bytes. Partial siblings of processes that are gone (on this
host) are removed by the next command that writes next to them; with --overwrite, a folder
set aside by a command killed before its replacement was renamed in is put back.

An `--out` that exists and is not empty is refused (one line, exit 2) naming what it
holds (a Hugging Face model, a jaxlab run, or files), unless `--overwrite` is given; even
then never when it is the command's own source (the folder a run was initialised or grown
from, or the run being exported): replacing a source while reading it would destroy it.
With --overwrite the old folder is swapped out only after the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket

from jaxlab.config.types import ConfigError
from jaxlab.data.files import left_by_dead_processes
from jaxlab.rundir.checkpoint import Checkpointer, checkpoint_dir
from jaxlab.rundir.directory import RunDir
from jaxlab.rundir.provenance import Origin

_PARTIAL = '.partial-'
_REPLACED = '.replaced-'


def _what(path: pathlib.Path) -> str:
  names = {p.name for p in path.iterdir()}
  if 'config.json' in names and any(n.endswith('.safetensors') or n.endswith('.safetensors.index.json')
                                    for n in names):
    return 'holds a Hugging Face model'
  if 'config.json' in names and ('metrics.jsonl' in names or 'checkpoints' in names):
    return 'holds a jaxlab run'
  return f'is not empty ({len(names)} entr{"y" if len(names) == 1 else "ies"})'


def remove_dead_partials(out: pathlib.Path) -> None:
  """Cleans up after commands of this host that were killed writing `out`: their partial
  siblings are removed; a folder that --overwrite had set aside is put back when the new
  one never arrived (killed between the two renames), else removed."""
  host = socket.gethostname()
  for kind in (_PARTIAL, _REPLACED):
    for sibling in left_by_dead_processes(out.parent, f'.{out.name}{kind}{host}-'):
      if kind == _REPLACED and not out.exists():
        sibling.rename(out)
      else:
        shutil.rmtree(sibling, ignore_errors=True)


def check_out(out: pathlib.Path, *, option: str, overwrite: bool, sources=()) -> None:
  """Refuses an `out` that would destroy a source, or that holds something, unless
  overwrite; one line naming the folder and what it holds."""
  resolved = out.resolve()
  for src in sources:
    if src is None:
      continue
    src = pathlib.Path(src).resolve()
    if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
      raise ConfigError(f'{option} {out} is this command\'s source ({src}); writing there would '
                        'destroy it: pick another directory')
  if out.exists() and not out.is_dir():
    raise ConfigError(f'{option} {out} is a file, not a directory: pick a directory')
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise ConfigError(f'{option} {out} {_what(out)}: pick a new directory, or add --overwrite '
                      'to replace it')


@contextlib.contextmanager
def atomic_dir(out: pathlib.Path, *, option: str, overwrite: bool = False, sources=(),
               writer: bool = True):
  """Yields a fresh temporary sibling of `out` to write into; renames it to `out` when the
  block ends without an error (see the module docstring). ConfigError (exit 2) for an
  `out` that is refused or cannot be written. writer=False (every process of a multi-host
  command but 0): the checks only, and the path process 0 writes to."""
  out = pathlib.Path(out)
  if writer:
    remove_dead_partials(out)       # first: it may put back the folder --out names
  check_out(out, option=option, overwrite=overwrite, sources=sources)
  if not writer:
    yield out.parent / f'.{out.name}{_PARTIAL}other-process'
    return
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise ConfigError(f'{option} {out}: cannot create {out.parent} ({err.strerror})') from None
  tmp = out.parent / f'.{out.name}{_PARTIAL}{socket.gethostname()}-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tmp.mkdir()
  except OSError as err:
    raise ConfigError(f'{option} {out}: cannot write in {out.parent} ({err.strerror})') from None
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if out.exists():
    old = out.parent / f'.{out.name}{_REPLACED}{socket.gethostname()}-{os.getpid()}'
    out.rename(old)
  tmp.rename(out)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_grown_run(out: pathlib.Path, cfg, lines: list[dict], step: int, state, iterator,
                    meta: dict, *, overwrite: bool, sources, writer: bool) -> None:
  """A grown run directory (`launch.py grow`), whole or not at all: config.json (its
  growth.source names the command), metrics.jsonl's `lines`, provenance.json, and the
  checkpoint at `step`, written into a partial sibling and renamed to `out` at the end.
  A train.checkpoint_dir outside the run (gs://...) gets its step directly: orbax writes
  each step whole."""
  with atomic_dir(out, option='--out', overwrite=overwrite, sources=sources,
                  writer=writer) as tmp:
    run = RunDir(tmp, writer=writer)
    ckpt_dir = checkpoint_dir(cfg, tmp)
    try:
      if writer:
        run.lock()
      run.write_config(cfg)
      run.start_fresh()
      for line in lines:
        run.append(line)
      run.write_provenance(Origin(None, ()))
      ckpt = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints, async_save=False)
      ckpt.save(step, state, iterator, meta)
      ckpt.wait()
      ckpt.close()
    finally:
      run.close()


def external_checkpoints(cfg, out: pathlib.Path) -> None:
  """Refuses a grown run whose checkpoints would land in a train.checkpoint_dir that
  already holds this run name's."""
  if cfg.train.checkpoint_dir:
    existing = checkpoint_dir(cfg, out)
    if existing.exists() and any(existing.iterdir()):
      raise ConfigError(f'--out {out}: its checkpoints would go to {existing} (train.'
                        'checkpoint_dir), which holds checkpoints already; pick a new name')
