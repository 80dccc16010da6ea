"""The progress line a run prints at each log, and the tokens/s it reports."""
from __future__ import annotations

import time


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if abs(x) >= scale:
      return f'{x / scale:.1f}{unit}'
  return f'{x:.0f}'


def progress_line(record: dict, total_steps: int, eta_sec: float | None) -> str:
  parts = [f"step {record['step']}/{total_steps}", f"loss {record['loss']:.4f}"]
  if record.get('val_loss') is not None:
    parts.append(f"val {record['val_loss']:.4f}")
  if record.get('tokens_per_sec'):
    parts.append(f"{_si(record['tokens_per_sec'])} tok/s")
  if record.get('mfu') is not None:
    parts.append(f"mfu {100 * record['mfu']:.1f}%")
  if eta_sec is not None:
    parts.append(f'ETA {_format_duration(eta_sec)}')
  return ' | '.join(parts)


class Throughput:
  """Tokens/s over the window between two logged steps, not counting time spent in
  eval or checkpointing (`exclude`), and the fraction of that time the loop spent waiting
  for its next batch (`waited`: the input wait). The first window holds the compile: None
  for both."""

  def __init__(self):
    self._last = None
    self._excluded = 0.0
    self._waited = 0.0
    self.input_wait = None

  def waited(self, seconds: float):
    self._waited += seconds

  def exclude(self, seconds: float):
    self._excluded += seconds

  def restart(self):
    """The next window holds a compile again (a growth event): it reports None."""
    self._last = None
    self._excluded = 0.0
    self._waited = 0.0

  def update(self, tokens: int) -> float | None:
    now = time.perf_counter()
    rate = self.input_wait = None
    if self._last is not None:
      t0, tok0 = self._last
      busy = now - t0 - self._excluded
      if busy > 0:
        rate = (tokens - tok0) / busy
        self.input_wait = min(self._waited / busy, 1.0)
    self._last = (now, tokens)
    self._excluded = 0.0
    self._waited = 0.0
    return rate
