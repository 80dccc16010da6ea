"""Compile every phase of a run for a TPU (or GPU) target from a CPU host, and say what it
needs.

Each phase of the run's growth plan is built by jaxlab.train.program.build_program on a
mesh of the target's devices (jaxlab.parallel.make_mesh, as `run` builds it), so the
model, optimizer, shardings, remat policy and attention backend are the run's. Per phase
it compiles, with libtpu (Mosaic for the Pallas kernels; XLA GPU and Triton for a GPU):
  train  the jitted train step (state donated), on a batch of the run's shape;
  eval   the eval step (when the run evaluates), while the optimizer state stays in HBM;
  enter  the growth transition from the previous phase's state (phases after the first).
HBM per chip is compiled.memory_analysis(): arguments + outputs - aliased (donated) +
temporaries + code, the largest of the three programs (eval adds the resident state it
does not take as arguments). A program the compiler cannot fit raises RESOURCE_EXHAUSTED;
its message gives what it needed.

Estimates. XLA's cost analysis counts a while loop's body once, and the layers run in a
scan, so the step's cost is extrapolated from the same step with 0 and 1 layers (no loop
left): cost(L) = cost(0) + L (cost(1) - cost(0)), for FLOPs and for XLA's estimated time
('optimal_seconds', its per-op roofline). That holds only when those two programs have no
while loop at all: at 7B scale XLA adds its own (22 in the 1-layer Llama-2-7B step on
v5p-64, e.g. for collective matmuls), each costed once whatever its trip count, and the
extrapolation read 176% MFU. So an estimate is withheld, with that reason, when either
program has a loop, or when it implies more than 100% MFU. Started with LOOP_FREE_LIBTPU_ARGS
in LIBTPU_INIT_ARGS, libtpu builds none of those loops (the 7B steps have 0) and the
estimate is made; bench/bench_compile.py does that in a separate process, so that
the fit check still compiles the program a run would. XLA prices each of its own ConcatBitcast custom
calls at -1 s in that estimate (seen with libtpu 0.0.42: one such call, one second less);
they are counted and added back. Pallas kernels are costed by their CostEstimate; splash's
kernels carry none, so with splash the estimate leaves attention out (said in the note).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp

from jaxlab import growth
from jaxlab.models import flops as flops_lib
from jaxlab.aot.targets import Target, devices
from jaxlab.config.checks import check_microbatches
from jaxlab.config.types import Config, ConfigError
from jaxlab.growth.plan import Phase
from jaxlab.parallel import make_mesh
from jaxlab.train import population_program as pp
from jaxlab.train.program import Program, build_program
from jaxlab.train.runnable import resolve

# libtpu options under which XLA builds no collective-matmul (windowed einsum) loops: set in
# LIBTPU_INIT_ARGS before JAX starts, the 0/1-layer steps are loop-free and estimable.
LOOP_FREE_LIBTPU_ARGS = ('--xla_tpu_enable_windowed_einsum_for_all_gather=false '
                         '--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false')
_UNCOSTED = 'custom_call_target="ConcatBitcast"'   # XLA-internal; -1 s each in optimal_seconds
_SIZE = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


class DoesNotFit(Exception):
  """The compiler ran out of HBM; needed_bytes when its message says."""

  def __init__(self, message: str, needed_bytes: int | None):
    super().__init__(message)
    self.needed_bytes = needed_bytes


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _SIZE[unit])


def _needed(message: str) -> int | None:
  used = re.search(r'Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm', message)
  if used:
    return _bytes(*used.groups()[:2])
  temps = re.search(r'required for HLO temporaries \(([\d.]+)([KMGT]?)\)', message)
  return _bytes(*temps.groups()) if temps else None


@contextlib.contextmanager
def _no_persistent_cache():
  """A compile-only executable cannot be loaded back from JAX's persistent compilation
  cache (jax 0.10: "PjRtCompiler must be constructed with a Client"), so writing it there
  costs time for nothing."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', enabled)


def compile_for(fn, args, mesh):
  """(jax Compiled, seconds). Lowered under the mesh's abstract form, so Pallas's Mosaic
  lowering sees the target chip (it reads the device kind from there)."""
  t0 = time.perf_counter()
  try:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), _no_persistent_cache():
      compiled = fn.lower(*args).compile()
  except jax.errors.JaxRuntimeError as err:
    message = str(err)
    if 'RESOURCE_EXHAUSTED' not in message:
      raise
    raise DoesNotFit(message.splitlines()[0], _needed(message)) from None
  return compiled, time.perf_counter() - t0


