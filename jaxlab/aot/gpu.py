"""GPU compile targets: `--target gpu:h100x8` compiles for 8 H100s from a machine without a
GPU. The CUDA plugin of jax[cuda12] (the [gpu] extra: jax-cuda12-plugin with ptxas, ~5 GB)
creates compile-only devices from a topology ("slices x hosts x GPUs per host") and a
GpuTargetConfigProto describing the GPU, which XLA (and Triton, for the Pallas kernels)
compile against instead of a device.

The description below is the H100 SXM5 80GB as NVIDIA documents it (CUDA device
properties of compute capability 9.0: 132 SMs, 228 KiB shared memory per SM of which 227
KiB per block opt-in, 48 KiB per block by default, 64K registers, 2048 threads per SM,
1024 per block; 50 MiB L2; HBM3 at 3.35 TB/s; 1.98 GHz boost); the memory size is what
CUDA reports for the card (the figure in XLA's own h100_sxm spec). The cuDNN version is
an assumption about the machine that will run it (jax[cuda12] 0.10 brings cuDNN 9).

Capacity: JAX preallocates XLA_PYTHON_CLIENT_MEM_FRACTION of the GPU's memory (0.75
unless set) and a program must fit in that; XLA's GPU compiler does not refuse a program
that does not (as libtpu does), so jaxlab.aot compares. XLA's GPU compiler gives no cost
analysis, so there is no step-time estimate for GPU targets.
"""
from __future__ import annotations

import dataclasses
import os

DEFAULT_MEM_FRACTION = 0.75     # JAX's XLA_PYTHON_CLIENT_MEM_FRACTION default


@dataclasses.dataclass(frozen=True)
class GpuModel:
  device_kind: str               # what jax.Device.device_kind will say (metrics' peak table)
  memory_bytes: int
  compute_capability: tuple[int, int]
  info: dict                     # the rest of GpuTargetConfigProto.gpu_device_info


GPUS = {
    'h100': GpuModel('NVIDIA H100 80GB HBM3', 84942979072, (9, 0), dict(
        core_count=132, fpus_per_core=128, threads_per_block_limit=1024, threads_per_warp=32,
        threads_per_core_limit=2048, shared_memory_per_block=48 * 1024,
        shared_memory_per_block_optin=227 * 1024, shared_memory_per_core=228 * 1024,
        registers_per_core_limit=65536, registers_per_block_limit=65536,
        block_dim_limit_x=2 ** 31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
        l2_cache_size=50 * 2 ** 20, memory_bandwidth=3_350_000_000_000, clock_rate_ghz=1.98)),
}
CUDNN_VERSION = (9, 8, 0)


def target_config(model: GpuModel) -> str:
  """GpuTargetConfigProto in text format."""
  info = dict(model.info, device_memory_size=model.memory_bytes)
  fields = ''.join(f'  {k}: {v}\n' for k, v in info.items())
  major, minor = model.compute_capability
  return (f'gpu_device_info {{\n{fields}'
          f'  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n'
          f'platform_name: "CUDA"\n'
          f'dnn_version_info {{ major: {CUDNN_VERSION[0]} minor: {CUDNN_VERSION[1]} '
          f'patch: {CUDNN_VERSION[2]} }}\n'
          f'device_description_str: "{model.device_kind}"\n')


def capacity_bytes(model: GpuModel) -> int:
  """The memory a jaxlab process gets on one GPU (JAX's preallocated share)."""
  fraction = float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', DEFAULT_MEM_FRACTION))
  return int(model.memory_bytes * fraction)


def available() -> bool:
  """Whether jax's CUDA plugin (the [gpu] extra) is installed."""
  import importlib.util
  try:
    return importlib.util.find_spec('jax_plugins.xla_cuda12') is not None
  except ModuleNotFoundError:
    return False


def devices(model_name: str, hosts: int, per_host: int) -> list:
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform='cuda', topology_name=model_name,
                                      topology=f'1x{hosts}x{per_host}',
                                      target_config=target_config(GPUS[model_name]))
  return list(topo.devices)
