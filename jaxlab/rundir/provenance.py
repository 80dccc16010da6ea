"""Where a run came from: provenance.json, written when the run first starts (a fresh
start writes it anew; a resume keeps it).

  {"experiment": "experiments/demo.py", "experiment_sha256": "...",
   "overrides": ["key=value", ...], "commit": "<git HEAD>", "dirty": false,
   "first_started": "2026-12-06T15:31:00Z", "command": ["launch.py", "sweep", ...]}

`experiment` is relative to the checkout when the file is in it (a run copied to another
checkout is checked against that checkout's file). `experiment` + `overrides` rebuild the
run's config (jaxlab.config.load, then the rules
of jaxlab.train.runnable.resolve): the report does so and warns when what the experiment
file gives today differs from the config the run trained with (`drift`). The commit is
the checkout's HEAD, with `dirty` when tracked files had uncommitted changes.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import subprocess
import sys

from jaxlab.rundir import records

PROVENANCE_FILE = 'provenance.json'
_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Origin:
  """How a run's config was made: an experiment file and the overrides applied to it
  (experiment None: a config made otherwise, e.g. by `launch.py grow`)."""
  experiment: str | None
  overrides: tuple[str, ...] = ()


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(['git', *args], cwd=_CHECKOUT, capture_output=True, text=True,
                         timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def sha256(path: str | pathlib.Path) -> str | None:
  try:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
  except OSError:
    return None


def experiment_path(recorded: str) -> pathlib.Path:
  """A recorded experiment path as a file of this checkout (relative ones are)."""
  path = pathlib.Path(recorded)
  return path if path.is_absolute() else _CHECKOUT / path


def describe(origin: Origin | None) -> dict:
  """provenance.json's content for a run starting now."""
  status = _git('status', '--porcelain', '--untracked-files=no')
  experiment = origin.experiment if origin else None
  digest = sha256(experiment) if experiment else None
  if experiment and pathlib.Path(experiment).resolve().is_relative_to(_CHECKOUT):
    experiment = str(pathlib.Path(experiment).resolve().relative_to(_CHECKOUT))
  return {'experiment': experiment, 'experiment_sha256': digest,
          'overrides': list(origin.overrides) if origin else [],
          'commit': _git('rev-parse', 'HEAD'), 'dirty': bool(status) if status is not None else None,
          'first_started': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%dT%H:%M:%SZ'),
          'command': list(sys.argv)}


def write(run_dir: str | pathlib.Path, origin: Origin | None) -> None:
  path = pathlib.Path(run_dir) / PROVENANCE_FILE
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(describe(origin), indent=2) + '\n')
  tmp.replace(path)


def read(run_dir: str | pathlib.Path) -> dict | None:
  return records.read_json_object(pathlib.Path(run_dir) / PROVENANCE_FILE)