def memory(compiled) -> dict:
  """Per-chip bytes of a compiled program, as compiled.memory_analysis() reports them."""
  m = compiled.memory_analysis()
  out = {'argument': m.argument_size_in_bytes, 'output': m.output_size_in_bytes,
         'alias': m.alias_size_in_bytes, 'temp': m.temp_size_in_bytes,
         'code': m.generated_code_size_in_bytes}
  out['total'] = out['argument'] + out['output'] - out['alias'] + out['temp'] + out['code']
  return out


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs carrying shardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def abstract_batch(cfg: Config, program: Program, evaluation: bool = False) -> dict:
  """A global batch as the loop feeds it: seq_len + 1 tokens per row, and segment ids (the
  phase's rows and length; evaluation batches are always train.batch_size x data.seq_len)."""
  shape = ((cfg.train.batch_size, cfg.data.seq_len + 1) if evaluation
           else (program.rows, program.seq_len + 1))
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=program.batch_sharding)
          for k in ('tokens', 'segment_ids')}


def target_mesh(cfg: Config, target: Target):
  """The run's mesh over the target's devices, with the checks `run` makes before compiling."""
  no_dcn = all(getattr(cfg.mesh, f'dcn_{a}') == 1 for a in ('data', 'fsdp', 'tensor'))
  if target.platform == 'tpu' and target.slices > 1 and no_dcn:
    raise ConfigError(f'--slices {target.slices}: set mesh.dcn_data (or dcn_fsdp / dcn_tensor) '
                      f'so the mesh spans the slices, e.g. mesh.dcn_data={target.slices}')
  mesh = make_mesh(cfg.mesh, devices=devices(target))
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if cfg.train.batch_size % shards or cfg.train.batch_size % target.hosts:
    raise ConfigError(f'train.batch_size={cfg.train.batch_size} must be divisible by the '
                      f'data-parallel size (data x fsdp axes of the mesh = {shards}) and by '
                      f'the number of hosts of {target.name} ({target.hosts})')
  check_microbatches(cfg, shards)
  return mesh


def _cost(compiled) -> tuple[float, float, bool, int]:
  """(flops per device, XLA's estimated seconds with its -1 s placeholders added back,
  whether splash kernels -- which XLA cannot cost -- are in the program, the number of
  while loops in it)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost:          # XLA's GPU compiler gives none
    return None
  text = compiled.as_text()
  return (float(cost.get('flops', 0.0)), float(cost.get('optimal_seconds', 0.0)) +
          text.count(_UNCOSTED), 'splash_' in text, text.count(' while('))


def build(cfg: Config, mesh, k: int, phases: list, population: int = 1):
  """Phase k's Program, or with population > 1 its PopulationProgram (K members)."""
  if population > 1:
    return pp.build_population_program(cfg, mesh, population, k, phases)
  return build_program(cfg, mesh, k, phases)


def train_args(cfg: Config, program) -> tuple:
  """(train step, its abstract arguments) of a Program or a PopulationProgram."""
  if isinstance(program, pp.PopulationProgram):
    return program.train_step, pp.abstract_args(program)
  return program.train_step, (program.abstract_state, abstract_batch(cfg, program))


