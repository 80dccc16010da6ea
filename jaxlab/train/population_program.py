"""A population's programs: K runs that share every shape and the growth plan, trained as
one jitted step over a leading member axis (`launch.py sweep ... --population K`).

Members differ only in numbers. The seeds (train.seed, data.seed) stay outside the step:
each member's state is initialised from its own seed and reads its own data order. The
optimizer's varying hyperparameters (VARYING: optim.lr, optim.weight_decay) enter the step
as float32 arrays of shape K, one value per member: inside the vmapped step each member's
optimizer is built from its own values with the same code as a separate run
(jaxlab.optim.make_optimizer, jaxlab.train.program.schedules), so one compile serves any
lrs and decays, and a member computes what its separate run computes, up to float32
rounding (tests/test_population.py: within 1e-5 over 50 steps).

Everything that does not depend on the varying numbers (model, eval steps, the state's
abstract shapes and shardings) is member 0's Program (jaxlab.train.program), shared.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxlab.config.types import Config
from jaxlab.growth import events
from jaxlab.optim import make_optimizer
from jaxlab.parallel import DEFAULT_RULES
from jaxlab.train.program import (Program, build_program, layer_gate_fn, schedules,
                                  trainable_rows)
from jaxlab.train.state import fresh_state
from jaxlab.train.step import train_step_fn

# The optim fields a population's members may differ in (each a float32 array of shape K
# inside the step). Any other difference gives another population (launch/populations).
VARYING = ('lr', 'weight_decay')


def hyper_arrays(cfgs: list[Config]) -> dict[str, jax.Array]:
  """{field: float32 K} of VARYING from the members' configs."""
  return {k: jnp.asarray([getattr(c.optim, k) for c in cfgs], jnp.float32) for k in VARYING}


def member_config(cfg: Config, hyper: dict) -> Config:
  """cfg with the optim fields of `hyper` (one member's values, traced) written in."""
  return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **hyper))


def members_axis(mesh, size: int) -> str | None:
  """'data' when the population's members spread over the mesh's data axis (each device
  then trains whole members, with no collective between them: data parallelism over
  members), else None (every member's batch splits over the data-parallel axes as its
  separate run's does). Spread when the data axis is > 1 and divides the population, in
  one process (a process feeds its share of every member's rows)."""
  data = mesh.shape['data']
  return 'data' if data > 1 and size % data == 0 and jax.process_count() == 1 else None


def _without(entry, axis):
  """One PartitionSpec entry with a mesh axis taken out."""
  if entry is None or axis is None:
    return entry
  if isinstance(entry, str):
    return None if entry == axis else entry
  kept = tuple(a for a in entry if a != axis)
  return kept if len(kept) > 1 else (kept[0] if kept else None)


def _stacked(sharding: NamedSharding, axis: str | None) -> NamedSharding:
  """A member's sharding with the member axis in front, on `axis` (members_axis)."""
  return NamedSharding(sharding.mesh,
                       PartitionSpec(axis, *(_without(e, axis) for e in sharding.spec)))


@dataclasses.dataclass(frozen=True)
class PopulationProgram:
  base: Program           # member 0's: model, eval steps, one member's shapes and shardings
  size: int
  shardings: Any          # the stacked state's
  batch_sharding: Any     # K x rows x (seq_len + 1)
  train_step: Callable    # (state, batch, hyper) -> (state, metrics K); donates state
  enter: Callable | None  # (state of the previous phase, hyper, rngs K) -> state
  split: Callable         # state -> [member state] (unstack)


BATCHING = ('vmap', 'map')


def choose_batching(batching: str, mesh, size: int) -> str:
  """'auto' -> map on a CPU whose members are not spread over devices (measured faster
  there at every K: bench/population_sweep.py, docs/running.md), vmap otherwise (what a
  GPU or TPU wants, and the only way to spread members); vmap / map as given."""
  if batching != 'auto':
    return batching
  cpu = mesh.devices.flat[0].platform == 'cpu'
  return 'map' if cpu and members_axis(mesh, size) is None else 'vmap'


def over_members(fn, axis: str | None, batching: str):
  """fn of one member -> fn of the population (member axis in front of every argument).
  vmap: the members' arrays batched into each op (what an accelerator wants; required to
  spread the members over devices, `axis`). map: jax.lax.map, the members one after
  another inside the one program, each computing exactly what its separate run does."""
  if batching == 'map' and axis is None:
    return lambda *args: jax.lax.map(lambda member: fn(*member), args)
  return jax.vmap(fn, spmd_axis_name=axis)


