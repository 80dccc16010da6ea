"""Checkpoints: an orbax CheckpointManager holding three items per step --

  state  the TrainState pytree (params, optimizer state, step), restored with the
         shardings of the current mesh;
  data   the grain iterator's state, one JSON file per process, so a resumed run
         sees exactly the batches an uninterrupted one would;
  meta   small JSON: cumulative tokens and FLOPs (counters survive growth events), the
         state's fingerprint (one uint32 per array, jaxlab.rundir.fingerprint, computed on device
         at save) and the metrics record logged at that step (put back if metrics.jsonl
         lost it). The fingerprint is dispatched when the save is requested and fetched
         only when orbax writes the JSON (in its background commit, beside the array
         writes), so the save never waits for it.

Orbax writes each step into a temporary directory and renames it when complete, so a
kill mid-save never leaves a half-written step behind. A restore is verified: the
restored state's fingerprint must equal the saved one. A step that cannot be read or
does not verify is reported, moved aside into `checkpoints_unreadable/`, and the
previous one is tried; nothing of a failed attempt is kept (the data iterator is set
only from the checkpoint finally used). A run whose train.steps changed may go on from an
earlier checkpoint than its newest (jaxlab.train.length): the later ones are moved into
`checkpoints_superseded/`.

The directory is `<run dir>/checkpoints`, or `<train.checkpoint_dir>/<name>` when that is
set: a multi-host run needs one directory every host can write (every process writes
its own shards), e.g. gs://bucket/ckpt on Cloud TPU, whose workers have separate disks.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxlab.rundir.fingerprint import fingerprint, leaf_paths, mismatches
from jaxlab.rundir.layout import CHECKPOINTS
from jaxlab.rundir.mirror import location, mirror_url


class _IteratorState:
  """Adapts a data iterator (get_state() -> JSON-able dict) to grain's orbax handler,
  which writes one JSON file per process. At save the state is captured when the save
  is requested, not when the async write runs, by which time training has moved on; at
  restore the bytes are only kept, and applied once the whole checkpoint verified."""

  def __init__(self, iterator=None):
    self.bytes = None if iterator is None else json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self.bytes

  def set_state(self, state: bytes):
    self.bytes = state

  def start_prefetch(self):
    pass


class Unverified(ValueError):
  """A checkpoint was read, but its state differs from what was saved."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  meta: dict

  @property
  def record(self) -> dict | None:
    """The metrics record logged at this step, if it was a log step."""
    return self.meta.get('record')


def checkpoint_dir(cfg, run_dir) -> epath.Path:
  """Where a run's checkpoints live (a local path or a gs://... URL): train.checkpoint_dir,
  else the mirror's run directory (train.mirror_dir: jaxlab.rundir.mirror), else the run
  directory."""
  if cfg.train.checkpoint_dir:
    return _path(cfg.train.checkpoint_dir) / cfg.name
  if cfg.train.mirror_dir:
    return _path(mirror_url(cfg)) / CHECKPOINTS
  return _path(run_dir) / CHECKPOINTS


def _path(directory) -> epath.Path:
  return epath.Path(location(directory))


