"""Where a run's logged records go besides metrics.jsonl: the trackers of `train.trackers`.

metrics.jsonl (jaxlab.rundir.records, written through RunDir) is the run's record: the
reports, the scaling fits and a resume read it, so `jsonl` is always among the trackers.
The others mirror each logged record, on process 0 only:

  tensorboard   TensorBoard event files in <run dir>/tensorboard/ (tensorboardX's writer
                and protos, no TensorFlow needed), written and flushed at each log;
                a session's SessionLog START hides what an interrupted session logged past
                the checkpoint the next one resumed from, as metrics.jsonl is cut back.
  wandb         Weights & Biases through its own library (the [wandb] extra): project
                train.wandb_project, entity train.wandb_entity, files in <run dir>/wandb/.
                The W&B run id is train.wandb_run_id, or one drawn at the run's first start
                and kept in <run dir>/wandb.json, so a restarted or requeued session logs
                into the same W&B run (resume='allow'). The API key is W&B's own business:
                it reads WANDB_API_KEY (or its netrc) itself; no jaxlab config field holds
                it, so it is never in config.json, the W&B run's config or a log.
                WANDB_MODE=offline writes the run locally (`wandb sync` uploads it later).
"""
from __future__ import annotations

import json
import math
import pathlib
import secrets
import sys
import time

from jaxlab.rundir import atomic
from jaxlab.rundir.layout import TENSORBOARD, WANDB_DIR, WANDB_ID_FILE

TRACKERS = ('jsonl', 'tensorboard', 'wandb')


class Tracker:
  def log(self, step: int, scalars: dict[str, float]) -> None:
    raise NotImplementedError

  def close(self) -> None:
    pass


def _tensorboardx():
  """tensorboardX, imported without torch. tensorboardX imports torch when it is
  installed, only to accept torch tensors; jaxlab logs Python floats, and the import cost
  every run 2-3 s at start. A None in sys.modules makes that import fail as if torch were
  absent; it is taken out again at once (later `import torch`s are unaffected)."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    import tensorboardX
    return tensorboardX
  sys.modules['torch'] = None
  try:
    import tensorboardX
  finally:
    del sys.modules['torch']
  return tensorboardX


class TensorBoard(Tracker):
  """Event files written and flushed in the logging thread, with tensorboardX's
  EventsWriter and its protos. Not through SummaryWriter: its events pass through a
  bounded queue to a writer thread, and when a full disk killed that thread, the queue
  filled and the run hung in put() for good; here the write's OSError reaches the trainer,
  which reports the full disk in one line (jaxlab.train.storage). As SummaryWriter's
  purge_step does, a session starts its file with a SessionLog START at resume_step + 1,
  which hides what an interrupted session logged past that step."""

  def __init__(self, run_path: pathlib.Path, resume_step: int):
    tbx = _tensorboardx()
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    directory = run_path / TENSORBOARD
    directory.mkdir(parents=True, exist_ok=True)
    self._Event, self._scalar = Event, tbx.summary.scalar
    # The file is named by the second it opened; the suffix (nanoseconds) keeps two
    # sessions within one second apart, and in order, where the name alone would let
    # the second overwrite the first.
    self._writer = EventsWriter(str(directory / 'events'), f'.{time.time_ns()}')
    start = resume_step + 1
    self._writer.write_event(Event(step=start, file_version='brain.Event:2'))
    self._writer.write_event(Event(step=start, session_log=SessionLog(status=SessionLog.START)))
    self._writer.flush()

  def log(self, step, scalars):
    now = time.time()
    for key, value in scalars.items():
      self._writer.write_event(self._Event(wall_time=now, step=step,
                                           summary=self._scalar(key, value)))
    self._writer.flush()

  def close(self):
    self._writer.close()


def wandb_run_id(run_path: pathlib.Path, configured: str) -> str:
  """train.wandb_run_id, else the id this run directory drew at its first start."""
  path = run_path / WANDB_ID_FILE
  stored = json.loads(path.read_text())['id'] if path.exists() else None
  run_id = configured or stored or secrets.token_hex(4)
  if run_id != stored:
    atomic.replace(path, json.dumps({'id': run_id}) + '\n')
  return run_id


class Wandb(Tracker):
  def __init__(self, run_path: pathlib.Path, name: str, config: dict, project: str,
               entity: str, run_id: str):
    import wandb
    (run_path / WANDB_DIR).mkdir(exist_ok=True)
    self._run = wandb.init(
        project=project, entity=entity or None, name=name, id=wandb_run_id(run_path, run_id),
        resume='allow', dir=str(run_path), config=config,
        # A population's members are runs of one process: each its own W&B run (the
        # default outside notebooks would hand every member the first one's run).
        reinit='create_new',
        settings=wandb.Settings(console='off', x_disable_stats=True, silent=True))

  def log(self, step, scalars):
    self._run.log(scalars, step=step)

  def close(self):
    self._run.finish()


def open_trackers(names, run_path: pathlib.Path, *, resume_step: int, name: str,
                  config: dict, wandb_project: str, wandb_entity: str,
                  wandb_run_id: str) -> list[Tracker]:
  """The trackers of `names` other than jsonl (RunDir writes that one)."""
  out = []
  if 'tensorboard' in names:
    out.append(TensorBoard(run_path, resume_step))
  if 'wandb' in names:
    out.append(Wandb(run_path, name, config, wandb_project, wandb_entity, wandb_run_id))
  return out


def scalars_of(record: dict) -> dict[str, float]:
  """A logged record's finite numbers (step aside): what a tracker plots."""
  return {k: v for k, v in record.items()
          if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v)}
