"""Storage failures -- disk full, quota, a read-only or unwritable file system -- reported
once, as one line, by the Trainer (exit 2; free space and rerun to resume).

`storage_error(err)` recognises one in whatever wrapper orbax, tensorstore or
tensorboardX raise it. While a run is going, their background threads report the same
failure again and again: orbax and asyncio log it with tracebacks, tensorboardX's
atexit flush and its writer thread raise it once more at exit (hundreds of lines for
one full disk). `QuietStorageNoise` drops exactly those repeats; if it dropped any that
the run never reported itself, it says so in one warning line at the end.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import threading

_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_LOGGERS = ('absl', 'asyncio')


def storage_error(err: BaseException | None) -> str | None:
  """One line describing the storage failure behind `err` (searched through its cause /
  context chain and its message, where tensorstore puts the OS error), else None."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in _ERRNOS:
      where = f' ({err.filename})' if err.filename else ''
      return f'{os.strerror(err.errno)}{where}'
    text = str(err)
    for code in _ERRNOS:
      if os.strerror(code) in text:
        return os.strerror(code)
    err = err.__cause__ or err.__context__
  return None


class QuietStorageNoise(logging.Filter):
  """Context manager: drops storage-failure repeats from background threads (see the
  module docstring). `reported()` marks that the run printed its one line; the hooks then
  stay until exit, where tensorboardX's atexit flush fails once more."""

  def __init__(self):
    super().__init__()
    self.dropped = 0
    self._reported = False

  def filter(self, record: logging.LogRecord) -> bool:
    err = record.exc_info[1] if record.exc_info else None
    if storage_error(err) or storage_error(RuntimeError(record.getMessage())):
      self.dropped += 1
      return False
    return True

  def _unraisable(self, unraisable):
    if storage_error(unraisable.exc_value):
      self.dropped += 1
      return
    self._old_unraisable(unraisable)

  def _thread(self, args):
    # After a failure, tensorboardX's writer thread dies on its closed queue at exit.
    tb_thread = type(args.thread).__module__.startswith('tensorboardX')
    if storage_error(args.exc_value) or (self._reported and tb_thread):
      self.dropped += 1
      return
    self._old_thread(args)

  def reported(self):
    self._reported = True

  def __enter__(self):
    for name in _LOGGERS:
      logging.getLogger(name).addFilter(self)
    self._old_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
    self._old_thread, threading.excepthook = threading.excepthook, self._thread
    return self

  def __exit__(self, *exc):
    if self._reported:
      return
    for name in _LOGGERS:
      logging.getLogger(name).removeFilter(self)
    sys.unraisablehook, threading.excepthook = self._old_unraisable, self._old_thread
    if self.dropped:
      print(f'warning: {self.dropped} storage error(s) in background threads were not shown '
            '(disk full or not writable?)', file=sys.stderr, flush=True)
