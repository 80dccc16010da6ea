"""`launch.py sweep EXP ... --population K`: a sweep's points grouped into populations of at
most K members, each trained as one program (jaxlab.train.population) in this process.

Points share a program when their configs are equal but for their run's name and place,
their seeds (train.seed, data.seed: each member starts from its own init and reads its
own data order) and the optimizer numbers a population's step takes as arrays
(jaxlab.train.population_program.VARYING). Other points (another width, another growth
plan, another step count) form other populations: grouping is never an error. Under
gradient noise (optim.grad_noise_eta > 0) the noise key comes from train.seed through
the optimizer, so there train.seed stays in what members must share.

The groups keep the sweep's order (first appearance), and a group larger than K is cut
into pieces of K in that order.
"""
from __future__ import annotations

import json
import sys

from jaxlab.config import loading
from jaxlab.config.types import Config, ConfigError
from jaxlab.rundir.layout import run_dir_of
from jaxlab.rundir.records import status_of
from jaxlab.train import Preempted
from jaxlab.train.population import train_population
from jaxlab.train.population_program import VARYING

_FREE = ('name', 'train.workdir', 'train.seed', 'data.seed', *(f'optim.{k}' for k in VARYING))


def program_key(cfg: Config) -> str:
  """What members of one population must share, as text (equal text: one program)."""
  flat = loading.flatten(cfg.to_dict())
  free = set(_FREE) - ({'train.seed'} if cfg.optim.grad_noise_eta > 0 else set())
  return json.dumps({k: v for k, v in flat.items() if k not in free}, sort_keys=True,
                    default=str)


def group(points: list, size: int) -> list[list]:
  """[(index, SweepPoint)] -> populations: lists of them sharing a program_key, at most
  `size` each, in the sweep's order."""
  if size < 1:
    raise ConfigError(f'--population {size} must be >= 1 (the most members one program '
                      'trains together; 1 trains each point on its own)')
  by_key: dict[str, list] = {}
  for i, point in points:
    by_key.setdefault(program_key(point.cfg), []).append((i, point))
  return [members[j:j + size] for members in by_key.values()
          for j in range(0, len(members), size)]


def describe(groups: list[list], total: int) -> str:
  lines = [f'{len(groups)} population(s) for {sum(map(len, groups))} of {total} points '
           '(members share every shape and the growth plan; they differ in seeds, '
           f'{", ".join("optim." + k for k in VARYING)}):']
  for n, members in enumerate(groups):
    labels = ', '.join(point.label for _, point in members)
    lines.append(f'  population {n + 1}: {len(members)} member(s): {labels}')
  return '\n'.join(lines)


def run(points: list, total: int, size: int,
        batching: str = 'auto') -> tuple[dict[str, str], int]:
  """Trains the points not finished earlier as populations of at most `size`; returns
  ({label: status}, exit code: 0, or 128 + signal when stopped)."""
  outcome, todo = {}, []
  for i, point in points:
    if status_of(run_dir_of(point.cfg)) == 'completed':
      print(f'[{i + 1}/{total}] {point.label}: finished earlier, skipped')
      outcome[point.label] = 'completed'
    else:
      todo.append((i, point))
  groups = group(todo, size)
  if groups:
    print(describe(groups, total), flush=True)
  for n, members in enumerate(groups):
    print(f'population {n + 1}/{len(groups)}: {", ".join(p.label for _, p in members)}',
          flush=True)
    try:
      status = train_population([p.cfg for _, p in members], [p.origin for _, p in members],
                                batching)
    except Preempted as err:
      print(str(err), file=sys.stderr)
      return outcome, 128 + err.signum
    for (_, point), s in zip(members, status):
      outcome[point.label] = s
  return outcome, 0
