"""XLA flags for GPU training runs: MaxText's H100 set, defined once, used by
`launch.py run` / `sweep` (set before JAX starts its GPU backend) and by the SLURM script.

The set (MaxText's GPU configs, e.g. its llama2-7b H100 script; NVIDIA's JAX-Toolbox
GPU performance guide explains each flag):
  latency hiding scheduler       overlap collectives with compute
  triton gemm off                cuBLAS GEMMs (XLA's Triton GEMM autotuning is slower to
                                 compile and rarely faster for LLM shapes)
  command buffers off            MaxText's --xla_gpu_graph_level=0 (CUDA graphs off); that
                                 flag is gone from XLA, --xla_gpu_enable_command_buffer=
                                 (empty: no command types) is its spelling now
  highest-priority async stream  collectives on a high-priority stream
  combine thresholds             all-reduce and all-gather combined up to 128 MiB,
                                 reduce-scatter up to 64 MiB; not combined by dimension
  pipelined collectives          all-gather / reduce-scatter / all-reduce of the next
                                 scan iteration (the layers) start during this one, with
                                 while-loop double buffering
  rematerialization pass off     jaxlab decides remat itself (model.remat)
plus CUDA_DEVICE_MAX_CONNECTIONS=1 (one hardware queue, so collectives are issued in
program order). Every flag is checked by tests/test_gpu_flags.py to parse in the
installed jaxlib (an unknown flag aborts XLA at start-up; the CUDA plugin is built from
the same XLA revision).

A user's XLA_FLAGS wins whole: when it is set, nothing is added (say so with
XLA_FLAGS=' ' for none). Whether the run is on a GPU is decided before JAX starts, from
JAX_PLATFORMS when it is set (its first entry), else from an installed CUDA plugin and a
visible NVIDIA device.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

MIB = 1 << 20
XLA_FLAGS = (
    '--xla_gpu_enable_latency_hiding_scheduler=true',
    '--xla_gpu_enable_triton_gemm=false',
    '--xla_gpu_enable_command_buffer=',
    '--xla_gpu_enable_highest_priority_async_stream=true',
    f'--xla_gpu_all_reduce_combine_threshold_bytes={128 * MIB}',
    f'--xla_gpu_all_gather_combine_threshold_bytes={128 * MIB}',
    f'--xla_gpu_reduce_scatter_combine_threshold_bytes={64 * MIB}',
    '--xla_gpu_enable_all_gather_combine_by_dim=false',
    '--xla_gpu_enable_reduce_scatter_combine_by_dim=false',
    '--xla_gpu_enable_pipelined_all_gather=true',
    '--xla_gpu_enable_pipelined_reduce_scatter=true',
    '--xla_gpu_enable_pipelined_all_reduce=true',
    '--xla_gpu_enable_while_loop_double_buffering=true',
    '--xla_disable_hlo_passes=rematerialization',
)
ENV = {'CUDA_DEVICE_MAX_CONNECTIONS': '1'}
_CUDA_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin')
_NVIDIA_DEVICE = pathlib.Path('/dev/nvidiactl')


def flags_string() -> str:
  return ' '.join(XLA_FLAGS)


def gpu_expected(environ=os.environ) -> bool:
  """Will JAX's default backend be a GPU? Decided without starting JAX."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() in ('cuda', 'gpu')
  return (any(importlib.util.find_spec(p) is not None for p in _CUDA_PLUGINS)
          and _NVIDIA_DEVICE.exists())


def apply(environ=os.environ, gpu: bool | None = None) -> str:
  """Sets XLA_FLAGS (and ENV's variables where unset) for a GPU run, unless the user set
  XLA_FLAGS; must run before JAX initialises its backend. Returns the line it logs."""
  gpu = gpu_expected(environ) if gpu is None else gpu
  if not gpu:
    return ''
  if 'XLA_FLAGS' in environ:
    return f'gpu xla flags: XLA_FLAGS was already set, kept as is: {environ["XLA_FLAGS"]!r}'
  environ['XLA_FLAGS'] = flags_string()
  for key, value in ENV.items():
    environ.setdefault(key, value)
  return (f'gpu xla flags (jaxlab.launch.gpu_flags, MaxText H100 set): {environ["XLA_FLAGS"]}; '
          + ' '.join(f'{k}={environ[k]}' for k in ENV))


def apply_and_log(environ=os.environ) -> None:
  """apply(), with its line printed to stderr (the run's log)."""
  line = apply(environ)
  if line:
    print(line, file=sys.stderr, flush=True)


def slurm_exports() -> list[str]:
  """The sbatch script's lines: the same set, unless the job's environment has XLA_FLAGS."""
  return [f'if [ -z "${{XLA_FLAGS+x}}" ]; then export XLA_FLAGS="{flags_string()}"; fi',
          *(f'export {k}="${{{k}:-{v}}}"' for k, v in ENV.items()),
          'echo "XLA_FLAGS=$XLA_FLAGS" >&2']
