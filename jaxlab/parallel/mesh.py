"""The device mesh: four named axes (data, fsdp, context, tensor) built from MeshConfig,
and the multi-host start-up (jax.distributed) that must come before anything touches a device.

Each axis is `mesh.<axis>` devices within a slice (TPU ICI) or node (GPU NVLink) times
`mesh.dcn_<axis>` slices / nodes (the data-center network). With every dcn_* at 1 the
mesh is one topology-aware block over all devices (jax.make_mesh); otherwise it is
mesh_utils' hybrid mesh, whose granules are TPU slices, or processes on GPU / CPU.
A SLURM launch with one process per GPU keeps every dcn_* at 1: devices are ordered
process-major, and SLURM numbers tasks node by node, so the innermost axis (tensor) stays
within a node as long as it is no larger than the GPUs per node.
"""
from __future__ import annotations

import glob
import math
import os
import sys

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from jaxlab.config.types import ConfigError, MeshConfig

# Outermost to innermost: tensor (the most traffic) gets the nearest devices, context next
# (its ring passes K/V between neighbours every step), then the data-parallel axes.
AXES = ('data', 'fsdp', 'context', 'tensor')


def _fill(sizes: dict[str, int], total: int, what: str) -> tuple[int, ...]:
  """Replaces the one -1 in sizes by what the others leave of total; checks the product."""
  known = math.prod(v for v in sizes.values() if v != -1)
  filled = {k: (total // known if v == -1 else v) for k, v in sizes.items()}
  if math.prod(filled.values()) != total or min(filled.values()) < 1:
    given = ' x '.join(f'{k}={v}' for k, v in sizes.items())
    raise ConfigError(f'{given} does not tile the {total} {what}; the product must equal '
                      f'{total} (one size may be -1: whatever the others leave)')
  return tuple(filled.values())


def mesh_shapes(cfg: MeshConfig, n_devices: int, n_granules: int = 1):
  """(ici_shape, dcn_shape) with -1 resolved. n_granules: TPU slices or processes."""
  dcn = {f'mesh.dcn_{a}': getattr(cfg, f'dcn_{a}') for a in AXES}
  if all(v == 1 for v in dcn.values()):
    n_granules = 1
  elif n_devices % n_granules:
    raise ConfigError(f'{n_devices} devices do not split evenly into {n_granules} slices / '
                      'processes; set every mesh.dcn_* to 1')
  dcn_shape = _fill(dcn, n_granules, 'slices / processes (mesh.dcn_* spans them)')
  ici = {f'mesh.{a}': getattr(cfg, a) for a in AXES}
  what = 'available device(s)' if n_granules == 1 else 'devices of each slice / process'
  ici_shape = _fill(ici, n_devices // n_granules, what)
  return ici_shape, dcn_shape


def mesh_shape(cfg: MeshConfig, n_devices: int, n_granules: int = 1) -> tuple[int, ...]:
  """Total size of each axis of AXES (ici x dcn)."""
  ici, dcn = mesh_shapes(cfg, n_devices, n_granules)
  return tuple(i * d for i, d in zip(ici, dcn))


def _by_slice(devices) -> bool:
  """Granules are TPU slices (multi-slice), else processes (GPU nodes, CPU hosts)."""
  return all(d.platform == 'tpu' and hasattr(d, 'slice_index') for d in devices)


def _granules(devices) -> int:
  """How many islands the data-center network connects."""
  key = 'slice_index' if _by_slice(devices) else 'process_index'
  return len({getattr(d, key) for d in devices})


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """Axes are 'Auto' (GSPMD propagates shardings from the logical constraints), not
  the 'Explicit' sharding-in-types mode that jax.make_mesh defaults to."""
  devices = list(jax.devices() if devices is None else devices)
  ici, dcn = mesh_shapes(cfg, len(devices), _granules(devices))
  auto = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                process_is_granule=not _by_slice(devices))
    return Mesh(grid, AXES, axis_types=auto)
  # All of this process's devices, or a TPU topology compiled for from another host
  # (jaxlab.aot): the physical layout that `run` gets on that slice.
  if devices == list(jax.devices()) or devices[0].platform == 'tpu':
    return jax.make_mesh(ici, AXES, axis_types=auto, devices=devices)
  return Mesh(np.asarray(devices).reshape(ici), AXES, axis_types=auto)


# ------------------------------------------------------------------ multi-host start-up

def detected_cluster() -> str | None:
  """The multi-process environment jax.distributed can configure itself from, if any.
  Looks only at the environment (no network, no device), so it is safe before init."""
  # JAX's TPU start-up writes 'WARNING: could not determine ...' into the TPU_* variables
  # it cannot fill (a CPU host where libtpu is installed); such a value is no cluster's.
  env = {k: v for k, v in os.environ.items() if not v.startswith('WARNING')}
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if 'SLURM_JOB_ID' in env and 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', 1)) > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in env:
    return 'Open MPI'
  if env.get('TPU_WORKER_HOSTNAMES', '').count(',') or env.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return 'Cloud TPU'
  # A Cloud TPU VM (single- or multi-host): its TPU device files, or the variables its
  # runtime sets; jax.distributed then asks the metadata server itself.
  # (a TPU VM's TPU_WORKER_ID is a number)
  if env.get('TPU_ACCELERATOR_TYPE') or env.get('TPU_WORKER_ID', '').isdigit() \
      or os.path.exists('/dev/accel0') or glob.glob('/dev/vfio/[0-9]*'):
    return 'Cloud TPU'
  return None


def initialize(cfg: MeshConfig) -> bool:
  """Starts jax.distributed when mesh.distributed asks for it (on) or a cluster is
  detected (auto); returns whether it is running. Explicit mesh.coordinator_address /
  num_processes / process_id (or $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES /
  $JAX_PROCESS_ID) take precedence over auto-detection. Idempotent."""
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  address = cfg.coordinator_address or env.get('JAX_COORDINATOR_ADDRESS') or None
  count = cfg.num_processes or int(env.get('JAX_NUM_PROCESSES', 0)) or None
  pid = cfg.process_id if cfg.process_id >= 0 else int(env.get('JAX_PROCESS_ID', -1))
  pid = None if pid < 0 else pid
  explicit = address is not None
  cluster = detected_cluster()
  if cfg.distributed == 'off' or (cfg.distributed == 'auto' and not (explicit or cluster)):
    return False
  if explicit and (count is None or pid is None) and cluster in (None, 'JAX_COORDINATOR_ADDRESS'):
    raise ConfigError(
        f'mesh.coordinator_address={address!r} needs mesh.num_processes and mesh.process_id '
        '(or $JAX_NUM_PROCESSES / $JAX_PROCESS_ID) when no SLURM / Cloud TPU / Open MPI '
        'environment is detected')
  # CPU processes talk through gloo (harmless on GPU / TPU, whose collectives differ).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=pid)
  except (ValueError, RuntimeError) as err:
    raise ConfigError(f'jax.distributed.initialize failed (mesh.distributed='
                      f'{cfg.distributed!r}, detected: {cluster or "nothing"}): {err}') from None
  print(f'jax.distributed: process {jax.process_index()} of {jax.process_count()} '
        f'({cluster or "explicit coordinator"}), {jax.local_device_count()} local device(s)',
        file=sys.stderr, flush=True)
  return True
