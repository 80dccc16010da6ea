"""`launch.py compile EXPERIMENT [key=value ...] --target tpu:TYPE [--slices N]`: every
phase's train and eval step compiled for a TPU slice (or GPU hosts) from this machine
(jaxlab.aot); prints the table and writes <workdir>/<name>/compile.json."""
from __future__ import annotations

import sys

from jaxlab import config as config_lib
from jaxlab.aot import report
from jaxlab.aot.check import check_run
from jaxlab.aot.targets import parse_target, use_cpu_host
from jaxlab.config.types import Config, ConfigError
from jaxlab.rundir.layout import run_dir_of
from jaxlab.train.runnable import resolve


def compile_and_report(cfg: Config, target_text: str, slices: int = 1,
                       estimate: bool = True, population: int = 1) -> tuple[list[dict], int]:
  """`launch.py compile`: compiles, prints the table, writes <run dir>/compile.json;
  returns (rows, exit code): 0 when every phase fits, 2 (after printing which phase and
  the remedies) when one does not."""
  target = parse_target(target_text, slices)
  print(target.describe(), flush=True)
  rows = check_run(cfg, target, log=lambda line: print(line, flush=True), estimate=estimate,
                   population=population)
  path = report.write(rows, run_dir_of(cfg))
  print(report.table(rows))
  print(f'wrote {path}')
  failure = report.failure(rows)
  if failure:
    print(f'error: {failure}', file=sys.stderr)
    return rows, 2
  return rows, 0


def main(args) -> int:
  use_cpu_host()
  if args.population < 1:
    raise ConfigError(f'--population {args.population} must be an integer >= 1')
  cfg = resolve(config_lib.load(args.experiment, args.overrides))
  return compile_and_report(cfg, args.target, args.slices, not args.no_estimate,
                            args.population)[1]
