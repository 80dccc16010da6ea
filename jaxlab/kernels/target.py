"""The device a computation is being traced for, as kernels that tune themselves need it.

jaxlab traces every step under its mesh (jaxlab.parallel.activation_rules), and a mesh's
abstract form carries its devices' platform and kind, also when the devices are a TPU
topology compiled for from a CPU host (jaxlab.aot). Pallas's Mosaic lowering reads the
same context. Outside any mesh the answer is the default device. Lowering itself (Mosaic,
Triton or interpret mode) is decided later, per platform, with jax.lax.platform_dependent;
this is for choices made while tracing: which backend `auto` picks and block sizes.
"""
from __future__ import annotations

import jax


def target_device() -> tuple[str, str]:
  """(platform, device_kind): ('tpu', 'TPU v5 lite'), ('gpu', 'NVIDIA H100 ...'), ('cpu', 'cpu')."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  if device is None:
    device = jax.devices()[0]
  return device.platform, device.device_kind
