"""A stop agreed by every host: SIGTERM / SIGINT / SIGUSR1 become a decision taken at a
step boundary, the same step on every process, so that all of them save that step and
exit with 128 + the signal number.

SIGUSR1 is what a SLURM job gets `--signal-before` seconds before its time limit (the
sbatch script of jaxlab.launch.submit.slurm): it stops like SIGTERM, and its exit code,
128 + 10 = 138, tells the script to requeue the job, which resumes from the checkpoint.

One process: the signal sets a flag; the step boundary after it is the stop step.

Several processes (jax.distributed): a host may get the signal while another is a step
ahead or behind, so a local flag would send one host into the checkpoint's barrier and
the other into the next step's collectives -- a hang. JAX's preemption sync service
(what orbax's `reached_preemption` asks; MaxText uses it the same way) agrees instead:
its SIGTERM handler tells the coordination service, which picks the step after the
furthest host's current one, and `reached_preemption_sync_point(step)`, called at every
step boundary, is True on every host at that same step. A SIGINT or SIGUSR1 is turned
into a SIGTERM to this process so that it takes the same path (each host exits with the
signal it got itself). Hosts that got no signal exit with 128 + SIGTERM. Without the
service (jax_enable_preemption_service=False) the flags of all processes are
all-gathered at every step instead (the largest signal number wins): correct, but a host
sync.

A signal before the first step (during start-up or the first compile) stops the run at
the first step boundary. A second SIGINT interrupts at once.
"""
from __future__ import annotations

import os
import signal
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(RuntimeError):
  """SIGTERM / SIGINT / SIGUSR1 arrived; the run stopped at a step boundary (a checkpoint
  was saved when any step had been trained in this session)."""

  def __init__(self, signum: int, step: int, saved: bool = True):
    what = ('checkpoint saved, rerun the same command to resume' if saved else
            'nothing trained in this session, nothing to save; rerun the same command to '
            'start or resume')
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; {what}')
    self.signum = signum
    self.step = step


class StopAgreement:
  """Installs the signal handlers for the length of a `with` block; `at_step(step)` says,
  alike on every process, whether the run stops after `step` and with which signal."""

  def __init__(self):
    self.signum = None          # the signal this process received
    self._old = {}
    self._service = False
    self._gather = False

  def __enter__(self):
    if jax.process_count() > 1:
      self._service = bool(jax.config.jax_enable_preemption_service)
      self._gather = not self._service
      if self._gather:
        print('warning: the JAX preemption service is off: the processes agree on a stop by '
              'an all-gather at every step', file=sys.stderr, flush=True)
    for sig in SIGNALS:
      if sig == signal.SIGTERM and self._service:
        continue   # the service's own handler takes SIGTERM
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    first = self.signum is None
    self.signum = self.signum or signum
    if first:
      print(f'\n{signal.Signals(signum).name} received: stopping at the next step boundary '
            '(with a checkpoint, if this session trained a step)', file=sys.stderr, flush=True)
    if self._service and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)   # tell the preemption service, as a SIGTERM does

  def at_step(self, step: int) -> int | None:
    """The signal to stop with after `step`, or None; equal on every process."""
    if self._service:
      if multihost_utils.reached_preemption_sync_point(step):
        return self.signum or signal.SIGTERM
      return None
    if self._gather:
      flags = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
      return int(np.max(flags)) or None
    return self.signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
