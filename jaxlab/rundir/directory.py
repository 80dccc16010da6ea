"""A run directory as the run that writes it sees it: `RunDir` (the training loop and
`launch.py grow` both go through it). The files are named in jaxlab.rundir.layout.

  config.json    the run's Config (Config.to_dict()) plus "history": the config changes
                 accepted when the run was resumed, each with the step it resumed from
  metrics.jsonl  one JSON object per logged step, and {"event": ...} lines (growth;
                 read and written through jaxlab.rundir.records)
  summary.json   written when a session ends: completed | diverged | preempted | failed
  .lock          flock'd by process 0 while a session runs; holds "pid host"

Nothing is lost or rewritten in place: metrics.jsonl is cut back to the step a session
actually resumed from (written to a temporary file, then renamed), a fresh start keeps
the old files as `<file>.bak-<time>`, and the lock dies with the process that held it
(the kernel drops an flock when its holder exits, so a kill -9 never blocks a resume).

Which config changes a run directory accepts (`check_config`):
  * no checkpoint in it: any config; the run starts fresh (a note names the changes).
  * LOCATION_KEYS (name, train.workdir, train.mirror_dir): never asked; a copied run
    directory (or mirror) takes its new name.
  * FREE_KEYS and mesh.*: bookkeeping that cannot change a trained weight or a logged
    number; accepted silently (and kept in the history).
  * EVAL_KEYS: change what the val loss measures from the resume step on, never the
    training; accepted with a warning.
  * AFTER_DIVERGENCE_KEYS: change the updates from the resume step on, never the weights
    already trained; accepted with a warning only when the run stopped on a NaN / Inf
    (what that error advises), refused otherwise: a silent change would mix two runs.
  * train.steps, when it is the only other change: the run's new_length rule decides
    (jaxlab.train.length: accepted when the lr of the steps already trained does not
    depend on the length, from the checkpoint it names; else refused with the reason).
  * everything else (model, data, other optimizer keys, batch, seeds, growth): refused,
    with the two ways out (continue unchanged, or start over).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys
import time
from typing import Any, Callable

from jaxlab.config.loading import HISTORY_KEY, flatten, read_config_file
from jaxlab.config.types import Config, ConfigError
from jaxlab.rundir import atomic, provenance, records
from jaxlab.rundir.layout import CONFIG_FILE, DATA_FILE, LOCK_FILE, METRICS_FILE, SUMMARY_FILE
from jaxlab.rundir.mirror import Mirror

LOCATION_KEYS = ('name', 'train.workdir', 'train.mirror_dir')
FREE_KEYS = ('train.log_every', 'train.eval_every', 'train.checkpoint_every',
             'train.keep_checkpoints', 'train.async_checkpoint', 'train.spectral_every',
             'train.weight_stats', 'train.trackers', 'train.wandb_project',
             'train.wandb_entity', 'train.wandb_run_id', 'train.profile_steps',
             'train.profile_process',
             'train.microbatches',   # the same update, like the mesh (float32 rounding)
             'data.accept_changes',   # itself no change: the data change it lets through is
                                      # recorded in the history by the trainer
             'data.path')   # where a prepared dataset lies: data.json holds what it is (its
                            # manifest's SHA-256), so a moved dataset resumes
FREE_PREFIXES = ('mesh.',)   # checkpoints restore onto any mesh
EVAL_KEYS = ('train.eval_batches',)
AFTER_DIVERGENCE_KEYS = ('optim.lr', 'optim.warmup_steps', 'optim.grad_clip')

def warn(message: str):
  print(f'warning: {message}', file=sys.stderr, flush=True)


def note(message: str):
  print(f'note: {message}', file=sys.stderr, flush=True)


def config_dict(cfg: Config) -> dict:
  """cfg as config.json holds it (tuples become lists), without the history."""
  return json.loads(json.dumps(cfg.to_dict()))


def _with_defaults(data: dict) -> dict:
  """An old config.json's dict with the fields added to Config since filled in, so that
  a new field at its default is not taken for a change."""
  def merge(default, given):
    if isinstance(default, dict) and isinstance(given, dict):
      return {**default, **{k: merge(default.get(k), v) for k, v in given.items()}}
    return given
  return merge(config_dict(Config()), data)


@dataclasses.dataclass
class ConfigChanges:
  """What `check_config` accepted: {key: (old, new)}; new_length: what its new_length rule
  returned for an accepted change of train.steps (None without one)."""
  changes: dict[str, tuple[Any, Any]]
  new_length: Any = None


def _describe(changes: dict) -> str:
  return '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changes.items())


class RunDir:
  """One run directory. `writer` is False on every process but 0: those read only.
  `mirror`: the URL it is copied to (train.mirror_dir / name; jaxlab.rundir.mirror)."""

  def __init__(self, path: str | os.PathLike, writer: bool = True, mirror: str = ''):
    self.path = pathlib.Path(path)
    self.writer = writer
    self.mirror = Mirror(self.path, mirror) if mirror and writer else None
    self._lock_file = None
    self._metrics = None

  # ------------------------------------------------------------------------- files
  @property
  def config_path(self) -> pathlib.Path:
    return self.path / CONFIG_FILE

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.path / METRICS_FILE

  @property
  def summary_path(self) -> pathlib.Path:
    return self.path / SUMMARY_FILE

  @property
  def lock_path(self) -> pathlib.Path:
    return self.path / LOCK_FILE

  # -------------------------------------------------------------------------- lock
  def create(self):
    """Makes the directory; a path that cannot be one is the user's to fix (exit 2).
    With a mirror: checks that it can be written, and copies it down when this directory
    holds no run yet but the mirror does (a resume on another machine)."""
    if self.mirror is not None:
      self.mirror.check()
      if self.mirror.pull():
        note(f'{self.path} was not on this machine: copied it from {self.mirror.url}')
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
      raise ConfigError(f'{self.path} (train.workdir / name) exists and is not a directory; '
                        'set train.workdir to a directory') from None
    except NotADirectoryError:
      raise ConfigError(f'train.workdir: a part of {self.path} is a file, not a directory; '
                        'set train.workdir to a directory') from None
    except OSError as err:
      raise ConfigError(f'cannot create the run directory {self.path}: {err.strerror}; set '
                        'train.workdir to a writable directory') from None

  def lock(self):
    """Takes the run directory's flock (process 0 only); a live holder -> ConfigError
    naming its PID and host. The kernel releases an flock when its process dies, so a
    lock left by a killed run never blocks the next one."""
    if not self.writer or self._lock_file is not None:
      return
    try:
      f = open(self.lock_path, 'a+')
    except OSError as err:
      raise ConfigError(f'cannot write in the run directory {self.path}: {err.strerror}; set '
                        'train.workdir to a writable directory') from None
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      f.close()
      raise ConfigError(f'{self.path} is in use by another run ({holder}); wait for it to '
                        'finish or stop it, or pick another name=') from None
    except OSError as err:   # a file system without flock (some network mounts)
      warn(f'cannot lock {self.lock_path} ({err.strerror}); nothing stops a second run on '
           'this directory')
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on host {socket.gethostname()}\n')
    f.flush()
    self._lock_file = f

  def unlock(self):
    if self._lock_file is not None:
      self._lock_file.close()   # closing the file releases the flock
      self._lock_file = None

  # ------------------------------------------------------------------------ config
  def read_config(self) -> tuple[dict, list] | None:
    """(config dict, history) from config.json, or None when there is none."""
    return read_config_file(self.path)

  def check_config(self, cfg: Config, has_checkpoints: bool, diverged: bool,
                   new_length: Callable[[int], Any] | None = None) -> ConfigChanges:
    """Compares cfg with the config.json already there (see the module docstring).
    new_length(old train.steps): the run's rule for a change of train.steps when it is the
    only refused change (jaxlab.train.length); it raises ConfigError with the reason, or
    returns what ConfigChanges.new_length keeps."""
    found = self.read_config()
    if found is None:
      return ConfigChanges({})
    old = flatten(_with_defaults(found[0]))
    new = flatten(config_dict(cfg))
    changes = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)}
    if not has_checkpoints:
      if changes:
        note(f'{self.path} holds no checkpoint: starting it afresh with the new config '
             f'({_describe(changes)})')
      return ConfigChanges(changes)
    free = set(LOCATION_KEYS) | set(FREE_KEYS)
    eval_ = {k: v for k, v in changes.items() if k in EVAL_KEYS}
    after_nan = {k: v for k, v in changes.items() if k in AFTER_DIVERGENCE_KEYS}
    refused = {k: v for k, v in changes.items() if k not in free and k not in EVAL_KEYS
               and k not in AFTER_DIVERGENCE_KEYS and not k.startswith(FREE_PREFIXES)}
    if after_nan and not diverged:
      refused.update(after_nan)
    length = None
    if list(refused) == ['train.steps'] and new_length is not None:
      length, refused = new_length(refused['train.steps'][0]), {}
    if refused:
      raise ConfigError(
          f'{self.path} holds checkpoints of a run with another config ({_describe(refused)}); '
          'resuming would mix two runs. To continue that run, rerun it without these changes '
          f'(python launch.py run {self.path}); to start over with them, pick another name=... '
          f'or delete {self.path}')
    if eval_:
      warn(f'resuming with {_describe(eval_)}: val_loss from here on is measured on other '
           'batches than before')
    if after_nan:
      warn(f'resuming a diverged run with {_describe(after_nan)} from its last good checkpoint')
    return ConfigChanges(changes, length)

  def write_config(self, cfg: Config, changes: ConfigChanges | None = None, fresh: bool = True,
                   step: int = 0):
    """config.json = cfg, plus the history: empty for a fresh start, else the previous
    one and this resume's changes (at the step it resumed from)."""
    if not self.writer:
      return
    history = []
    if not fresh:
      found = self.read_config()
      history = found[1] if found else []
      if changes is not None and changes.changes:
        history.append({'step': step, 'changes': {k: list(v) for k, v in changes.changes.items()}})
    self._write_json(self.config_path, {**config_dict(cfg), HISTORY_KEY: history})

  # ----------------------------------------------------------------------- metrics
  def read_lines(self) -> list[dict]:
    """metrics.jsonl's objects in order. A line that is not a JSON object is dropped with
    a warning (said to be cut short when it is the last one)."""
    lines = records.read(self.metrics_path)
    for i, text in lines.bad:
      what = 'is cut short' if i == lines.count else 'is not a JSON object'
      warn(f'{self.metrics_path} line {i} {what} ({text!r}); dropped')
    return lines.objects

  def resume_metrics(self, step: int, record: dict | None = None):
    """Cuts metrics.jsonl back to the lines of steps <= `step` (those after it will be
    logged again). `record`: the logged record of `step` as its checkpoint keeps it; put
    back when the file lost it (a line cut short at the checkpoint step)."""
    if not self.writer:
      return
    kept = [r for r in self.read_lines() if _step_of(r) <= step]
    if record is not None and not any(_step_of(r) == step and 'event' not in r for r in kept):
      warn(f'{self.metrics_path} had lost the record of step {step}; restored it from the '
           'checkpoint')
      kept.append(record)
    atomic.replace(self.metrics_path, ''.join(records.line(r) for r in kept))

  def start_fresh(self):
    """A run that starts at step 0 keeps the files of the earlier attempt as .bak-<time>."""
    if not self.writer:
      return
    for path in (self.metrics_path, self.summary_path):
      if path.exists() and path.stat().st_size:
        backup = _backup_path(path)
        path.rename(backup)
        note(f'starting afresh: the earlier {path.name} is kept as {backup.name}')
      elif path.exists():
        path.unlink()

  def keep_copies(self) -> list[str]:
    """Copies metrics.jsonl and summary.json as .bak-<time> before a resume drops records
    that no rerun logs again (a run going on from an earlier checkpoint than its newest,
    jaxlab.train.length); returns the copies' names."""
    if not self.writer:
      return []
    kept = []
    for path in (self.metrics_path, self.summary_path):
      if path.exists() and path.stat().st_size:
        backup = _backup_path(path)
        shutil.copy2(path, backup)
        kept.append(backup.name)
    return kept

  def append(self, record: dict):
    """One line of metrics.jsonl (a step's record or an {"event": ...} line)."""
    if not self.writer:
      return
    if self._metrics is None:
      self._metrics = open(self.metrics_path, 'a')
    self._metrics.write(records.line(record))
    self._metrics.flush()

  def read_data_identity(self) -> dict | None:
    """data.json: what the run trains on, as recorded when it started (jaxlab.data.identity)."""
    return records.read_json_object(self.path / DATA_FILE)

  def write_data_identity(self, identity: dict):
    if self.writer:
      self._write_json(self.path / DATA_FILE, identity)

  def write_provenance(self, origin):
    """provenance.json for a fresh start (jaxlab.rundir.provenance); without an origin
    (a run directory continued by path) the one already there is kept."""
    if self.writer and (origin is not None or provenance.read(self.path) is None):
      provenance.write(self.path, origin)

  # ----------------------------------------------------------------------- summary
  def read_summary(self) -> dict | None:
    return records.read_summary(self.path)

  def write_summary(self, summary: dict):
    if self.writer:
      self._write_json(self.summary_path, summary)

  # ------------------------------------------------------------------------ mirror
  def sync(self):
    """Copies what changed to the mirror (process 0, with train.mirror_dir)."""
    if self.mirror is not None:
      self.mirror.push()

  # ------------------------------------------------------------------------- close
  def close(self):
    if self._metrics is not None:
      self._metrics.close()
      self._metrics = None
    try:
      self.sync()
    finally:
      self.unlock()

  def _write_json(self, path: pathlib.Path, obj):
    atomic.replace(path, json.dumps(obj, indent=2) + '\n')


def _backup_path(path: pathlib.Path) -> pathlib.Path:
  """<file>.bak-<time>, or -1, -2, ... after it when that is taken."""
  stamp = time.strftime('%Y%m%d-%H%M%S')
  backup, n = path.with_name(f'{path.name}.bak-{stamp}'), 1
  while backup.exists():
    backup, n = path.with_name(f'{path.name}.bak-{stamp}-{n}'), n + 1
  return backup


def _step_of(rec: dict) -> float:
  step = rec.get('step', 0)
  return step if isinstance(step, (int, float)) and not isinstance(step, bool) else 0


def growth_event(*, event: str, step: int, tokens: int, flops: float, method: str,
                 optimizer: str, src: str, dst: str, **extra) -> dict:
  """The {"event": ...} line of a growth event (in a run, or `launch.py grow`)."""
  return {'event': event, 'step': step, 'tokens': tokens, 'flops': flops, 'method': method,
          'optimizer': optimizer, 'from': src, 'to': dst, **extra}
