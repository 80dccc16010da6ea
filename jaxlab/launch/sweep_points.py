"""A sweep's points: `launch.py sweep EXP` expands an experiment's runs() (or sweep()
grid, or --grid) times its seeds into validated (label, Config) pairs, before anything
runs. jaxlab.launch.sweep runs them in turn, jaxlab.launch.sweep_jobs as parallel
processes, and jaxlab.launch.submit as a SLURM array or on a TPU VM.
"""
from __future__ import annotations

import dataclasses
import itertools
import pathlib

from jaxlab import config as config_lib
from jaxlab.config.types import Config, ConfigError
from jaxlab.rundir.layout import SEED_KEYS, run_dir_of, seed_run
from jaxlab.rundir.provenance import Origin
from jaxlab.train.runnable import resolve


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One point of a sweep: its label, its validated config, and the experiment file and
  overrides that make that config (what the run records as its provenance). Unpacks as
  (label, cfg)."""
  label: str
  cfg: Config
  origin: Origin

  def __iter__(self):
    return iter((self.label, self.cfg))


def parse_grid(items: list[str]) -> dict[str, list[str]]:
  grid = {}
  for item in items:
    if '=' not in item:
      raise ConfigError(f'--grid {item!r} must look like key=v1,v2,... (e.g. optim.lr=1e-3,3e-3)')
    key, values = item.split('=', 1)
    grid[key.strip()] = [v.strip() for v in values.split(',') if v.strip()]
    if not grid[key.strip()]:
      raise ConfigError(f'--grid {item!r} lists no values')
  return grid


def sweep_configs(experiment: str, grid_items: list[str], overrides: list[str],
                  seeds: int | None = None, vary: str = 'both'):
  """The sweep's (label, Config) pairs, all validated up front. Without --grid, an
  experiment's optional runs(base_config) -> {label: [key=value, ...]} names each run
  (studies whose runs differ in several keys at once), else its sweep() ->
  {key: [values]} gives a grid.

  Seeds (`seeds`, else the experiment's SEEDS, else none): every label runs with seed
  offsets k = 0..seeds-1 added to its train.seed and data.seed (`vary`: both, init =
  train.seed only, data = data.seed only), in `<sweep>/<label>/seed<k>/`. Labels share
  the offsets, so seed k of every method sees the same data order (paired comparisons).
  Points go seed by seed: every method's seed 0 first, so a partial sweep is paired."""
  base = config_lib.load(experiment, overrides)
  grid = parse_grid(grid_items)
  module = config_lib.load_module(experiment) if (
      not (pathlib.Path(experiment) / config_lib.CONFIG_FILE).is_file()) else None
  named = None
  if not grid:
    if module is not None and callable(getattr(module, 'runs', None)):
      named = module.runs(base)
    elif module is not None and callable(getattr(module, 'sweep', None)):
      grid = {k: [str(v) for v in vs] for k, vs in module.sweep().items()}
    else:
      raise ConfigError(f'nothing to sweep: pass --grid key=v1,v2 or define runs() or sweep() '
                        f'in {experiment!r}')
  if named is None:
    named = {}
    for combo in itertools.product(*grid.values()):
      pairs = [f'{k}={v}' for k, v in zip(grid, combo)]
      named[','.join(pairs)] = pairs
  if seeds is None:
    seeds = getattr(module, 'SEEDS', None)
  if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
    raise ConfigError(f'seeds={seeds!r} must be an integer >= 1 (--seeds N, or SEEDS in '
                      f'{experiment!r})')
  sweep_dir = run_dir_of(base)
  experiment_file = str(config_lib.resolve_experiment(experiment)) if module else None
  out = []
  for k in range(seeds or 1):
    for label, pairs in named.items():
      made = list(overrides) + list(pairs) + [f'train.workdir={sweep_dir}']
      cfg = config_lib.apply_overrides(base, made[len(overrides):])
      if seeds is None:
        made.append(f'name={label}')
        out.append(SweepPoint(label, resolve(dataclasses.replace(cfg, name=label)),
                              Origin(experiment_file, tuple(made))))
        continue
      moved = [f'{key}={_get(cfg, key) + k}' for key in SEED_KEYS[vary]]
      more = moved + [f'train.workdir={sweep_dir / label}']
      cfg = config_lib.apply_overrides(cfg, more)
      seed_label, name = seed_run(label, k)
      out.append(SweepPoint(seed_label, resolve(dataclasses.replace(cfg, name=name)),
                            Origin(experiment_file, tuple(made + more + [f'name={name}']))))
  return sweep_dir, out


def _get(cfg, dotted: str):
  section, key = dotted.split('.')
  return getattr(getattr(cfg, section), key)


def population_size(experiment: str, given: int | None) -> int:
  """--population, else the experiment's POPULATION, else 1; ConfigError below 1."""
  size = given
  where = f'--population {given}'
  if size is None:
    module = None if (pathlib.Path(experiment) / config_lib.CONFIG_FILE).is_file() else \
        config_lib.load_module(experiment)
    size = getattr(module, 'POPULATION', 1)
    where = f'POPULATION={size!r} in {experiment!r}'
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ConfigError(f'{where} must be an integer >= 1 (the most points one program trains '
                      'together; 1 trains each point on its own)')
  return size