def estimate_step(cfg: Config, mesh, model, cache: dict, seq_len: int = 0,
                  population: int = 1) -> dict:
  """Loop-corrected XLA FLOPs and time of one train step of `model` (see the docstring),
  at `seq_len` (0: data.seq_len; a context-growth phase's length otherwise), for one run
  or a population of that many members (all of them in one step)."""
  key = (dataclasses.replace(model, n_layers=0), seq_len, population)
  if key not in cache:
    costs, seconds = [], 0.0
    for n in (0, 1):
      variant = [Phase(0, dataclasses.replace(model, n_layers=n), None, seq_len=seq_len)]
      compiled, dt = compile_for(*train_args(cfg, build(cfg, mesh, 0, variant, population)),
                                 mesh)
      costs.append(_cost(compiled))
      seconds += dt
    cache[key] = (costs, seconds)
  (c0, c1), seconds = cache[key]
  if c0 is None or c1 is None:
    return {'xla_flops_per_device': None, 'seconds': None, 'compile_seconds': seconds,
            'note': 'the compiler gives no cost analysis for this target'}
  (f0, s0, _, loops0), (f1, s1, splash, loops1) = c0, c1
  if loops0 or loops1:
    return {'xla_flops_per_device': None, 'seconds': None, 'compile_seconds': seconds,
            'note': f'not estimated: XLA put while loops into the 0- and 1-layer steps '
                    f'({loops0} and {loops1}; collective matmuls at this scale), whose bodies '
                    'its cost analysis counts once whatever their trip count; for an estimate '
                    f'run with LIBTPU_INIT_ARGS="{LOOP_FREE_LIBTPU_ARGS}"'}
  L = model.n_layers
  out = {'xla_flops_per_device': f0 + L * (f1 - f0), 'seconds': s0 + L * (s1 - s0),
         'compile_seconds': seconds, 'note': None}
  if splash:
    out['note'] = ('splash kernels carry no cost estimate, so XLA\'s estimate leaves '
                   'attention out (step time too short, MFU too high)')
  if out['seconds'] <= 0:
    out['seconds'], out['note'] = None, 'XLA gave no usable time estimate'
  return out


def remedies(cfg: Config, model, mesh) -> list[str]:
  """What could make a phase fit, for this config (most effective first)."""
  out = []
  if model.remat != 'full':
    better = 'save_dots' if model.remat == 'none' else 'full'
    out.append(f'model.remat={better} (recompute activations in the backward; now '
               f'{model.remat})')
  chips = mesh.size // mesh.shape['tensor']
  if mesh.shape['fsdp'] < chips:
    out.append(f'mesh.fsdp=-1 mesh.data=1 (shard params and optimizer state over all {chips} '
               f'chips; now fsdp={mesh.shape["fsdp"]})')
  if (mesh.size > 1 and mesh.shape['tensor'] == 1 and model.n_heads % 2 == 0
      and model.kv_heads % 2 == 0):
    out.append('mesh.tensor=2 or more (split heads, MLP and vocab across chips)')
  per_device = cfg.train.batch_size // (mesh.shape['data'] * mesh.shape['fsdp'])
  k = cfg.train.microbatches
  if per_device // k > 1 and (per_device // k) % 2 == 0:
    out.append(f'train.microbatches={2 * k} (gradient accumulation: the same batch in '
               f'{2 * k} sequential microbatches of {per_device // k // 2} sequences per device)')
  if per_device > 1:
    out.append(f'a smaller per-device batch: train.batch_size={cfg.train.batch_size // 2} '
               f'(now {per_device} sequences per device)')
  if model.dtype == 'float32':
    out.append('model.dtype=bfloat16 (bf16 activations)')
  out.append('a target with more chips or more HBM per chip')
  return out


def _program_memory(fn, args, mesh, extra: int = 0) -> dict:
  compiled, seconds = compile_for(fn, args, mesh)
  mem = memory(compiled)
  mem['resident'] = extra                      # state in HBM that is not an argument
  mem['peak'] = mem['total'] + extra
  return {'memory': mem, 'seconds': seconds, 'compiled': compiled}


