"""What the TPU and SLURM submitters share: steps that print in --dry-run and run
otherwise, the tool check, and the `launch.py` command lines a job runs remotely."""
from __future__ import annotations

import dataclasses
import pathlib
import shlex
import shutil
import subprocess
import typing

from jaxlab import config as config_lib
from jaxlab.config.types import ConfigError

ROOT = config_lib.EXPERIMENTS_DIR.parent   # the project checkout that holds launch.py


class StepFailed(Exception):
  """A command of a submission failed; the CLI prints it and exits with 1."""


@dataclasses.dataclass
class Step:
  """One thing a submission does: `text` is what --dry-run prints (exact commands,
  or '# ' comments for local work), `run` does it."""
  text: str
  run: typing.Callable[[], None]


def command(argv: list[str]) -> Step:
  def run():
    code = subprocess.run(argv).returncode
    if code != 0:
      raise StepFailed(f'`{shlex.join(argv[:6])} ...` failed with exit code {code}')
  return Step(shlex.join(argv), run)


def execute(steps: list[Step], dry_run: bool) -> None:
  for step in steps:
    print(step.text, flush=True)
    if not dry_run:
      step.run()


def require_tool(name: str, hint: str) -> None:
  if shutil.which(name) is None:
    raise ConfigError(f'{name!r} is not on PATH; {hint} (or pass --dry-run to print the '
                      'commands)')


def check_project() -> None:
  if not (ROOT / 'launch.py').is_file():
    raise ConfigError(f'submitting needs a source checkout with launch.py; {ROOT} has none')


def experiment_arg(experiment: str, *, remote: bool) -> str:
  """The EXPERIMENT argument as the job must spell it after `cd` into the project (on
  a shared file system: absolute; on TPU workers, which hold a copy: relative)."""
  path = pathlib.Path(experiment)
  if not ((path / 'config.json').is_file() or (path.is_file() and path.suffix == '.py')):
    return experiment                      # a name under experiments/
  full = path.resolve()
  if not remote:
    return str(full)
  try:
    return str(full.relative_to(ROOT))
  except ValueError:
    raise ConfigError(f'experiment {experiment!r} lies outside the project {ROOT}; TPU workers '
                      'get a copy of the project only -- move it under experiments/') from None


def run_argv(experiment: str, overrides: list[str]) -> list[str]:
  return ['launch.py', 'run', experiment, *overrides]


def sweep_argv(experiment: str, overrides: list[str], grid: list[str],
               seeds: int | None = None, vary: str = 'both') -> list[str]:
  """`launch.py sweep ...` without --point (the job appends it)."""
  argv = ['launch.py', 'sweep', experiment, *overrides]
  for item in grid:
    argv += ['--grid', item]
  if seeds is not None:
    argv += ['--seeds', str(seeds)]
  if vary != 'both':
    argv += ['--vary', vary]
  return argv
