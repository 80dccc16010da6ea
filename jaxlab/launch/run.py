"""`launch.py run EXPERIMENT [key=value ...]` (or a run directory to continue): one run."""
from __future__ import annotations

import pathlib
import sys

from jaxlab import config as config_lib
from jaxlab import train as train_lib
from jaxlab.launch import gpu_flags
from jaxlab.rundir.layout import run_dir_of
from jaxlab.rundir.provenance import Origin


def _rounded(value) -> str:
  return 'n/a' if value is None else f'{value:.4f}'


def main(args) -> int:
  gpu_flags.apply_and_log()   # before anything starts JAX's backend
  cfg = train_lib.resolve(config_lib.load(args.experiment, args.overrides))
  from_file = not (pathlib.Path(args.experiment) / config_lib.CONFIG_FILE).is_file()
  origin = Origin(str(config_lib.resolve_experiment(args.experiment)),
                  tuple(args.overrides)) if from_file else None
  try:
    summary = train_lib.train(cfg, origin)
  except train_lib.Diverged as err:
    print(f'error: {err}', file=sys.stderr)
    return 1
  except train_lib.Preempted as err:
    print(str(err), file=sys.stderr)
    return 128 + err.signum
  print(f"done: {run_dir_of(cfg)} (step {summary['step']}, final loss "
        f"{_rounded(summary['final_loss'])}, val loss {_rounded(summary['final_val_loss'])})")
  return 0
