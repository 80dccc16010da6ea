"""`train_population(cfgs)`: K runs that share every shape and the growth plan trained as
one program (jaxlab.train.population_program), each still its own run.

Each member is a Trainer (jaxlab.train.trainer) that does everything a separate run does
except the step: its checks, its run directory, its data iterator and validation
batches, its checkpoints, metrics, trackers and summary, through the same hooks
(jaxlab.train.hooks). The population holds the stacked state, steps it, and hands each
member its slice at every step where one of its hooks is due.

Resuming: every member restores its newest checkpoint at or before the newest step that
all members have (a kill -9 between two members' saves of one step loses that step's
work, no more); the later ones are set aside, as when train.steps changes.
A member whose loss or parameters turn non-finite stops as a separate run would (its
summary says diverged); the others go on. A growth event happens for every member at
the same step: the population's transition is each member's, vmapped.
"""
from __future__ import annotations

import contextlib
import sys
import time

import jax

from jaxlab import growth
from jaxlab.config.types import Config, ConfigError
from jaxlab.parallel import initialize_distributed
from jaxlab.train import hooks as hooks_lib
from jaxlab.train import population_program as pp
from jaxlab.train.runnable import resolve
from jaxlab.train.stop import Preempted, StopAgreement
from jaxlab.train.storage import QuietStorageNoise, storage_error
from jaxlab.train.hosts import to_global
from jaxlab.train.trainer import Trainer


