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


# The costliest test files, costliest first (per-file totals of a cold `pytest --durations=0`
# run, 2026-12-07). `make test` runs `-n 2 --dist loadfile`: xdist hands out whole files
# in collection order as its two workers free up, so a heavy file collected last (the
# alphabet put test_vcycle_run and test_transfer there) kept one worker busy for minutes
# while the other had nothing left. Heavy files first, the many light ones fill in the end.
HEAVY_FIRST = ('test_growth_run.py', 'test_parallel.py', 'test_transfer.py',
               'test_vcycle_run.py', 'test_train.py', 'test_device_check.py',
               'test_context_growth.py', 'test_outputs.py', 'test_ring_attention.py',
               'test_data_identity.py', 'test_reliability.py', 'test_model.py',
               'test_compile_context.py', 'test_data.py', 'test_report.py',
               'test_flash_attention.py', 'test_compile.py', 'test_wsd.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  order = {id(item): i for i, item in enumerate(items)}
  items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
