"""XLA flags for the test processes and the subprocesses they start.

The tests check math and behaviour, never speed, and about 40% of a cold suite is XLA:CPU
compiling tiny programs. LLVM at -O0 without its expensive passes compiles them 25-35%
faster (measured: the 5 eight-device runs of tests/test_parallel.py 88 s -> 58 s, the
two-level V-cycle and wd-transfer smoke tests 131 s -> 92 s, idle machine; the cold suite
1378 s -> 744 s). Results change only at float32 rounding (no fast-math either way; -O0
contracts and vectorises differently): two tests needed a look, and each now says what it
measured under both levels (tests/test_multilevel.py's de-coalesce tolerance,
tests/test_adamp.py's chaotic scale-invariant toy). Benchmarks and `make demo` do not use
these flags.
"""
from __future__ import annotations

import os

FAST_COMPILE = ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true')


def flags(devices: int | None = None, *extra: str) -> str:
  """XLA_FLAGS for a test subprocess: the fast-compile set, `devices` fake CPU devices."""
  parts = list(FAST_COMPILE) + list(extra)
  if devices is not None:
    parts.append(f'--xla_force_host_platform_device_count={devices}')
  return ' '.join(parts)


def env(devices: int | None = None, *extra: str, **more: str) -> dict[str, str]:
  """os.environ with XLA_FLAGS from `flags`, and `more` on top."""
  return dict(os.environ, XLA_FLAGS=flags(devices, *extra), **more)