def build_population_program(cfg: Config, mesh, size: int, phase: int, phases: list,
                             batching: str = 'vmap') -> PopulationProgram:
  """cfg: member 0's config (every member shares what is not VARYING or a seed).
  batching: how the step runs the members (over_members)."""
  if batching not in BATCHING:
    raise ValueError(f'batching={batching!r}: expected one of {BATCHING}')
  base = build_program(cfg, mesh, phase, phases)
  model = base.model
  gate_fn = layer_gate_fn(cfg, phases, phase)
  axis = members_axis(mesh, size)
  rules = tuple((name, _without(mesh_axes, axis)) for name, mesh_axes in DEFAULT_RULES)

  def member_tx(hyper):
    c = member_config(cfg, hyper)
    schedule, lr_schedule = schedules(c, phases, phase)
    tx = make_optimizer(c.optim, phases[phase].model, schedule, seed=cfg.train.seed,
                        trainable=trainable_rows(c, phases, phase))
    return tx, lr_schedule

  def one_step(state, batch, hyper):
    tx, lr_schedule = member_tx(hyper)
    step = train_step_fn(model, tx, lr_schedule, mesh, gate_fn, cfg.train.weight_stats,
                         cfg.train.microbatches, rules)
    return step(state, batch)

  shardings = jax.tree.map(lambda s: _stacked(s, axis), base.shardings)
  batch_sharding = _stacked(base.batch_sharding, axis)
  batches = {'tokens': batch_sharding, 'segment_ids': batch_sharding}
  train_step = jax.jit(over_members(one_step, axis, batching),
                       in_shardings=(shardings, batches, None),
                       out_shardings=(shardings, None), donate_argnums=0)
  enter = None
  if phase:
    def one_enter(state, hyper, rng):
      return events.transition(cfg, phases, phase, state, tx=member_tx(hyper)[0], rng=rng)
    enter = jax.jit(over_members(one_enter, axis, batching), out_shardings=shardings)
  split = jax.jit(lambda state: [jax.tree.map(lambda x, k=k: x[k], state) for k in range(size)],
                  out_shardings=[base.shardings] * size)
  return PopulationProgram(base=base, size=size, shardings=shardings,
                           batch_sharding=batch_sharding, train_step=train_step, enter=enter,
                           split=split)


def device_memory() -> tuple[int, str]:
  """(bytes one device can hold, what that is): the accelerator's limit, or on a CPU the
  memory the system has available now (MemAvailable)."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']), f'one {device.device_kind}'
  try:
    for line in open('/proc/meminfo'):
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024, 'the memory available to this CPU host'
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), 'this host\'s memory'


def abstract_args(program: PopulationProgram) -> tuple:
  """(state, batch, hyper) of the population's train step as ShapeDtypeStructs carrying
  their shardings: what compile_step and `launch.py compile --population` lower it for."""
  base = program.base
  state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct((program.size, *a.shape), a.dtype, sharding=s),
      base.abstract_state, program.shardings)
  row = (program.size, base.rows, base.seq_len + 1)
  batch = jax.ShapeDtypeStruct(row, jnp.int32, sharding=program.batch_sharding)
  hyper = {k: jax.ShapeDtypeStruct((program.size,), jnp.float32) for k in VARYING}
  return state, {'tokens': batch, 'segment_ids': batch}, hyper


def abstract_rngs(program: PopulationProgram):
  """The members' growth keys (growth_rngs) as a ShapeDtypeStruct."""
  return jax.eval_shape(lambda: jnp.stack([jax.random.key(0)] * program.size))


def compile_step(program: PopulationProgram, hyper) -> tuple[Any, int]:
  """(the train step compiled for the population's shapes, the bytes it needs on a
  device: arguments, outputs not aliased to them, and temporaries)."""
  state, batch, _ = abstract_args(program)
  compiled = program.train_step.lower(state, batch, hyper).compile()
  mem = compiled.memory_analysis()
  need = 0 if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  return compiled, need


def growth_rngs(cfgs: list[Config], start_step: int):
  """The members' growth keys: each what its separate run folds in (jaxlab.train.program)."""
  return jnp.stack([jax.random.fold_in(jax.random.key(c.train.seed), start_step) for c in cfgs])


def init_states(program: PopulationProgram, cfgs: list[Config]):
  """The members' fresh states, stacked: each initialised from its own train.seed, as its
  separate run's (jaxlab.train.state.init_state; the optimizer's initial state holds no
  hyperparameter, so member 0's optimizer initialises every member's)."""
  base = program.base

  def one(rng):
    return fresh_state(base.model, base.tx, cfgs[0].data.seq_len, rng, boxed=False)
  init = jax.jit(jax.vmap(one, spmd_axis_name=members_axis(base.batch_sharding.mesh,
                                                          program.size)),
                 out_shardings=program.shardings)
  return init(jnp.stack([jax.random.key(c.train.seed) for c in cfgs]))


def stack(program: PopulationProgram, states: list):
  """[member state] -> the population's state (member axis in front), in its shardings."""
  return jax.jit(lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs),
                 out_shardings=program.shardings)(states)


def unstack(program: PopulationProgram, state) -> list:
  """The population's state -> [member state] in a member's shardings (as its separate
  run holds it: what its eval steps and checkpoints take), in one dispatch."""
  return program.split(state)


def stack_batches(batches: list[dict]) -> dict:
  """[member host batch {name: rows x S}] -> {name: K x rows x S} (numpy)."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
