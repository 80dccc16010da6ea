"""`launch.py sweep ... --jobs J`: a sweep's points run J at a time, each in its own
process (`launch.py sweep ... --point i`, the same command a SLURM array task runs).

Small models do not keep every core of a CPU busy, so J processes together finish a
sweep sooner than one process running the points in turn. Each child's output goes to
`<run dir>/launch.log`; this process prints one line as each point starts and ends.
Points that finished earlier are skipped without starting a process. SIGINT / SIGTERM
are passed on to the children as SIGTERM (each saves a checkpoint and stops; rerunning
the sweep resumes them), then the sweep exits with 128 + the signal number.
"""
from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

from jaxlab.rundir.layout import LAUNCH_LOG as LOG
from jaxlab.rundir.layout import run_dir_of
from jaxlab.rundir.records import status_of

_CHILD = 'import sys; from jaxlab.launch.cli import main; sys.exit(main(sys.argv[1:]))'
_POLL_SECONDS = 0.5


def _tail(path: pathlib.Path, n: int = 5) -> str:
  try:
    lines = path.read_text(errors='replace').splitlines()
  except OSError:
    return ''
  return '\n'.join('    ' + line for line in lines[-n:])


class _Signals:
  """Records SIGINT / SIGTERM instead of dying, so the children can be stopped cleanly."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def run_parallel(argv: list[str], sweep_dir: pathlib.Path, points: list, total: int,
                 jobs: int) -> int:
  """Runs `points` ([(index, (label, Config))]) as `argv + --point index` children, at
  most `jobs` at a time. Returns 0, or 128 + signal when stopped by SIGINT / SIGTERM."""
  queue, running, outcome = [], {}, {}
  for i, (label, cfg) in points:
    run_dir = run_dir_of(cfg)
    if status_of(run_dir) == 'completed':
      print(f'[{i + 1}/{total}] {label}: finished earlier, skipped', flush=True)
      outcome[label] = 'completed'
    else:
      queue.append((i, label, run_dir))
  with _Signals() as stop:
    while (queue or running) and stop.signum is None:
      while queue and len(running) < jobs:
        i, label, run_dir = queue.pop(0)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / LOG, 'a') as log:
          # A session of its own: a terminal's Ctrl-C reaches this process only, which
          # passes it on once (a second SIGINT would stop a child without a checkpoint).
          proc = subprocess.Popen([sys.executable, '-c', _CHILD, *argv, '--point', str(i)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        running[proc] = (i, label, run_dir, time.perf_counter())
        print(f'[{i + 1}/{total}] {label}: started (log: {run_dir / LOG})', flush=True)
      time.sleep(_POLL_SECONDS)
      for proc in [p for p in running if p.poll() is not None]:
        i, label, run_dir, t0 = running.pop(proc)
        status = status_of(run_dir) if proc.returncode == 0 else None
        outcome[label] = status or f'failed (exit {proc.returncode})'
        print(f'[{i + 1}/{total}] {label}: {outcome[label]} after '
              f'{time.perf_counter() - t0:.0f} s', flush=True)
        if status != 'completed':
          print(_tail(run_dir / LOG), file=sys.stderr, flush=True)
    if stop.signum is not None:
      print(f'{signal.Signals(stop.signum).name}: stopping {len(running)} running point(s); '
            'rerun the same command to resume them', file=sys.stderr, flush=True)
      for proc in running:
        proc.send_signal(signal.SIGTERM)
      for proc in running:
        proc.wait()
      return 128 + stop.signum
  print(outcome_line(sweep_dir, outcome), flush=True)
  failed = [label for label, status in outcome.items() if status.startswith('failed')]
  if failed:
    print(f'error: {len(failed)} point(s) failed: {", ".join(failed)} (their launch.log says '
          'why; rerun the sweep to retry them)', file=sys.stderr, flush=True)
    return 1
  return 0


def outcome_line(sweep_dir: pathlib.Path, outcome: dict[str, str]) -> str:
  """'sweep DIR: 5 completed, 1 diverged' from {label: status}. A diverged point is a
  result (a learning rate too high, say); a failed one (a crash, a bad input) makes the
  sweep exit non-zero."""
  counts = {s: sum(v == s for v in outcome.values()) for s in sorted(set(outcome.values()))}
  return f'sweep {sweep_dir}: ' + ', '.join(f'{n} {s}' for s, n in counts.items())
