"""Run directories as logged, read back: `Run` (config, metrics, summary, events),
`load_run`, `load_runs` (a run dir or every run below a sweep dir), `summarize` (one
table row), `group_seeds` (the runs of a sweep with seeds, by method and seed) and
`aligned` (several runs' series at their common steps). The report and everything it
tabulates read runs through here; no jax is imported.

Where the numbers come from (the same rule for every column):
  * steps, final losses, val tokens (per evaluation), tokens, FLOPs, params:
    ``summary.json`` when the run wrote one, else the last logged step that has the value.
  * tokens/s: the median over logged steps with a non-null value, never the
    summary (the first step includes compilation; the median is robust to it).
  * status: ``summary.json``'s status; without a summary 'diverged' if a loss
    was non-finite, else 'running/unknown'.
A run resumed from a checkpoint re-logs the steps after that checkpoint; the
later lines win, so curves and final values follow the run that continued. A
summary.json older than the last logged step (left by the preempted session of a
resumed run) is ignored.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import statistics
import warnings
from typing import Any

from jaxlab.rundir import records
from jaxlab.rundir.layout import CONFIG_FILE, METRICS_FILE, method_and_seed

UNKNOWN_STATUS = 'running/unknown'


@dataclasses.dataclass
class Run:
  """One run directory, as logged."""
  label: str
  dir: pathlib.Path
  config: dict[str, Any]
  metrics: list[dict[str, Any]]     # logged steps with a loss or val_loss, in step order
  summary: dict[str, Any] | None    # None while running, or if the run crashed
  events: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"event": ...} lines

  @property
  def status(self) -> str:
    if self.summary is not None:
      return str(self.summary.get('status') or 'unknown')
    for r in self.metrics:
      for key in ('loss', 'val_loss'):
        v = num(r.get(key))
        if v is not None and not math.isfinite(v):
          return 'diverged'
    return UNKNOWN_STATUS

  def series(self, key: str, x: str = 'step') -> tuple[list[float], list[float]]:
    """(xs, ys) over logged steps that have both `x` and `key`; non-finite ys kept as nan."""
    xs, ys = [], []
    for r in self.metrics:
      xv, yv = num(r.get(x)), num(r.get(key))
      if xv is None or yv is None:
        continue
      xs.append(float(xv))
      ys.append(float(yv) if math.isfinite(yv) else math.nan)
    return xs, ys


# ----------------------------------------------------------------------------- loading

def num(v):
  """`v` if it is a JSON number (bool excluded), else None."""
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return v
  return None


def _read_metrics(path: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """metrics.jsonl as (per-step records with a loss or val_loss, event lines)."""
  lines = records.read(path)
  if lines.bad_before_end():   # a half-written last line is normal while a run is going
    warnings.warn(f'{path}: skipped {len(lines.bad_before_end())} line(s) that are not JSON '
                  'objects', stacklevel=3)
  steps: list[dict] = []
  events: list[dict] = []
  for rec in lines.objects:
    if 'event' in rec:
      events.append(rec)
      continue
    step = num(rec.get('step'))
    if step is None or (num(rec.get('loss')) is None and num(rec.get('val_loss')) is None):
      continue
    # A resumed run re-logs steps after its checkpoint: drop the replaced tail.
    while steps and steps[-1]['step'] > step:
      steps.pop()
    if steps and steps[-1]['step'] == step:
      steps[-1] = {**steps[-1], **rec}   # e.g. a separate val line for the same step
    else:
      steps.append(rec)
  return steps, events


def load_run(run_dir: str | os.PathLike, label: str | None = None) -> Run:
  """Loads one run dir; the label defaults to its config name, else the dir name."""
  run_dir = pathlib.Path(run_dir)
  config = records.read_json_object(run_dir / CONFIG_FILE, warn=True) or {}
  metrics, events = _read_metrics(run_dir / METRICS_FILE)
  summary = records.read_summary(run_dir, warn=True)
  if summary and metrics and num(summary.get('step')) is not None \
      and metrics[-1]['step'] > summary['step']:
    summary = None   # left by an earlier, preempted session; the resumed run is still going
  if label is None:
    name = config.get('name')
    label = name if isinstance(name, str) and name else run_dir.resolve().name
  return Run(label=label, dir=run_dir, config=config, metrics=metrics,
             summary=summary, events=events)


def find_run_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  """Every directory under `root` (itself included) holding a metrics.jsonl, by relative path."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    is_run = METRICS_FILE in filenames
    if is_run:
      found.append(pathlib.Path(dirpath))
    # Hidden dirs and a run's checkpoints (many files, never runs) are not searched.
    dirnames[:] = [d for d in dirnames
                   if not d.startswith('.') and not (is_run and d == 'checkpoints')]
  return sorted(found, key=lambda d: d.relative_to(root).parts)


