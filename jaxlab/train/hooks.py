"""The Trainer's hooks: what happens at a step boundary besides the step itself.

Each hook says when it is `due` (from the step and the trainer's flags: last, growing,
stopping -- decided alike on every process, so collective work stays in step) and
`run`s then, in the order the Trainer lists them:

  EvalHook         val loss on the data layer's validation batches  -> the step's record
  DiagnosticsHook  top singular value of every matrix (spectral)    -> the step's record
  LogHook          the record: metrics.jsonl, the other trackers, progress line
  GrowthHook       the growth plan's transition, its event line, the val loss after it
  CheckpointHook   a verified checkpoint (state, data position, counters, the record)
  PreemptionHook   after an agreed stop's checkpoint: summary, then Preempted
  ProfileHook      a jax.profiler trace of train.profile_steps (before the first step
                   of the range, and after its last)

The NaN guard runs at every sync, before any hook: a non-finite loss or parameter norm
in any step since the last sync stops the run (Diverged) before anything is logged or
saved from it.
"""
from __future__ import annotations

import math
import pathlib
import signal
import sys
import time

import jax
import numpy as np

from jaxlab.models import flops
from jaxlab.growth import plan as plan_lib
from jaxlab.rundir import trackers
from jaxlab.rundir.layout import PROFILE
from jaxlab.rundir.records import position_key
from jaxlab.rundir.directory import config_dict, growth_event
from jaxlab.train import progress
from jaxlab.train.measure import top_singular_values
from jaxlab.train.stop import Preempted

# Always in a record, in this order; every other scalar the train step returns follows
# (weight diagnostics, proj_fired, ...), so a new metric needs no change here.
BASE_METRICS = ('loss', 'lr', 'grad_norm', 'param_norm')


class Diverged(RuntimeError):
  """The loss became NaN or Inf."""


class Hook:
  pauses_clock = True   # its time is left out of tokens_per_sec

  def due(self, t) -> bool:
    return False

  def run(self, t, record: dict) -> None:
    pass

  def close(self) -> None:
    pass


def nan_guard(t, fetched: list[tuple[int, dict]]):
  """Stops the run at the first step whose loss or parameter norm is not finite."""
  for step, m in fetched:
    bad = [k for k in ('loss', 'param_norm') if not math.isfinite(float(m[k]))]
    if bad:
      good = t.ckpt.all_steps()
      t.finish('diverged', diverged_at_step=step, last_good_checkpoint=good[-1] if good else None)
      what = (f'loss became {float(m["loss"])}' if 'loss' in bad
              else 'parameters became non-finite')
      raise Diverged(
          f'{what} at step {step}; the run is stopped. Last good checkpoint: '
          f'{"step " + str(good[-1]) if good else "none"} (kept). Rerunning resumes '
          'from it; lower optim.lr or raise optim.warmup_steps first')


class EvalHook(Hook):
  """Mean token loss over the validation batches the data layer gave (any number), in
  sets [(name, weight, batches)]: one (name '') for a dataset; for a mixture one per
  dataset, each logged as val_loss/<name>, and val_loss their weighted mean. A mixture's
  realised proportions (documents and tokens per dataset trained on so far, over every
  process) go into the same record."""

  def __init__(self, sets: list, every: int, positions: tuple[int, ...] = ()):
    self.sets, self.every = sets, every
    self.batches = [b for _, _, batches in sets for b in batches]
    self.positions = positions     # bucket edges of train.eval_positions (last eval), or ()
    self.by_set: dict[str, float] = {}

  def due(self, t) -> bool:
    return t.last or t.growing or bool(self.every and t.step % self.every == 0)

  def evaluate(self, t) -> float | None:
    if not self.batches:
      return None
    tokens, mean = 0, 0.0
    for name, weight, batches in self.sets:
      total = count = 0.0
      for batch in batches:
        s, c = jax.device_get(t.program.eval_step(t.state.params, batch, t.state.step))
        total, count = total + float(s), count + float(c)
      self.by_set[name] = total / max(count, 1.0)
      tokens, mean = tokens + int(count), mean + weight * self.by_set[name]
    t.val_tokens = tokens
    return mean

  def by_position(self, t) -> dict[str, float]:
    """{'val_loss_pos/<lo>-<hi>': mean loss of the targets whose input sits at positions
    lo..hi of its document piece} over the same validation batches."""
    sums = counts = 0.0
    for batch in self.batches:
      s, c = jax.device_get(t.program.position_eval_step(t.state.params, batch, t.state.step))
      sums, counts = sums + s, counts + c
    edges = self.positions
    return {position_key(lo, hi - 1): float(s / c) if c else None
            for lo, hi, s, c in zip(edges, edges[1:], sums, counts)}

  def run(self, t, record):
    if self.batches:
      t.last_val = record['val_loss'] = self.evaluate(t)
      record['val_tokens'] = t.val_tokens
      if len(self.sets) > 1:
        record.update({f'val_loss/{name}': v for name, v in self.by_set.items()})
      if self.positions and t.last:
        record.update(self.by_position(t))
    record.update(mixture_record(t.iterator.realised()))


