"""The TensorBoard tracker (jaxlab.rundir.trackers.TensorBoard): what it writes reads back
as TensorBoard reads it, a resumed session hides what the interrupted one logged past its
resume step, and a failed write reaches the caller instead of hanging the run (a full
disk once left tensorboardX's writer thread dead and the run blocked on its queue).
tests/test_trackers.py compares a whole run's events with its metrics.jsonl."""
import errno
import math
import pathlib
import struct

import pytest

from jaxlab.rundir import trackers


def read_scalars(directory) -> dict[int, dict[str, float]]:
  """{step: {tag: value}} of every event file in `directory`, in file order, as TensorBoard
  shows them: TFRecords (length, its masked CRC, the Event, its masked CRC; CRCs not
  checked here), and a SessionLog START at step s drops what earlier files logged at
  steps >= s (TensorBoard's purge)."""
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  out: dict[int, dict[str, float]] = {}
  for path in sorted(pathlib.Path(directory).glob('events.out.tfevents.*')):
    buf, pos = path.read_bytes(), 0
    while pos + 12 <= len(buf):
      (n,) = struct.unpack('<Q', buf[pos:pos + 8])
      event = Event.FromString(buf[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if event.HasField('session_log') and event.session_log.status == SessionLog.START:
        out = {s: v for s, v in out.items() if s < event.step}
      for value in event.summary.value:
        out.setdefault(event.step, {})[value.tag] = value.simple_value
  return out


def test_scalars_read_back_and_a_resume_hides_what_followed_its_step(tmp_path):
  first = trackers.TensorBoard(tmp_path, resume_step=0)
  for step in range(1, 7):
    first.log(step, {'loss': 1.0 / step, 'lr': 0.5})
  first.close()     # the session ended at step 6; its checkpoint was step 4
  second = trackers.TensorBoard(tmp_path, resume_step=4)
  for step in range(5, 9):
    second.log(step, {'loss': 10.0 + step})
  second.close()
  got = read_scalars(tmp_path / 'tensorboard')
  assert sorted(got) == list(range(1, 9))
  for step in range(1, 5):
    assert got[step]['loss'] == pytest.approx(1.0 / step, rel=1e-7)   # float32 in the event
    assert got[step]['lr'] == 0.5
  for step in range(5, 9):
    assert got[step] == {'loss': 10.0 + step}


def test_a_failed_write_raises_at_once(tmp_path, monkeypatch):
  board = trackers.TensorBoard(tmp_path, resume_step=0)
  board.log(1, {'loss': 1.0})
  from tensorboardX import record_writer

  def full(self, data):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(record_writer.RecordWriter, 'write', full)
  for step in range(2, 40):         # more than any queue would hold
    with pytest.raises(OSError) as err:
      board.log(step, {'loss': math.pi})
    assert err.value.errno == errno.ENOSPC