def _quiet_abandoned_reads():
  """After a failed restore, tensorstore still completes the reads orbax abandoned and
  hands each result to orbax's asyncio loop, closed by then; every one reports an 'Event
  loop is closed' RuntimeError as unraisable -- dozens of tracebacks of noise around the
  one-line report. Exactly those are dropped; every other one is printed."""
  previous = sys.unraisablehook
  if getattr(previous, 'jaxlab_quiet', False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    previous(unraisable)
  hook.jaxlab_quiet = True
  sys.unraisablehook = hook


def _all_ok(ok: bool) -> bool:
  """True when every process says ok: the processes decide alike."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class _MetaHandler(ocp.JsonCheckpointHandler):
  """orbax's JSON handler, for meta whose values may be device arrays (the state's
  fingerprint): they are fetched in the write itself, which orbax runs in its commit
  (the background thread of an async save; beside the array writes of a synchronous
  one), not when the save is requested. The file is the same JSON (lists of ints).
  Overrides JsonCheckpointHandler._save_fn (orbax 0.12): were orbax to stop calling it,
  json.dumps would meet a jax.Array and every save would fail, loudly."""

  async def _save_fn(self, x, directory):
    x = {key: [int(v) for v in np.asarray(jax.device_get(value)).reshape(-1)]
         if isinstance(value, jax.Array) else value for key, value in x.items()}
    await super()._save_fn(x, directory)


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.JsonSave):
  """JsonSave for _MetaHandler."""


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.JsonRestore):
  """JsonRestore for _MetaHandler (reads what JsonSave writes, older checkpoints too)."""


def save_items(state, data_iterator, meta: dict) -> dict:
  """A checkpoint's three items, as orbax's manager saves them."""
  return dict(state=ocp.args.StandardSave(state),
              data=grain.checkpoint.CheckpointSave(_IteratorState(data_iterator)),
              meta=_MetaSave(dict(meta, process_count=jax.process_count())))


class Checkpointer:

  def __init__(self, directory, keep: int, async_save: bool = True):
    self.directory = _path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, meta: dict, record: dict | None = None):
    """Saves state, the iterator's position and meta, with the state's fingerprint and the
    step's logged record in meta. The fingerprint goes in as a device array, dispatched
    here and fetched by orbax's write (_MetaHandler): the save does not wait for it."""
    meta = dict(meta, fingerprint=fingerprint(state))
    if record is not None:
      meta['record'] = record
    self._manager.save(step, args=ocp.args.Composite(**save_items(state, data_iterator, meta)),
                       force=True)

  def _meta(self, step: int) -> dict:
    return dict(self._manager.restore(step, args=ocp.args.Composite(meta=_MetaRestore()))['meta'])

  @staticmethod
  def _verify(step: int, tree, saved: list[int] | None, what: str):
    """Raises Unverified when tree's fingerprint differs from the saved one; warns when
    the checkpoint has none (saved is None)."""
    if saved is None:
      print(f'warning: checkpoint step {step} has no fingerprint (written by an older jaxlab); '
            'restored without verification', file=sys.stderr, flush=True)
      return
    bad = mismatches(tree, saved, jax.device_get(fingerprint(tree)))
    if bad:
      raise Unverified(f'{what} in {len(bad)} array(s) '
                       f'({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""})')

  def restore_params(self, step: int, abstract_state):
    """Only the params of step's TrainState (orbax partial restore: the optimizer state is
    not read), onto abstract_state.params' shardings, verified against the params' entries
    of the saved fingerprint. Raises Unverified on a mismatch."""
    meta = self._meta(step)
    abstract = {'params': abstract_state.params}
    with ocp.PyTreeCheckpointer() as reader:
      params = reader.restore(self.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True))['params']
    saved = meta.get('fingerprint')
    if saved is not None:   # the params' entries of the whole state's fingerprint
      paths = leaf_paths(abstract_state)
      index = {path: i for i, path in enumerate(paths)}
      saved = [saved[index[path]] for path in leaf_paths(abstract)] \
          if len(saved) == len(paths) else []
    self._verify(step, {'params': params}, saved,
                 f'checkpoint step {step}: the restored params differ from the saved ones')
    return params

  def restore(self, step: int, abstract_state, data_iterator) -> Restored:
    """abstract_state's shardings decide where every array lands: a checkpoint written on
    one mesh (or number of devices / hosts) restores onto any other. Raises when the
    step cannot be read or its state does not match the saved fingerprint; the data
    iterator is set only when everything else succeeded."""
    meta = self._meta(step)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    saved_by = int(meta.get('process_count', jax.process_count()))
    data = _IteratorState()
    same_split = saved_by == jax.process_count()
    if same_split:
      items['data'] = grain.checkpoint.CheckpointRestore(data)
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = out['state']
    self._verify(step, state, meta.get('fingerprint'),
                 'the restored state differs from the saved one')
    if same_split:
      data_iterator.set_state(json.loads(data.bytes))
    else:   # each process read its own share of the documents; that split no longer exists
      print(f'warning: checkpoint step {step} was written by {saved_by} process(es), this run '
            f'has {jax.process_count()}: the model and optimizer state are restored, but the '
            'data stream starts again from the beginning of each process\'s shard',
            file=sys.stderr, flush=True)
    return Restored(step=step, state=state, meta=meta)

  def restore_latest(self, abstract_state: Callable | Any, make_iterator: Callable,
                     at_most: int | None = None) -> tuple[Restored | None, Any]:
    """(newest readable and verified checkpoint or None, data iterator). abstract_state
    may be a function of the step (a run whose model changes at growth events). Each
    attempt gets a fresh iterator from make_iterator(), so a failed one leaves no trace;
    with no usable checkpoint the iterator is a fresh one too. at_most: only checkpoints
    at or before this step are tried (a run whose train.steps changed)."""
    _quiet_abandoned_reads()
    for step in reversed([s for s in self.all_steps() if at_most is None or s <= at_most]):
      abstract = abstract_state(step) if callable(abstract_state) else abstract_state
      iterator = make_iterator()
      try:
        restored, err = self.restore(step, abstract, iterator), None
      except Exception as e:  # orbax raises many types for a damaged step
        restored, err = None, e
      if _all_ok(err is None):
        return restored, iterator
      self._set_aside(step, err)
    return None, make_iterator()

  def _set_aside(self, step: int, err: Exception | None):
    why = (f'{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ""}'
           if err is not None else 'another process could not read it')
    what = 'is corrupt' if isinstance(err, Unverified) else 'cannot be read'
    self._move_aside(step, 'unreadable', lambda dst: print(
        f'warning: checkpoint step {step} in {self.directory} {what} ({why}); '
        f'moving it to {dst} and trying the previous one', file=sys.stderr, flush=True))

  def set_aside_after(self, step: int) -> list[int]:
    """Moves the checkpoints after `step` into `<checkpoints>_superseded/` (kept, never
    restored: a run whose train.steps changed goes on from `step`, and saves those steps
    anew); returns their steps."""
    later = [s for s in self.all_steps() if s > step]
    for s in later:
      self._move_aside(s, 'superseded')
    return later

  def _move_aside(self, step: int, why: str, announce: Callable = lambda dst: None):
    """Moves step's directory into <checkpoints>_<why>/ (process 0; every process waits)."""
    src = self.directory / str(step)
    dst = self.directory.parent / f'{self.directory.name}_{why}' / str(step)
    n = 1
    while dst.exists():   # an earlier copy of this step was set aside: keep both
      dst, n = dst.parent / f'{step}.{n}', n + 1
    announce(dst)
    if jax.process_index() == 0 and src.exists():
      dst.parent.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'jaxlab_set_aside_{why}_{step}')
    self._manager.reload()
    return dst

  def remove_unfinished(self):
    """Deletes the temporary directories of saves that failed (orbax would delete them at
    the next start anyway): after a full disk, the space they hold lets the summary be
    written. Process 0 only."""
    if jax.process_index() == 0 and self.directory.exists():
      for path in self.directory.iterdir():
        if 'orbax-checkpoint-tmp' in path.name:
          path.rmtree()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