def mixture_record(counts: dict | None) -> dict[str, float]:
  """mix/<k>/documents, mix/<k>/tokens and their shares, summed over the processes (each
  counts its own batches), from a mixture's DataIterator counts; {} without one."""
  if counts is None:
    return {}
  both = np.array([counts['documents'], counts['tokens']], np.int64)
  if jax.process_count() > 1:   # as two int32 halves: jax arrays hold no int64 by default
    from jax.experimental import multihost_utils
    halves = np.stack([both >> 31, both & (2 ** 31 - 1)]).astype(np.int32)
    got = np.asarray(multihost_utils.process_allgather(halves)).astype(np.int64).sum(axis=0)
    both = (got[0] << 31) + got[1]
  out = {}
  for what, row in zip(('documents', 'tokens'), both):
    total = max(int(row.sum()), 1)
    for k, n in enumerate(row):
      out[f'mix/{k}/{what}'] = int(n)
      out[f'mix/{k}/{what[:-1]}_share'] = int(n) / total
  return out


# One jitted function for every run in the process (a population's members share its
# compile); it retraces at growth (the model config is static).
_top_singular_values = jax.jit(top_singular_values, static_argnums=1)


class DiagnosticsHook(Hook):
  """Spectral norms every `every` steps and at the last (train.spectral_every)."""

  def __init__(self, every: int):
    self.every = every
    self._fn = _top_singular_values

  def due(self, t) -> bool:
    return bool(self.every and (t.last or t.step % self.every == 0))

  def run(self, t, record):
    sigmas = self._fn(t.state.params, t.program.model.cfg)
    record.update({k: float(v) for k, v in jax.device_get(sigmas).items()})


class LogHook(Hook):
  """Writes the step's record: metrics.jsonl (through the RunDir), the trackers of
  train.trackers (TensorBoard, W&B: jaxlab.rundir.trackers), and the
  progress line. A step that adds to the record (eval, diagnostics) is a log step."""
  pauses_clock = False

  def __init__(self, t, every: int, record_hooks: list[Hook], resume_step: int):
    self.every, self.record_hooks = every, record_hooks
    self.throughput = progress.Throughput()
    self._start, self._step0 = time.perf_counter(), resume_step
    self._tty = t.run_dir.writer and sys.stdout.isatty()
    self.trackers = []
    if t.run_dir.writer:
      tc = t.cfg.train
      self.trackers = trackers.open_trackers(
          tc.trackers, pathlib.Path(t.run_dir.path), resume_step=resume_step, name=t.cfg.name,
          config=config_dict(t.cfg), wandb_project=tc.wandb_project,
          wandb_entity=tc.wandb_entity, wandb_run_id=tc.wandb_run_id)

  def due(self, t) -> bool:
    return t.last or t.step % self.every == 0 or any(h.due(t) for h in self.record_hooks)

  def run(self, t, record):
    m = t.last_metrics
    rate = self.throughput.update(t.tokens)
    t.last_rate = rate if rate is not None else t.last_rate
    scalars = {k: float(v) for k, v in m.items() if k not in BASE_METRICS and np.ndim(v) == 0}
    full = {'step': t.step, 'tokens': t.tokens, 'flops': t.flops,
            **{k: float(m[k]) for k in BASE_METRICS}, **scalars,
            'tokens_per_sec': rate, 'input_wait': self.throughput.input_wait,
            'mfu': None if rate is None else flops.mfu(
                rate * t.fpt, t.device_kind, jax.device_count()),
            'time': time.time() - t.t_start, **record}
    t.run_dir.append(full)
    t.logged = full
    scalars = trackers.scalars_of(full)
    for tracker in self.trackers:
      tracker.log(t.step, scalars)
    if t.run_dir.writer:
      done = t.step - self._step0
      eta = (time.perf_counter() - self._start) / done * (t.total_steps - t.step)
      line = progress.progress_line(full, t.total_steps, eta)
      print(('\r' + line + '   ') if self._tty else line, end='' if self._tty else '\n',
            flush=True)

  def close(self):
    if self._tty:
      print()
    for tracker in self.trackers:
      tracker.close()


