"""The report's provenance section: per method, the commit and the experiment file's hash
when its runs first started (provenance.json, jaxlab.rundir.provenance), and a warning
for every run whose config differs from what its experiment file and overrides give
today.

What the experiment gives today needs the experiment file run and the config resolved
(Step Law's values need the model), which imports jax; the report does it in a process
of its own (`python -m jaxlab.train.runnable`), so the report itself still loads no jax.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from jaxlab.config.loading import flatten
from jaxlab.config.types import Config
from jaxlab.rundir import provenance
from jaxlab.rundir.layout import method_and_seed
from jaxlab.rundir.read import Run

# Keys that place a run, not what it trains: never a drift.
PLACE_KEYS = ('name', 'train.workdir', 'history')
SHOWN = 4   # differing keys named per run


def _today(requests: list[dict]) -> list[dict]:
  if not requests:
    return []
  try:
    proc = subprocess.run([sys.executable, '-m', 'jaxlab.train.runnable'],
                          input=json.dumps(requests), capture_output=True, text=True,
                          timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])
  except (OSError, subprocess.SubprocessError, ValueError, IndexError):
    return [{'error': 'the experiment files could not be evaluated'} for _ in requests]


def _added_since(old: dict, new: dict) -> set[str]:
  """Keys the run's config.json lacks and today's config holds at their default: fields
  added to Config after the run started, which the run used as that default."""
  default = flatten(dataclasses.asdict(Config()))
  return {k for k in set(new) - set(old) if k in default and new[k] == default[k]}


def drift(runs: list[Run]) -> dict[str, str]:
  """{run label: what differs from its experiment file today} for the runs that differ
  (or whose experiment cannot be evaluated). A field added to Config after the run
  started, at its default today, is not a difference."""
  known = [(r, provenance.read(r.dir)) for r in runs]
  known = [(r, p) for r, p in known if p and p.get('experiment')]
  answers = _today([{'experiment': str(provenance.experiment_path(p['experiment'])),
                     'overrides': p.get('overrides', [])} for _, p in known])
  out = {}
  for (run, _), answer in zip(known, answers):
    if 'error' in answer:
      out[run.label] = f'its experiment cannot be rebuilt today ({answer["error"]})'
      continue
    old = {k: v for k, v in flatten(run.config).items() if not k.startswith(PLACE_KEYS)}
    new = {k: v for k, v in flatten(answer['config']).items() if not k.startswith(PLACE_KEYS)}
    added = _added_since(old, new)
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in added]
    if diff:
      more = f' and {len(diff) - SHOWN} more' if len(diff) > SHOWN else ''
      out[run.label] = ', '.join(f'{k}: ran with {old.get(k)!r}, gives {new.get(k)!r} today'
                                 for k in diff[:SHOWN]) + more
  return out


def section(runs: list[Run]) -> str:
  """report.md's provenance section ('' when no run recorded one)."""
  by_method: dict[str, list] = {}
  for run in runs:
    p = provenance.read(run.dir)
    by_method.setdefault(method_and_seed(run.label)[0], []).append(p)
  if not any(p for ps in by_method.values() for p in ps):
    return ''
  lines = ['## Provenance', '',
           'When each run first started (provenance.json): the checkout\'s commit ("+dirty": '
           'tracked files had uncommitted changes) and the experiment file\'s SHA-256.', '',
           '| method | runs | experiment | file SHA-256 | commit | first started |',
           '|---|---|---|---|---|---|']

  def cells(values):
    return ', '.join(sorted({v for v in values if v})) or '—'
  for method, ps in by_method.items():
    recorded = [p for p in ps if p]
    lines.append(
        f'| {method} | {len(ps)} | {cells((p.get("experiment") or "").rsplit("/", 1)[-1] for p in recorded)} | '
        f'{cells((p.get("experiment_sha256") or "")[:12] for p in recorded)} | '
        f'{cells((p.get("commit") or "")[:10] + ("+dirty" if p.get("dirty") else "") for p in recorded)} | '
        f'{cells(p.get("first_started") for p in recorded)}' + (
            f' ({len(ps) - len(recorded)} without provenance)' if len(recorded) < len(ps) else '')
        + ' |')
  drifted = drift(runs)
  lines.append('')
  if drifted:
    lines += ['**Warning: config drift.** These runs trained with another config than their '
              'experiment file and overrides give today; rerun them, or compare with care:', '']
    lines += [f'- `{label}`: {what}' for label, what in drifted.items()]
  else:
    lines.append('Every run\'s config is what its experiment file and overrides give today.')
  return '\n'.join(lines) + '\n'
