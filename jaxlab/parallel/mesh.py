"""The device mesh: three named axes (data, fsdp, tensor) built from MeshConfig."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jaxlab.config import ConfigError, MeshConfig

AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
  """Resolves mesh.data=-1 and checks that the axes tile the devices exactly."""
  rest = cfg.fsdp * cfg.tensor
  data = cfg.data if cfg.data != -1 else n_devices // rest
  if data < 1 or data * rest != n_devices:
    raise ConfigError(
        f'mesh.data={cfg.data} x mesh.fsdp={cfg.fsdp} x mesh.tensor={cfg.tensor} does not '
        f'tile the {n_devices} available device(s); the product must equal {n_devices} '
        '(mesh.data=-1 takes whatever the other axes leave)')
  return data, cfg.fsdp, cfg.tensor


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """Axes are 'Auto' (GSPMD propagates shardings from the logical constraints), not
  the 'Explicit' sharding-in-types mode that jax.make_mesh defaults to."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(cfg, len(devices))
  auto = (AxisType.Auto,) * len(AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)