class GrowthHook(Hook):
  """The growth plan's next phase: transition the state, log the event line with the
  val loss before (this step's eval) and after."""

  def __init__(self, cfg, evaluator: EvalHook, log: LogHook):
    self.cfg, self.evaluator, self.log = cfg, evaluator, log

  def due(self, t) -> bool:
    return t.growing

  def run(self, t, record):
    old = t.program
    t.enter_phase(t.step)
    new = t.program
    val_before, val_after = t.last_val, self.evaluator.evaluate(t)
    t.last_val = val_after
    kind = new.phases[new.phase].event
    context = {}
    if kind == 'context':   # growth.seq_lens: the length and RoPE base change, not the model
      context = dict(seq_len_before=old.seq_len, seq_len_after=new.seq_len,
                     rope_theta_before=old.model.cfg.rope_theta,
                     rope_theta_after=new.model.cfg.rope_theta)
    event = growth_event(
        event=kind, step=t.step, tokens=t.tokens, flops=t.flops,
        method=self.cfg.growth.method, optimizer=self.cfg.growth.optimizer,
        src=plan_lib.describe(old.model.cfg), dst=plan_lib.describe(new.model.cfg),
        n_params=t.n_params, val_loss_before=val_before, val_loss_after=val_after, **context)
    t.run_dir.append(event)
    if t.run_dir.writer:
      what = (f"seq_len {old.seq_len} -> {new.seq_len}, rope_theta "
              f"{old.model.cfg.rope_theta:g} -> {new.model.cfg.rope_theta:g}"
              if context else f"{event['from']} -> {event['to']}")
      print(f"growth at step {t.step}: {what} ({kind}); val loss {val_before} -> "
            f"{val_after}", flush=True)
    self.log.throughput.restart()


class CheckpointHook(Hook):
  """Every `every` steps, at the last, at growth and at an agreed stop."""

  def __init__(self, every: int):
    self.every = every

  def due(self, t) -> bool:
    return (t.last or t.growing or t.stopping is not None
            or bool(self.every and t.step % self.every == 0))

  def run(self, t, record):
    logged = t.logged if t.logged is not None and t.logged['step'] == t.step else None
    t.ckpt.save(t.step, t.state, t.iterator, {'tokens': t.tokens, 'flops': t.flops},
                record=logged)
    t.run_dir.sync()   # the mirror (train.mirror_dir) gets the metrics up to this step


class PreemptionHook(Hook):
  """After the stop step's checkpoint: wait for it, write the summary, raise Preempted."""

  def due(self, t) -> bool:
    return t.stopping is not None and not t.last

  def run(self, t, record):
    t.ckpt.wait()
    t.finish('preempted', signal=signal.Signals(t.stopping).name)
    raise Preempted(t.stopping, t.step)


class ProfileHook(Hook):
  """A jax.profiler trace of steps A..B (train.profile_steps) in <run dir>/profile/ (a
  TensorBoard profile-plugin log dir, with a Perfetto trace beside it), on
  train.profile_process (-1: every process, each in profile/process<i>/). Due at the
  boundary before step A (checked once before the loop, for A = 1 or a session resumed
  inside the range) and after step B, once per session."""

  def __init__(self, t, span: tuple[int, int] | None, process: int):
    self.span, self.active, self.done = span, False, span is None
    if process not in (-1, jax.process_index()):
      self.done = True
    self.dir = pathlib.Path(t.run_dir.path) / PROFILE
    if process == -1:
      self.dir = self.dir / f'process{jax.process_index()}'

  def due(self, t) -> bool:
    if self.done:
      return False
    first, last = self.span
    return t.step >= last if self.active else first - 1 <= t.step < last

  def run(self, t, record):
    if not self.active:
      self.dir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.dir), create_perfetto_trace=True)
      self.active = True
      return
    jax.block_until_ready(t.state)
    self.close()
    if t.run_dir.writer or self.dir.name.startswith('process'):
      print(f'profile of steps {self.span[0]}-{t.step}: {self.dir} (tensorboard --logdir '
            f'{self.dir}, or the perfetto_trace.json.gz in it at ui.perfetto.dev)', flush=True)

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active, self.done = False, True