class Population:
  """Use as `with Population(cfgs, stop, quiet, origins) as p: outcome = p.run()`."""

  def __init__(self, cfgs: list[Config], stop: StopAgreement, quiet: QuietStorageNoise,
               origins: list | None = None, batching: str = 'auto'):
    self.cfgs, self.stop, self.batching = cfgs, stop, batching
    self.members = [Trainer(c, stop, quiet, o)
                    for c, o in zip(cfgs, origins or [None] * len(cfgs))]
    self.phases = growth.phases(cfgs[0])
    self.programs: dict[int, pp.PopulationProgram] = {}
    self.hyper = pp.hyper_arrays(cfgs)
    self.dead: set[int] = set()
    self._grown = None   # (step, [member state]) of the growth event being taken
    for k, m in enumerate(self.members):
      m.profiles = k == 0   # one trace per process (train.profile_steps): member 0's
      m.program_source = lambda step: self.program_at(step).base
      m.enter_state = lambda state, k=k: self._enter(k)

  def __enter__(self):
    self._exit = contextlib.ExitStack()
    for m in self.members:
      self._exit.enter_context(m)
    return self

  def __exit__(self, *exc):
    return self._exit.__exit__(*exc)

  def program_at(self, step: int) -> pp.PopulationProgram:
    k = growth.phase_index(self.phases, step)
    if k not in self.programs:
      self.batching = pp.choose_batching(self.batching, self.members[0].mesh,
                                         len(self.members))
      self.programs[k] = pp.build_population_program(
          self.cfgs[0], self.members[0].mesh, len(self.members), k, self.phases, self.batching)
    return self.programs[k]

  # ------------------------------------------------------------------------ set-up
  def _setup(self):
    for m in self.members:
      m._prepare()
    at = min((m.ckpt.all_steps() or [0])[-1] for m in self.members)
    at = min([at] + [m.restore_at for m in self.members if m.restore_at is not None])
    while True:   # a member whose checkpoint at `at` is unreadable takes all back further
      restored = [m._restore(at) for m in self.members]
      steps = {r.step if r else 0 for r in restored}
      if len(steps) == 1:
        break
      at = min(steps)
    self.step = steps.pop()
    self._compile_and_check_memory()
    self.program = self.program_at(self.step)
    if restored[0] is None:
      fresh = pp.unstack(self.program, pp.init_states(self.program, self.cfgs))
      for m, state in zip(self.members, fresh):
        m._begin(None, lambda state=state: state)
    else:
      for m, r in zip(self.members, restored):
        m._begin(r, None)
    self.state = pp.stack(self.program, [m.state for m in self.members])
    mesh = self.members[0].mesh
    where = (f'{mesh.shape["data"]} devices each train {len(self.members) // mesh.shape["data"]}'
             ' whole member(s)' if pp.members_axis(mesh, len(self.members))
             else f'every member on every device ({self.batching})')
    print(f'population of {len(self.members)}, one program, {where}: '
          f'{", ".join(str(m.run_dir.path) for m in self.members)}', flush=True)

  def _compile_and_check_memory(self):
    """Every phase's population step compiled now (before any state exists), each checked
    against the device's memory: a population that cannot fit stops with one line naming
    the most members that would (the step's bytes grow in proportion to K)."""
    limit, what = pp.device_memory()
    size = len(self.members)
    self.compiled = {}
    for k in range(growth.phase_index(self.phases, self.step), len(self.phases)):
      phase = self.phases[k]
      program = self.program_at(phase.start_step)
      self.compiled[k], need = pp.compile_step(program, self.hyper)
      if need > limit:
        fits = int(limit // (need / size))
        raise ConfigError(
            f'--population {size}: one program of {size} members needs '
            f'{need / 2 ** 30:.2f} GiB for {growth.plan.describe(phase.model)}, more than '
            f'{what} ({limit / 2 ** 30:.2f} GiB); at most {fits} member(s) fit '
            f'(--population {max(fits, 1)}' + (')' if fits else ', or a smaller model)'))

  def _enter(self, k: int):
    """Member k's state after this step's growth event: the population's transition is
    taken once, at the first member that asks."""
    if self._grown is None or self._grown[0] != self.step:
      new = self.program_at(self.step)
      rngs = pp.growth_rngs(self.cfgs, self.phases[new.base.phase].start_step)
      self.state = new.enter(self.state, self.hyper, rngs)
      self.program = new
      self._grown = (self.step, pp.unstack(new, self.state))
    return self._grown[1][k]

  # -------------------------------------------------------------------------- loop
  def run(self) -> list[str]:
    """Trains every member to its end; returns each member's status. Raises Preempted after
    every member saved its checkpoint and summary."""
    try:
      self._setup()
      if self.step < self.cfgs[0].train.steps:
        self._loop()
      else:
        for m in self.members:
          m.summary = m.run_dir.read_summary() or m._summary_from_metrics()
    except Exception as err:
      why = None if isinstance(err, (hooks_lib.Diverged, Preempted)) else storage_error(err)
      if why is None:
        raise
      raise next(m for m in self.members if m.run_dir)._storage_failure(why) from None
    return [m.summary.get('status') or 'completed' for m in self.members]

  def _loop(self):
    members, total = self.members, self.cfgs[0].train.steps
    tps = self.cfgs[0].train.batch_size * self.cfgs[0].data.seq_len
    pending = []
    while self.step < total and len(self.dead) < len(members):
      t0 = time.perf_counter()
      host = [next(m.iterator) for m in members]
      waited = time.perf_counter() - t0
      batch = to_global(pp.stack_batches(host), self.program.batch_sharding)
      self.state, step_metrics = self.compiled[self.program.base.phase](self.state, batch,
                                                                       self.hyper)
      self.step += 1
      pending.append((self.step, step_metrics))
      stopping = self.stop.at_step(self.step)
      growing = growth.phase_index(self.phases, self.step) != self.program.base.phase
      for m in members:
        m.throughput.waited(waited)
        m.step, m.tokens, m.flops = self.step, m.tokens + tps, m.flops + tps * m.fpt
        m.stopping, m.last, m.growing = stopping, self.step == total, growing
      due = {k: [h for h in m.hooks if h.due(m)] for k, m in enumerate(members)
             if k not in self.dead}
      if not any(due.values()):
        continue
      fetched, pending = jax.device_get(pending), []
      states = pp.unstack(self.program, self.state)
      paused, preempted = [], None
      for k, hooks in due.items():
        m = members[k]
        m.state = states[k]
        mine = [(s, {name: v[k] for name, v in metrics.items()}) for s, metrics in fetched]
        try:
          m.run_hooks(hooks, mine, paused.append)
        except hooks_lib.Diverged as err:
          print(f'{m.run_dir.path}: {err}; the rest of the population goes on',
                file=sys.stderr, flush=True)
          self.dead.add(k)
        except Preempted as err:
          preempted = err
      for m in members:   # every member waited while any member's hooks ran
        m.throughput.exclude(sum(paused))
      if preempted is not None:
        raise preempted
    for k, m in enumerate(members):
      if k not in self.dead:
        m.ckpt.wait()
        m.finish('completed')


def train_population(cfgs: list[Config], origins: list | None = None,
                     batching: str = 'auto') -> list[str]:
  """Trains (or resumes) the runs `cfgs` as one population (they must share every shape
  and the growth plan: jaxlab.launch.populations groups a sweep's points so); returns
  each member's status (completed, diverged). Raises Preempted after every member's
  checkpoint and summary. batching: vmap, map or auto
  (jaxlab.train.population_program.over_members, choose_batching)."""
  cfgs = [resolve(c) for c in cfgs]
  initialize_distributed(cfgs[0].mesh)
  with StopAgreement() as stop, QuietStorageNoise() as quiet, \
      Population(cfgs, stop, quiet, origins, batching) as population:
    return population.run()
