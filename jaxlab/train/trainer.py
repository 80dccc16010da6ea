"""The Trainer: one run, or its continuation, as set-up + a short step loop + hooks.

Set-up checks everything it can before the first compile (tokenizer, mesh, batch split,
the run directory's lock and config guard, every phase's shapes and the train step's
trace (jaxlab.train.program.check_phases), the validation batches), so a bad input stops with one line and exit code 2.
Then it restores the newest verified checkpoint (jaxlab.rundir.checkpoint; when train.steps
changed, the newest one jaxlab.train.length allows) or starts afresh,
and puts the run directory in the matching state (jaxlab.rundir.directory): metrics cut back
to the step resumed from, or the earlier attempt's files kept as .bak-<time>.

The loop dispatches a step, asks the stop agreement (jaxlab.train.stop) whether every
host stops here, and when any hook is due syncs the metrics since the last sync
(NaN guard) and runs the due hooks (jaxlab.train.hooks) in order.
"""
from __future__ import annotations

import sys
import time

import jax

from jaxlab import data as data_lib
from jaxlab.data import identity
from jaxlab import growth
from jaxlab.rundir import records
from jaxlab.rundir.checkpoint import Checkpointer, checkpoint_dir
from jaxlab.config.checks import check_microbatches, profile_range
from jaxlab.config.types import Config, ConfigError
from jaxlab.parallel import make_mesh
from jaxlab.models import flops
from jaxlab.optim import non_embedding_params
from jaxlab.rundir.layout import run_dir_of
from jaxlab.rundir.mirror import mirror_url
from jaxlab.rundir.provenance import Origin
from jaxlab.rundir.directory import RunDir
from jaxlab.train import hooks as hooks_lib
from jaxlab.train import hosts
from jaxlab.train import length
from jaxlab.train.program import Program, build_program, check_phases
from jaxlab.train.step import position_edges
from jaxlab.train.stop import Preempted, StopAgreement
from jaxlab.train.storage import QuietStorageNoise, storage_error