def check_phase(cfg: Config, target: Target, mesh, programs: list[Program], k: int,
                cache: dict | None) -> dict:
  """One phase's row of compile.json (plus the jax Compiled objects under 'compiled').
  programs: Programs, or PopulationPrograms (`--population K`: the train step steps all K
  members; the eval step is one member's, with the whole population's state resident)."""
  population = programs[k].size if isinstance(programs[k], pp.PopulationProgram) else 1
  program = programs[k].base if population > 1 else programs[k]
  model = program.model.cfg
  train_step, train_arguments = train_args(cfg, programs[k])
  state = train_arguments[0]
  row = {'phase': k, 'start_step': program.start_step, 'event': program.phases[k].event,
         'model': growth.plan.describe(model), 'target': target.name, 'chips': target.chips,
         'hosts': target.hosts, 'mesh': dict(mesh.shape), 'attention': model.attention,
         'remat': model.remat, 'hbm_capacity_bytes': target.hbm_bytes,
         'population': population,
         'flops_per_step': flops_lib.flops_per_token(model, program.seq_len) *
         cfg.train.batch_size * cfg.data.seq_len * population}
  programs_run = {'train': (train_step, train_arguments, 0)}
  if cfg.train.eval_batches:
    member = program.abstract_state
    resident = per_chip_bytes(state) - per_chip_bytes(member.params)
    programs_run['eval'] = (program.eval_step, (member.params, abstract_batch(cfg, program, True),
                                                member.step), resident)
  if k and population > 1:
    before = pp.abstract_args(programs[k - 1])
    programs_run['enter'] = (programs[k].enter, (before[0], before[2],
                                                 pp.abstract_rngs(programs[k])), 0)
  elif k:
    programs_run['enter'] = (program.enter, (programs[k - 1].abstract_state,), 0)
  compiled, mem, seconds = {}, {}, 0.0
  try:
    for name, (fn, args, extra) in programs_run.items():
      result = _program_memory(fn, args, mesh, extra)
      compiled[name], mem[name] = result['compiled'], result['memory']
      seconds += result['seconds']
  except DoesNotFit as err:
    args_bytes = per_chip_bytes(programs_run[name][1])
    needed = None if err.needed_bytes is None else err.needed_bytes + (
        args_bytes if 'temporaries' in str(err) else 0)
    row.update(hbm_bytes_per_chip=needed, hbm_is_lower_bound=True, fits=False,
               failed_program=name, error=str(err), memory=mem,
               remedies=remedies(cfg, model, mesh), xla_flops_per_step=None,
               estimated_step_seconds=None, estimated_mfu=None, compile_seconds=seconds)
    row['compiled'] = compiled
    return row
  peak = max(m['peak'] for m in mem.values())
  row.update(hbm_bytes_per_chip=peak, hbm_is_lower_bound=False,
             fits=peak <= target.hbm_bytes, memory=mem, compile_seconds=seconds)
  if not row['fits']:
    row['remedies'] = remedies(cfg, model, mesh)
  row.update(xla_flops_per_step=None, estimated_step_seconds=None, estimated_mfu=None,
             estimate_note='not estimated (--no-estimate)')
  row['compiled'] = compiled
  if cache is None:
    return row
  if _cost(compiled['train']) is None:
    row['estimate_note'] = 'the compiler gives no cost analysis for this target'
    return row
  est = estimate_step(cfg, mesh, model, cache, program.seq_len, population)
  peak_flops = flops_lib.peak_flops_per_device(target_device_kind(mesh))
  flops = est['xla_flops_per_device']
  row.update(xla_flops_per_step=None if flops is None else flops * mesh.size,
             estimated_step_seconds=est['seconds'], estimate_compile_seconds=est['compile_seconds'],
             estimate_note=est['note'], estimated_mfu=None)
  if est['seconds'] and peak_flops:
    mfu = row['flops_per_step'] / (est['seconds'] * peak_flops * mesh.size)
    if mfu <= 1:
      row['estimated_mfu'] = mfu
      row['member_steps_per_second_per_chip'] = population / est['seconds'] / mesh.size
    else:   # a roofline that undercounts: said, never printed as a result
      row.update(estimated_step_seconds=None,
                 estimate_note=f'not estimated: XLA\'s {est["seconds"]:.3f} s step implies '
                               f'{100 * mfu:.0f}% MFU, more than the chip can do')
  return row


def target_device_kind(mesh) -> str:
  return mesh.devices.flat[0].device_kind


def check_run(cfg: Config, target: Target, log=print, estimate: bool = True,
              population: int = 1) -> list[dict]:
  """Compiles every phase of cfg's run for the target; one row per phase. estimate=False
  skips the extra compiles behind XLA's FLOPs and step-time estimate. population > 1:
  the run as a member of a population of that many (`launch.py sweep --population`),
  whose members differ only in seeds and jaxlab.train.population_program.VARYING. The
  config is resolved first (jaxlab.train.runnable: Step Law's values, the rules that need
  the model), as a run would be."""
  cfg = resolve(cfg)
  mesh = target_mesh(cfg, target)
  phases = growth.phases(cfg)
  programs = [build(cfg, mesh, k, phases, population) for k in range(len(phases))]
  rows, cache = [], ({} if estimate else None)
  for k in range(len(phases)):
    log(f'phase {k}: {growth.plan.describe(phases[k].model)} on {target.name} '
        f'(mesh {dict(mesh.shape)}) ...')
    try:
      rows.append(check_phase(cfg, target, mesh, programs, k, cache))
    except ConfigError as err:
      raise type(err)(f'phase {k} ({growth.plan.describe(phases[k].model)}): {err}') from None
  return rows

