"""Everything jitted that a run needs, built from a Config and a mesh in one place:
model, optimizer and schedule, the state's abstract shapes and shardings, the train /
eval steps -- one Program per phase of the run's growth plan (one phase without growth).
The loop, the benchmark, growth events and grow-from-checkpoint all build it here.

Learning rate across phases: phase 0 follows the run-wide schedule (warmup, then decay
over train.steps). A later phase under growth.optimizer=reset restarts it: a fresh
optimizer whose schedule warms up again and decays over the remaining steps. Under
growth.optimizer=grow the optimizer's counts carry over, and so does the schedule.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxlab import growth
from jaxlab.config.hf import init_dir
from jaxlab.config.types import Config, ConfigError
from jaxlab.growth import events
from jaxlab.interop import hf
from jaxlab.models import Transformer, schema
from jaxlab.optim import make_optimizer, make_schedule, trainable
from jaxlab.parallel import batch_sharding
from jaxlab.train.state import init_state, init_state_from, state_shardings
from jaxlab.train.step import (make_eval_step, make_position_eval_step, make_train_step,
                               position_edges)


@dataclasses.dataclass(frozen=True)
class Program:
  cfg: Config
  phases: list               # the run's growth plan (jaxlab.growth.plan.Phase)
  phase: int                 # which of them this program trains
  model: Transformer
  tx: optax.GradientTransformation
  schedule: optax.Schedule   # the optimizer's own: its step count -> lr
  lr_schedule: Callable      # global step -> lr, valid within this phase
  abstract_state: Any        # TrainState of ShapeDtypeStructs carrying their shardings
  shardings: Any             # TrainState of NamedShardings
  batch_sharding: Any
  train_step: Callable       # (state, batch) -> (state, metrics); donates state
  eval_step: Callable        # (params, batch, step) -> (sum of token losses, token count)
  position_eval_step: Callable   # the same by position bucket (train.eval_positions)
  enter: Callable | None     # state of the previous phase -> state of this one (jitted)

  @property
  def start_step(self) -> int:
    return self.phases[self.phase].start_step

  @property
  def seq_len(self) -> int:
    """The sequence length this phase trains at (growth.seq_lens, else data.seq_len)."""
    return self.phases[self.phase].length(self.cfg)

  @property
  def rows(self) -> int:
    """Rows per global batch in this phase (tokens per step stay constant)."""
    return self.phases[self.phase].rows(self.cfg)

  def init_state(self):
    if self.phase:
      raise ValueError('only the first phase of a run is initialised from scratch')
    if self.cfg.model.init:   # model.init=hf:DIR: params streamed into their shards
      params = hf.load_params(init_dir(self.cfg.model.init), self.model.cfg,
                              self.shardings.params)
      return init_state_from(params, self.tx, self.shardings)
    return init_state(self.model, self.tx, self.cfg.data.seq_len, self.cfg.train.seed,
                      self.shardings)


def schedules(cfg: Config, phases: list, k: int):
  """(optimizer schedule, global-step lr schedule) for phase k."""
  steps = cfg.train.steps
  if k == 0 or cfg.growth.optimizer == 'grow' or phases[k].event == 'context':
    base = make_schedule(cfg.optim, steps)
    return base, base
  start = phases[k].start_step
  restart = make_schedule(cfg.optim, steps - start)
  return restart, lambda step: restart(step - start)


def layer_gate_fn(cfg: Config, phases: list, k: int):
  """Per-layer blend-in gate of growth method 'random' with growth.ramp_steps > 0: new
  layers go 0 -> 1 linearly over ramp_steps steps from the growth step."""
  g = cfg.growth
  if k == 0 or phases[k].event != 'grow' or g.method != 'random' or g.ramp_steps == 0:
    return lambda step: None
  new_L = jnp.asarray(growth.new_layers(phases[k - 1].model, phases[k].model, g.method,
                                        g.layers or None))
  start, ramp = phases[k].start_step, g.ramp_steps

  def gate(step):
    ramp_value = jnp.clip((step - start) / ramp, 0.0, 1.0)
    return jnp.where(new_L, ramp_value, 1.0).astype(jnp.float32)
  return gate


def trainable_rows(cfg: Config, phases: list, k: int) -> dict | None:
  """train.trainable resolved for phase k ({param path: rows}, jaxlab.optim.trainable), or
  None when every param trains. 'new' is the layers phase k's growth added; before a
  growth, everything trains."""
  text = cfg.train.trainable
  if not text:
    return None
  new = None
  if phases[k].event == 'grow':
    g = cfg.growth
    new = growth.new_layers(phases[k - 1].model, phases[k].model, g.method, g.layers or None)
  elif phases[k].event not in (None, 'context'):
    raise ConfigError(f"train.trainable={text!r} with growth.method={cfg.growth.method!r}: a "
                      'V-cycle has no frozen part')
  elif (any(p.event not in (None, 'context') for p in phases)
        and any(i.new for i in trainable.parse(text))):
    return None
  model_cfg = phases[k].model
  return trainable.resolve(text, model_cfg, new, schema.specs(model_cfg))


def build_program(cfg: Config, mesh, phase: int = 0, phases: list | None = None) -> Program:
  phases = phases if phases is not None else growth.phases(cfg)
  model_cfg = phases[phase].model
  model = Transformer(model_cfg)
  schedule, lr_schedule = schedules(cfg, phases, phase)
  tx = make_optimizer(cfg.optim, model_cfg, schedule, seed=cfg.train.seed,
                      trainable=trainable_rows(cfg, phases, phase))
  # Inside a V-cycle the state also holds the params of every finer level (to interpolate
  # into on the way back up).
  level_models = {p.level: p.model for p in phases}
  stash_models = {str(j): Transformer(level_models[j]) for j in range(phases[phase].level)}
  abstract, shardings = state_shardings(model, tx, cfg.data.seq_len, mesh, stash_models)
  in_sharding = batch_sharding(mesh)
  gate_fn = layer_gate_fn(cfg, phases, phase)
  micro = cfg.train.microbatches   # every step of every phase: its rows divide by it too
  enter = None
  if phase:
    rng = jax.random.fold_in(jax.random.key(cfg.train.seed), phases[phase].start_step)
    enter = jax.jit(functools.partial(events.transition, cfg, phases, phase, tx=tx, rng=rng),
                    out_shardings=shardings)
  return Program(
      cfg=cfg, phases=phases, phase=phase, model=model, tx=tx, schedule=schedule,
      lr_schedule=lr_schedule, abstract_state=abstract, shardings=shardings,
      batch_sharding=in_sharding,
      train_step=make_train_step(model, tx, lr_schedule, shardings, in_sharding, gate_fn,
                                 weight_stats=cfg.train.weight_stats, microbatches=micro),
      eval_step=make_eval_step(model, shardings.params, in_sharding, gate_fn, micro),
      position_eval_step=make_position_eval_step(model, shardings.params, in_sharding,
                                                 position_edges(cfg.data.seq_len), gate_fn,
                                                 micro),
      enter=enter)


def check_phases(cfg: Config, mesh, phases: list, program_at: Callable[[int], Any]) -> None:
  """Traces each phase's growth transition and train step on abstract values (no
  compile; jit reuses these traces): a config the model or a growth operator cannot
  take stops here with the reason (ConfigError). program_at: step -> that phase's
  Program (the run's own, cached: its programs are the ones traced)."""
  for k, phase in enumerate(phases):
    row = (phase.rows(cfg), phase.length(cfg) + 1)
    batch = jax.ShapeDtypeStruct(row, jnp.int32, sharding=batch_sharding(mesh))
    try:
      program = program_at(phase.start_step)
      program.train_step.eval_shape(program.abstract_state,
                                    {'tokens': batch, 'segment_ids': batch})
    except ValueError as err:
      reason = str(err).splitlines()[0]
      key = (f'model.attention={cfg.model.attention!r}: '
             if reason.startswith('attention implementation') else '')
      raise ConfigError(f'{key}the train step cannot be built for '
                        f'{growth.plan.describe(phase.model)}: {reason}') from None
    if k:
      prev = program_at(phases[k - 1].start_step)
      try:
        jax.eval_shape(program.enter, prev.abstract_state)
      except ValueError as err:
        raise ConfigError(f'growth.method={cfg.growth.method!r} cannot go from '
                          f'{growth.plan.describe(phases[k - 1].model)} to '
                          f'{growth.plan.describe(phase.model)}: {err}') from None