def load_runs(path: str | os.PathLike) -> list[Run]:
  """Loads a run dir, or every run below a dir of runs (e.g. a sweep), sorted by path.

  Labels are paths relative to `path`; a run at `path` itself is labelled by its
  config name. Raises ValueError naming `path` when no run is found.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise ValueError(f'{root}: no such directory (expected a run dir or a dir of runs)')
  dirs = find_run_dirs(root)
  if not dirs:
    raise ValueError(f'no runs found under {root}: no directory there holds a {METRICS_FILE} '
                     f'(a run dir holds config.json, {METRICS_FILE} and summary.json)')
  return [load_run(d, None if d == root else d.relative_to(root).as_posix()) for d in dirs]


def _last(records: list[dict], key: str):
  for r in reversed(records):
    v = num(r.get(key))
    if v is not None:
      return v
  return None


def _first(*values):
  for v in values:
    if num(v) is not None:
      return v
  return None


def summarize(run: Run) -> dict[str, Any]:
  """One table row: keys are the runs.csv columns (`COLUMNS`), None where unknown."""
  s = run.summary or {}
  m = run.metrics
  tps = [v for r in m if (v := num(r.get('tokens_per_sec'))) is not None and math.isfinite(v)]
  return {
      'run': run.label,
      'status': run.status,
      'steps': _first(s.get('step'), _last(m, 'step')),
      'final_train_loss': _first(s.get('final_loss'), _last(m, 'loss')),
      'final_val_loss': _first(s.get('final_val_loss'), _last(m, 'val_loss')),
      'val_tokens': _first(s.get('val_tokens'), _last(m, 'val_tokens')),
      'tokens': _first(s.get('tokens'), _last(m, 'tokens')),
      'flops': _first(s.get('flops'), _last(m, 'flops')),
      'tokens_per_sec': statistics.median(tps) if tps else None,
      'n_params': num(s.get('n_params')),
  }


# ----------------------------------------------------------------------------- seeds

def group_seeds(runs: list[Run]) -> dict[str, dict[int | None, Run]]:
  """{method: {seed offset k (None without seeds): run}}, methods in the order of their
  first run. Seed k of every method shares its data order, so k pairs runs across
  methods."""
  out: dict[str, dict[int | None, Run]] = {}
  for run in runs:
    method, seed = method_and_seed(run.label)
    out.setdefault(method, {})[seed] = run
  return out


def aligned(runs: list[Run], key: str, x: str = 'step') -> tuple[list[float], list[list[float]]]:
  """(xs, one ys list per run) at the steps where every run logged `key` (the runs of
  one method over seeds log at the same steps); xs are the first run's `x` values."""
  if not runs:
    return [], []
  by_step = [dict(zip(*run.series(key, 'step'))) for run in runs]
  x_of = {r['step']: num(r.get(x)) for r in runs[0].metrics}
  common = sorted(s for s in set.intersection(*map(set, by_step)) if x_of.get(s) is not None)
  return [float(x_of[s]) for s in common], [[d[s] for s in common] for d in by_step]
