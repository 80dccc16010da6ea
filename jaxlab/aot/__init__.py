"""Ahead-of-time compilation for accelerators from a CPU host (`launch.py compile`):
targets.py names the topologies, check.py compiles a run's phases and measures them,
report.py writes compile.json and the table."""
from __future__ import annotations

import os
import sys

from jaxlab.aot.check import check_run
from jaxlab.aot.targets import Target, parse_target
from jaxlab.config_types import Config


def use_cpu_host() -> None:
  """Compiling for a target needs no local accelerator: keep JAX on the CPU (on a TPU VM
  the chips may be busy training; a GPU would be initialised for nothing). Only when
  nothing chose the platforms yet."""
  import jax
  if not os.environ.get('JAX_PLATFORMS') and not jax.config.jax_platforms:
    jax.config.update('jax_platforms', 'cpu')


def compile_and_report(cfg: Config, target_text: str, slices: int = 1,
                       estimate: bool = True) -> tuple[list[dict], int]:
  """`launch.py compile`: compiles, prints the table, writes <run dir>/compile.json;
  returns (rows, exit code): 0 when every phase fits, 2 (after printing which phase and
  the remedies) when one does not."""
  from jaxlab.aot import report
  from jaxlab.train import run_dir_of
  target = parse_target(target_text, slices)
  print(target.describe(), flush=True)
  rows = check_run(cfg, target, log=lambda line: print(line, flush=True), estimate=estimate)
  path = report.write(rows, run_dir_of(cfg))
  print(report.table(rows))
  print(f'wrote {path}')
  failure = report.failure(rows)
  if failure:
    print(f'error: {failure}', file=sys.stderr)
    return rows, 2
  return rows, 0


__all__ = ['Target', 'check_run', 'compile_and_report', 'parse_target', 'use_cpu_host']
