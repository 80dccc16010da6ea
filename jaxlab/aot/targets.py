"""Compile targets: Cloud TPU accelerator types (as gcloud names them) -> the topology that
libtpu compiles for, and that topology's devices, without a TPU; and GPU hosts
(`gpu:h100x8`, jaxlab/aot/gpu.py).

`--target tpu:TYPE` takes gcloud's accelerator type, `v4-32`, `v5p-256`, `v5litepod-16`
(or `v5e-16`), `v6e-64`, or a topology, `v5e:4x4`, `v5p:2x4x4`, like gcloud's --topology:

  v4, v5p     the number counts TensorCores, 2 per chip, one JAX device per chip (megacore);
              chips form a 3-D torus (4 chips: 2x2x1, then the power of two split as evenly
              as possible: 8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4, ...); 4 chips
              per host.
  v5e, v6e    the number counts chips, one TensorCore each; 2-D: 1x1, 2x2, 2x4, 4x4, 4x8,
              8x8, 8x16, 16x16; slices of up to 8 chips are one host, larger ones 4 chips
              per host.

These are the layouts of gcloud's accelerator types and of MaxText's
accelerator_to_spec_map. HBM per chip is the capacity libtpu's compiler enforces, read off
its out-of-memory message for each generation (libtpu 0.0.42: "exceeds available HBM
(15.75G)" for v5e, whose chip holds 16 GiB; v4 30.75 of 32 GiB, v5p 95.74 GiB, v6e 31.25 of
32 GiB). Peak FLOP/s come from jaxlab.models.flops (the one table of peaks).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import tempfile

import jax

from jaxlab.aot import gpu
from jaxlab.config.types import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu_name: str           # topology prefix libtpu knows
  cores_per_chip: int        # TensorCores per chip (2: megacore, one device per chip)
  dims: int                  # torus / mesh rank
  hbm_bytes: int             # per chip, as the compiler enforces it
  names: tuple[str, ...]     # gcloud spellings


GENERATIONS = {
    'v4': Generation('v4', 2, 3, int(30.75 * GIB), ('v4',)),
    'v5p': Generation('v5', 2, 3, int(95.74 * GIB), ('v5p',)),
    'v5e': Generation('v5e', 1, 2, int(15.75 * GIB), ('v5e', 'v5litepod')),
    'v6e': Generation('v6e', 1, 2, int(31.25 * GIB), ('v6e',)),
}
_SIZES_2D = (1, 4, 8, 16, 32, 64, 128, 256)        # chips of the 2-D generations' slices
_SINGLE_HOST_2D = 8                                  # v5e / v6e: up to 8 chips on one host


@dataclasses.dataclass(frozen=True)
class Target:
  name: str                  # as given, e.g. 'tpu:v5p-64'
  generation: str            # key of GENERATIONS, or of gpu.GPUS
  topology: tuple[int, ...]  # chips per dimension of one slice (GPU: (GPUs per host,))
  slices: int                # TPU slices over the data-center network (GPU: hosts)
  platform: str = 'tpu'

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.topology)

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.slices

  @property
  def chips_per_host(self) -> tuple[int, int, int]:
    if self.platform == 'gpu':
      return (self.topology[0], 1, 1)
    if self.gen.dims == 2 and self.chips_per_slice <= _SINGLE_HOST_2D:
      return (*self.topology, 1)
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host)

  @property
  def hbm_bytes(self) -> int:
    """Per chip (GPU): what a program may use."""
    if self.platform == 'gpu':
      return gpu.capacity_bytes(gpu.GPUS[self.generation])
    return self.gen.hbm_bytes

  @property
  def topology_name(self) -> str:
    if self.platform == 'gpu':
      return f'{self.slices} host(s) x {self.topology[0]} {self.generation}'
    return f'{self.gen.libtpu_name}:{"x".join(map(str, self.topology))}'

  def describe(self) -> str:
    unit = 'GPUs' if self.platform == 'gpu' else 'chips'
    shape = '' if self.platform == 'gpu' else f'{self.generation} ' + 'x'.join(
        map(str, self.topology)) + (f' x {self.slices} slices' if self.slices > 1 else '') + ', '
    return (f'{self.name}: {shape}{self.chips} {unit} on {self.hosts} host(s), '
            f'{self.hbm_bytes / GIB:.2f} GiB HBM per {unit[:-1]}')


def _generation(text: str) -> str:
  for key, gen in GENERATIONS.items():
    if text in gen.names:
      return key
  known = ', '.join(n for g in GENERATIONS.values() for n in g.names)
  raise ConfigError(f'--target: unknown TPU generation {text!r}; known: {known}')


def _torus(chips: int) -> tuple[int, int, int]:
  """gcloud's 3-D layout of a power-of-two chip count >= 4."""
  if chips == 4:
    return (2, 2, 1)
  k = int(math.log2(chips))
  parts = [k // 3 + (i >= 3 - k % 3) for i in range(3)]   # ascending, remainder at the end
  return tuple(2 ** p for p in parts)


def _grid(chips: int) -> tuple[int, int]:
  k = int(math.log2(chips))
  return (2 ** (k // 2), 2 ** (k - k // 2))


def parse_target(text: str, slices: int = 1) -> Target:
  """'tpu:v5p-64', 'tpu:v5litepod-16', 'tpu:v5e:2x2', ... -> Target (ConfigError if not)."""
  if slices < 1:
    raise ConfigError(f'--slices {slices} must be >= 1')
  platform, _, rest = text.partition(':')
  if platform == 'gpu':
    return _parse_gpu(text, rest, slices)
  if platform != 'tpu' or not rest:
    raise ConfigError(f'--target {text!r} is not valid: expected tpu:TYPE, e.g. tpu:v5p-64, '
                      'tpu:v5e-16, tpu:v6e-8, tpu:v4-32, or a topology such as tpu:v5e:2x2, '
                      'or gpu:h100x8')
  shape = re.fullmatch(r'([a-z0-9]+):(\d+(?:x\d+){1,2})', rest)
  if shape:
    key = _generation(shape.group(1))
    topology = tuple(int(n) for n in shape.group(2).split('x'))
    if len(topology) != GENERATIONS[key].dims or min(topology) < 1:
      raise ConfigError(f'--target {text!r}: a {key} topology has {GENERATIONS[key].dims} '
                        'dimensions, e.g. ' + ('2x2x4' if GENERATIONS[key].dims == 3 else '4x4'))
    return Target(text, key, topology, slices)
  typed = re.fullmatch(r'([a-z0-9]+)-(\d+)', rest)
  if not typed:
    raise ConfigError(f'--target {text!r} is not valid: expected tpu:TYPE such as tpu:v5p-64')
  key, n = _generation(typed.group(1)), int(typed.group(2))
  gen = GENERATIONS[key]
  if gen.dims == 2:
    if n not in _SIZES_2D:
      raise ConfigError(f'--target {text!r}: {key} slices have {", ".join(map(str, _SIZES_2D))} '
                        'chips; for another shape give a topology, e.g. tpu:v5e:4x8')
    return Target(text, key, (1, 1) if n == 1 else _grid(n), slices)
  chips, odd = divmod(n, gen.cores_per_chip)
  if odd or chips < 4 or chips & (chips - 1):
    raise ConfigError(f'--target {text!r}: the number after {typed.group(1)}- counts TensorCores '
                      f'({gen.cores_per_chip} per chip): 8, 16, 32, ... ({key}-8 is 4 chips); for '
                      'other shapes give a topology, e.g. tpu:v5p:4x4x12')
  return Target(text, key, _torus(chips), slices)


def _parse_gpu(text: str, rest: str, hosts: int) -> Target:
  """gpu:MODELxN: N GPUs on each of --slices hosts."""
  match = re.fullmatch(r'([a-z0-9]+)x(\d+)', rest)
  if not match or match.group(1) not in gpu.GPUS or int(match.group(2)) < 1:
    raise ConfigError(f'--target {text!r} is not valid: expected gpu:MODELxN (N GPUs per host; '
                      f'--slices hosts), MODEL one of {", ".join(gpu.GPUS)}, e.g. gpu:h100x8')
  return Target(text, match.group(1), (int(match.group(2)),), hosts, platform='gpu')


@contextlib.contextmanager
def _quiet_stderr():
  """libtpu prints warnings about the missing TPU (no metadata server, no worker list) to
  file descriptor 2 while it creates the topology; they are noise for a compile-only
  client. Kept and shown only if creating the topology fails."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as log:
    os.dup2(log.fileno(), 2)
    try:
      yield log
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def use_cpu_host() -> None:
  """Compiling for a target needs no local accelerator: keep JAX on the CPU (on a TPU VM
  the chips may be busy training; a GPU would be initialised for nothing). Only when
  nothing chose the platforms yet."""
  if not os.environ.get('JAX_PLATFORMS') and not jax.config.jax_platforms:
    jax.config.update('jax_platforms', 'cpu')


def devices(target: Target) -> list:
  """The target's devices (compile-only: they lower and compile, never run)."""
  if target.platform == 'gpu':
    if not gpu.available():
      raise ConfigError('compiling for a GPU needs jax\'s CUDA plugin, which is not installed: '
                        'pip install -e ".[gpu]" (about 5 GB, with ptxas; no GPU needed)')
    return gpu.devices(target.generation, target.hosts, target.topology[0])
  if importlib.util.find_spec('libtpu') is None:
    raise ConfigError('compiling for a TPU needs libtpu, which is not installed: '
                      'pip install -e ".[tpu]" (about 700 MB; no TPU needed)')
  # libtpu takes /tmp/libtpu_lockfile so that one process owns a machine's TPU chips; a
  # compile-only topology owns none, and without this a second `launch.py compile` (or a
  # test worker) on the same machine fails while the first runs.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies
  with _quiet_stderr() as log:
    try:
      topo = topologies.get_topology_desc(
          platform='tpu', topology_name=target.topology_name,
          chip_config_name='megacore' if target.gen.cores_per_chip == 2 else 'default',
          chips_per_host_bounds=target.chips_per_host, num_slices=target.slices)
    except Exception as err:   # noqa: BLE001 -- libtpu raises several kinds; all mean one thing
      log.seek(0)
      raise ConfigError(f'libtpu cannot create the topology {target.topology_name} for '
                        f'--target {target.name}: {err}\n{log.read().decode(errors="replace")}'
                        ) from None
  return list(topo.devices)