class Trainer:
  """Use as `with Trainer(cfg, stop, quiet) as t: summary = t.run()`."""

  def __init__(self, cfg: Config, stop: StopAgreement, quiet: QuietStorageNoise,
               origin: Origin | None = None):
    self.cfg, self.stop, self.quiet, self.origin = cfg, stop, quiet, origin
    self.total_steps = cfg.train.steps
    self.t_start = time.time()
    self.run_dir: RunDir | None = None
    self.ckpt: Checkpointer | None = None
    self.hooks: list[hooks_lib.Hook] = []
    self.programs: dict[int, Program] = {}
    self.step = self.tokens = 0
    self.flops = 0.0
    self.last = self.growing = False
    self.stopping = None              # the agreed stop's signal number
    self.last_loss = self.last_val = self.last_rate = None
    self.val_tokens = None             # target tokens per evaluation (the same at every one)
    self.last_metrics: dict = {}
    self.logged: dict | None = None    # the newest record written to metrics.jsonl
    self.summary: dict = {}
    self.changes = None                # config changes accepted on resume (RunDir)
    # A population's member (jaxlab.train.population) takes its programs and its state
    # after a growth event from the population: step -> Program, and state -> state.
    self.program_source = None
    self.enter_state = None
    self.profiles = True              # train.profile_steps traces here (one member does)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for closer in [h.close for h in self.hooks] + [
        self.ckpt and self.ckpt.close, self.run_dir and self.run_dir.close]:
      if closer:
        try:
          closer()
        except Exception:   # a failed async save re-raises here; the first error is reported
          if exc[0] is None:
            raise

  # ------------------------------------------------------------------------ set-up
  def _preflight(self, tokenizer):
    """Checks that need the environment (devices, tokenizer) but no compile."""
    cfg = self.cfg
    if tokenizer.vocab_size > cfg.model.vocab_size:
      raise ConfigError(f'model.vocab_size={cfg.model.vocab_size} is smaller than the '
                        f'tokenizer\'s vocabulary ({tokenizer.vocab_size}, data.tokenizer='
                        f'{cfg.data.tokenizer!r}); set model.vocab_size>={tokenizer.vocab_size}')
    self.mesh = make_mesh(cfg.mesh)
    shards = self.mesh.shape['data'] * self.mesh.shape['fsdp']
    if cfg.train.batch_size % shards or cfg.train.batch_size % jax.process_count():
      raise ConfigError(f'train.batch_size={cfg.train.batch_size} must be divisible by the '
                        f'data-parallel size (data x fsdp axes of the mesh = {shards}) and by '
                        f'the number of processes ({jax.process_count()})')
    check_microbatches(cfg, shards)
    self.local_batch = cfg.train.batch_size // jax.process_count()

  def _on_process_0(self, what: str, fn):
    """fn() on process 0 only (it owns the run directory); a ConfigError it raises stops
    every process, so none waits in a collective for one that has left."""
    result, error = None, None
    if self.run_dir.writer:
      try:
        result = fn()
      except ConfigError as err:
        error = err
    if not hosts.agree(error is None):
      raise error or ConfigError(f'process 0 could not {what} (see its log)')
    return result

  def _open_run_dir(self):
    """Creates and locks the run directory, then checks the config against the one in it."""
    self.run_dir = RunDir(run_dir_of(self.cfg), writer=jax.process_index() == 0,
                          mirror=mirror_url(self.cfg))

    def open_and_lock():
      self.run_dir.create()
      self.run_dir.lock()
    self._on_process_0(f'open the run directory {self.run_dir.path}', open_and_lock)
    tc = self.cfg.train
    self.ckpt = Checkpointer(checkpoint_dir(self.cfg, self.run_dir.path), tc.keep_checkpoints,
                             tc.async_checkpoint)
    steps = self.ckpt.all_steps()
    has_checkpoints = bool(steps)

    def guard():
      previous = self.run_dir.read_summary() or {}
      return self.run_dir.check_config(
          self.cfg, has_checkpoints, diverged=previous.get('status') == 'diverged',
          new_length=lambda old: length.plan(self.cfg, old, steps, self.run_dir.path))
    self.changes = self._on_process_0('resume its run directory', guard)
    new_length = self.changes.new_length if self.changes else None
    self.restore_at = hosts.step_of_process_0(new_length and new_length.restore_at)
    if self.cfg.growth.source and not has_checkpoints:
      raise self._grown_without_checkpoint()
    self.has_checkpoints = has_checkpoints

  def _check_data(self, tokenizer):
    """A resumed run trains on what it started with (jaxlab.data.identity): checked before
    anything compiles. A change is refused, naming the file and what changed, unless
    data.accept_changes, which records it in config.json's history."""
    cfg = self.cfg

    def check():
      recorded = self.run_dir.read_data_identity()
      if recorded is None or not self.has_checkpoints:
        return None
      changed = identity.differences(recorded, cfg.data, tokenizer)
      if changed and not cfg.data.accept_changes:
        raise ConfigError(
            f'{self.run_dir.path} was trained on other data: {"; ".join(changed)}. Restore '
            'the data as it was to resume, or start a new run (name=...); to go on with the '
            'data as it is now, rerun with data.accept_changes=true (recorded in the run\'s '
            'config history)')
      return changed
    changed = self._on_process_0('check the data the run trains on', check)
    if changed and self.changes is not None:
      print(f'warning: data.accept_changes: going on with changed data ({"; ".join(changed)})',
            file=sys.stderr, flush=True)
      self.changes.changes['data'] = ('as data.json recorded it', '; '.join(changed))

  def _grown_without_checkpoint(self) -> ConfigError:
    """A grown run (launch.py grow) starts from its grown checkpoint, never from random
    init: without one, the grow is to be done again."""
    return ConfigError(f'{self.run_dir.path} was made by `{self.cfg.growth.source}`, and its '
                       f'first checkpoint is missing or unreadable ({self.ckpt.directory}): '
                       'run that command again (with --overwrite) to grow it anew; it never '
                       'trains from random weights')

  def program_at(self, step: int) -> Program:
    if self.program_source is not None:
      return self.program_source(step)
    k = growth.phase_index(self.phases, step)
    if k not in self.programs:
      self.programs[k] = build_program(self.cfg, self.mesh, k, self.phases)
    return self.programs[k]

  def _data(self, tokenizer):
    cfg, tc = self.cfg, self.cfg.train
    proc = dict(process_index=jax.process_index(), process_count=jax.process_count())
    spare = []

    def make_iterator():
      if spare:
        return spare.pop()
      if data_lib.uses_lanes(cfg):   # context growth: lanes re-pack at each phase's length
        return data_lib.make_lane_iterator(cfg.data, tokenizer, lanes=self.local_batch,
                                           seq_len=self.phases[0].length(cfg), **proc)
      return data_lib.make_train_iterator(cfg.data, tokenizer, batch_size=self.local_batch,
                                          **proc)
    self.make_iterator = make_iterator
    try:
      spare.append(make_iterator())   # the data layer names the config key at fault
      sets = data_lib.eval_sets(cfg.data, tokenizer, batch_size=self.local_batch,
                                n_batches=tc.eval_batches, **proc) if tc.eval_batches else []
    except ValueError as err:
      raise ConfigError(str(err)) from None
    n_batches = sum(len(batches) for _, _, batches in sets)
    note = data_lib.eval_cost_note(n_batches, tc.eval_every, tc.steps)
    if note and tc.eval_batches == 'all' and self.run_dir.writer:
      print(note, flush=True)
    sharding = self.program_at(0).batch_sharding
    return [(name, weight, [hosts.to_global(b, sharding) for b in batches])
            for name, weight, batches in sets]

  def _setup(self):
    self._prepare()
    restored = self._restore(self.restore_at)
    self._begin(restored, None if restored else self.program_at(0).init_state)

  def _prepare(self):
    """Every check and the run directory, before any state exists."""
    try:
      tokenizer = data_lib.make_tokenizer(self.cfg.data)
    except ValueError as err:
      raise ConfigError(str(err)) from None
    self._preflight(tokenizer)
    self.phases = growth.phases(self.cfg)   # the growth plan's own checks (sizes, timing)
    self._open_run_dir()
    self._check_data(tokenizer)
    check_phases(self.cfg, self.mesh, self.phases, self.program_at)
    self.val_sets = self._data(tokenizer)
    self.tokenizer = tokenizer
    self._stop_if_signalled()

  def _restore(self, at_most: int | None):
    """The newest verified checkpoint at or before at_most (None: any), or None; sets the
    data iterator to match. Checkpoints after it are set aside (kept, never restored)."""
    restored, self.iterator = self.ckpt.restore_latest(
        lambda s: self.program_at(s).abstract_state, self.make_iterator, at_most)
    self.superseded = [] if at_most is None else self.ckpt.set_aside_after(at_most)
    if restored is None and self.cfg.growth.source:
      raise self._grown_without_checkpoint()
    return restored

  def _begin(self, restored, init):
    """The run directory put in the state of `restored` (or a fresh start, whose state
    init() makes), then the hooks."""
    cfg, tc = self.cfg, self.cfg.train
    if restored is None:
      self.program = self.program_at(0)
      self.state = init()
      self.run_dir.start_fresh()
      self.run_dir.write_provenance(self.origin)
    else:
      self.state, self.step = restored.state, restored.step
      self.tokens, self.flops = int(restored.meta['tokens']), float(restored.meta['flops'])
      self.program = self.program_at(self.step)
      self._fit_iterator()
      copies = self.run_dir.keep_copies() if self.superseded else []
      self.run_dir.resume_metrics(self.step, restored.record)
      new_length = self.changes and self.changes.new_length   # a changed train.steps
      print(length.describe(new_length, self.run_dir.path, self.step, self.superseded, copies)
            if new_length else f'resuming {self.run_dir.path} from step {self.step}', flush=True)
    self.run_dir.write_config(cfg, self.changes, fresh=restored is None, step=self.step)
    if restored is None or (self.changes and self.changes.changes.get('data')) or \
        self.run_dir.read_data_identity() is None:   # a fresh start, an accepted change
      self.run_dir.write_data_identity(identity.describe(cfg.data, self.tokenizer))
    self._stop_if_signalled()

    self.device_kind = jax.devices()[0].device_kind
    self._measure_model()
    if self.run_dir.writer:
      print(self._header(), flush=True)
    edges = position_edges(cfg.data.seq_len) if tc.eval_positions else ()
    evaluator = hooks_lib.EvalHook(self.val_sets, tc.eval_every, edges)
    diagnostics = hooks_lib.DiagnosticsHook(tc.spectral_every)
    log = hooks_lib.LogHook(self, tc.log_every, [evaluator, diagnostics], self.step)
    profiler = hooks_lib.ProfileHook(self, profile_range(tc.profile_steps) if self.profiles
                                     else None, tc.profile_process)
    self.hooks = [evaluator, diagnostics, log, hooks_lib.GrowthHook(cfg, evaluator, log),
                  hooks_lib.CheckpointHook(tc.checkpoint_every), hooks_lib.PreemptionHook(),
                  profiler]
    if profiler.due(self):   # the range starts with this session's first step
      profiler.run(self, {})
    self.throughput = log.throughput

  def _header(self) -> str:
    """The run's first lines: where it writes, what it trains, on what."""
    cfg = self.cfg
    mesh = ' x '.join(f'{axis} {n}' for axis, n in self.mesh.shape.items() if n > 1) or 'not split'
    tps = cfg.train.batch_size * cfg.data.seq_len
    return (f'run {self.run_dir.path}: {self.total_steps} steps\n'
            f'model {growth.plan.describe(self.program.model.cfg)}, '
            f'{self.n_params / 1e6:.2f}M params, {cfg.model.dtype}; '
            f'{jax.device_count()} {self.device_kind} device(s), mesh {mesh}; '
            f'{tps:,} tokens per step ({cfg.train.batch_size} x {cfg.data.seq_len}), '
            f'{self.fpt * tps:.3g} FLOPs per step')

  def _stop_if_signalled(self):
    """A signal during set-up (or the first compile) ends a one-process run before any
    step; with several processes the first step boundary decides, alike for all."""
    if jax.process_count() == 1 and self.stop.signum is not None:
      raise Preempted(self.stop.signum, self.step, saved=False)

  def _measure_model(self):
    self.n_params = flops.count_params(self.state.params)
    self.fpt = flops.flops_per_token(self.program.model.cfg, self.program.seq_len)
    self.summary.update(name=self.cfg.name, n_params=self.n_params,
                        n_params_non_embedding=non_embedding_params(self.program.model.cfg),
                        flops_per_token=self.fpt,
                        device_kind=self.device_kind, n_devices=jax.device_count())

  def enter_phase(self, step: int):
    """The growth plan's transition into the phase that holds `step` (GrowthHook)."""
    self.program = self.program_at(step)
    self.state = (self.enter_state or self.program.enter)(self.state)
    self._fit_iterator()
    self._measure_model()

  def _fit_iterator(self):
    """Context growth: the lanes re-pack at the current phase's length from where they
    stand (jaxlab.data.lanes)."""
    if self.cfg.growth.seq_lens:
      self.iterator.set_seq_len(self.program.seq_len)

  # -------------------------------------------------------------------------- loop
  def run(self) -> dict:
    """Runs (or resumes) the run; returns its summary. Raises Diverged or Preempted after
    writing the summary, ConfigError for a bad input or a storage failure."""
    try:
      self._setup()
      if self.step >= self.total_steps:
        print(f'{self.run_dir.path} already finished at step {self.step}', flush=True)
        return self.run_dir.read_summary() or self._summary_from_metrics()
      return self._loop()
    except Exception as err:
      why = None if isinstance(err, (ConfigError, hooks_lib.Diverged, Preempted)) \
          else storage_error(err)
      if why is None:
        raise
      self.quiet.reported()
      raise self._storage_failure(why) from None

  def _loop(self) -> dict:
    tps = self.cfg.train.batch_size * self.cfg.data.seq_len
    pending = []
    while self.step < self.total_steps:
      t0 = time.perf_counter()
      host_batch = next(self.iterator)
      self.throughput.waited(time.perf_counter() - t0)
      batch = hosts.to_global(host_batch, self.program.batch_sharding)
      self.state, step_metrics = self.program.train_step(self.state, batch)
      self.step += 1
      self.tokens += tps
      self.flops += tps * self.fpt
      pending.append((self.step, step_metrics))
      self.stopping = self.stop.at_step(self.step)
      self.last = self.step == self.total_steps
      self.growing = growth.phase_index(self.phases, self.step) != self.program.phase
      due = [h for h in self.hooks if h.due(self)]
      if not due:
        continue
      fetched, pending = jax.device_get(pending), []
      self.run_hooks(due, fetched, self.throughput.exclude)
    self.ckpt.wait()
    return self.finish('completed')

  def run_hooks(self, due: list, fetched: list, paused) -> None:
    """At a sync: the NaN guard over the steps `fetched` since the last one, then the due
    hooks in order; paused(seconds) gets the time of each hook that pauses the clock."""
    hooks_lib.nan_guard(self, fetched)
    self.last_metrics = fetched[-1][1]
    self.last_loss = float(self.last_metrics['loss'])
    record = {}
    for hook in due:
      t0 = time.perf_counter()
      hook.run(self, record)
      if hook.pauses_clock:
        paused(time.perf_counter() - t0)

  def _summary_from_metrics(self) -> dict:
    """A finished run whose summary.json is gone (deleted, or the session was killed
    between its last checkpoint and the summary): rebuilt from metrics.jsonl's last train
    and eval records, and written."""
    for rec in records.read(self.run_dir.metrics_path).objects:
      if rec.get('step', 0) <= self.step:
        self.last_loss = rec.get('loss', self.last_loss)
        self.last_val = rec.get('val_loss', self.last_val)
        self.val_tokens = rec.get('val_tokens', self.val_tokens)
    print(f'{self.run_dir.path}: no summary.json; rebuilt from metrics.jsonl', flush=True)
    return self.finish('completed', summary_rebuilt=True)

  def finish(self, status: str, **extra) -> dict:
    self.summary.update(status=status, step=self.step, tokens=self.tokens, flops=self.flops,
                        final_loss=self.last_loss, final_val_loss=self.last_val,
                        val_tokens=self.val_tokens, tokens_per_sec=self.last_rate,
                        wall_time_sec=time.time() - self.t_start, **extra)
    self.run_dir.write_summary(self.summary)
    return self.summary

  def _storage_failure(self, why: str) -> ConfigError:
    """Disk full, quota, read-only: one line, and a summary if it can still be written
    (after deleting what the failed save left, if that is what it takes)."""
    where = self.run_dir.path if self.run_dir is not None else run_dir_of(self.cfg)
    steps = self.ckpt.all_steps() if self.ckpt is not None else []
    if self.run_dir is not None and self.summary:
      for attempt in range(2):
        try:
          if attempt:
            self.ckpt.remove_unfinished()
          self.finish('failed', error=why)
          break
        except Exception:   # the disk that failed may fail again
          pass
    newest = f'the newest checkpoint is step {steps[-1]}' if steps else 'there is no checkpoint'
    return ConfigError(f'cannot write the run {where} or its checkpoints: {why}. Stopped at '
                       f'step {self.step}; {newest}. Free space (or fix the permissions) and '
                       'rerun the same command to resume')
