"""Test-session setup shared by every test and the subprocesses they start.

JAX's persistent compilation cache: many tests compile the same tiny programs (often in
`launch.py` subprocesses), so a cache directory shared by the xdist workers and their
children turns most recompiles into cache reads (12 s -> 3 s for `tiny`'s first step).
It lives under .pytest_cache (git-ignored); a stale entry cannot be hit by another
program, since the key hashes the computation, the jax version and the flags. Set here,
at conftest import, before any test imports jax; a test that wants cold compiles drops
JAX_COMPILATION_CACHE_DIR from its subprocess environment.

JAX_PLATFORMS=cpu: `make test` installs libtpu (the [tpu] extra) for the compile tests
(tests/test_compile.py), which compile for TPU topologies without a TPU. Installed, libtpu
would make every JAX process probe for a TPU at start-up; the tests run on the CPU, and
the topologies need no TPU backend.

XLA_FLAGS: tests/xla_env.py's fast-compile set (LLVM -O0), unless the caller set XLA_FLAGS.
"""
from __future__ import annotations

import os
import pathlib

import xla_env

_CACHE = pathlib.Path(__file__).resolve().parent.parent / '.pytest_cache' / 'jax-compilation-cache'
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('XLA_FLAGS', xla_env.flags())
