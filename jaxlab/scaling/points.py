"""A sweep's runs as the points a law is fitted to, read through jaxlab.rundir.read (the
report's reader; no jax).

Per run: N (summary.json's n_params, every parameter, Chinchilla's count; or
n_params_non_embedding, without the token embedding and the output head, Kaplan et al.'s
and Step Law's), D (tokens trained), C (the run's own FLOPs accounting, summary.json's
flops), the final val loss and the curve of val loss vs FLOPs, lr, the batch in tokens, the growth method ('none' for a run
from scratch) and the seed offset of a `<label>/seed<k>` run.

`MissingData` is what a directory lacks to support a law: the command line prints it as
one line and exits 2.
"""
from __future__ import annotations

import dataclasses
import math
import os

from jaxlab.rundir.layout import method_and_seed
from jaxlab.rundir.read import Run, load_runs, num

COUNTS = {'all': 'n_params', 'non_embedding': 'n_params_non_embedding'}


class MissingData(ValueError):
  """The runs cannot support the law asked for."""


@dataclasses.dataclass(frozen=True)
class Point:
  label: str
  method: str                 # growth.method; 'none' for a run from scratch
  seed: int | None
  n_params: float
  n_tokens: float
  flops: float
  loss: float
  lr: float | None
  batch: float | None         # tokens per step
  curve: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())   # (FLOPs, val loss) per eval


def _config(run: Run, section: str, key: str):
  part = run.config.get(section)
  return part.get(key) if isinstance(part, dict) else None


def point(run: Run, count: str = 'all') -> Point:
  """One finished run as a point; raises MissingData naming the run and the field."""
  s = run.summary or {}
  field = COUNTS[count]
  values = {'N': num(s.get(field)), 'D': num(s.get('tokens')), 'C': num(s.get('flops')),
            'final val loss': num(s.get('final_val_loss'))}
  gone = [k for k, v in values.items() if v is None or not v > 0]
  if gone:
    hint = (f' (summary.json has no {field}: the run predates it; use --params all)'
            if 'N' in gone and count == 'non_embedding' and s.get(field) is None else '')
    raise MissingData(f'{run.dir}: summary.json gives no {", ".join(gone)}{hint}')
  seed = method_and_seed(run.label)[1]
  batch, seq = num(_config(run, 'train', 'batch_size')), num(_config(run, 'data', 'seq_len'))
  growth = _config(run, 'growth', 'method')
  return Point(label=run.label, method=growth if isinstance(growth, str) else 'none',
               seed=seed, n_params=float(values['N']), n_tokens=float(values['D']),
               flops=float(values['C']), loss=float(values['final val loss']),
               lr=num(_config(run, 'optim', 'lr')),
               batch=float(batch * seq) if batch and seq else None,
               curve=_curve(run))


def _curve(run: Run) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The run's evaluations as (FLOPs, val loss), FLOPs > 0 and increasing, finite losses."""
  xs, ys = run.series('val_loss', 'flops')
  pairs = [(x, y) for x, y in zip(xs, ys) if x > 0 and math.isfinite(y)]
  return tuple(x for x, _ in pairs), tuple(y for _, y in pairs)


def read_points(path: str | os.PathLike, count: str = 'all') -> list[Point]:
  """Every run below `path` as a point. Raises MissingData when there is no run, or a
  run has not completed (a law is fitted to finished runs only)."""
  if count not in COUNTS:
    raise MissingData(f'--params {count!r}: expected one of {", ".join(COUNTS)}')
  try:
    runs = load_runs(path)
  except ValueError as e:
    raise MissingData(str(e)) from None
  unfinished = [r.label for r in runs if r.status != 'completed']
  if unfinished:
    more = f' and {len(unfinished) - 3} more' if len(unfinished) > 3 else ''
    raise MissingData(f'{path}: {len(unfinished)} of {len(runs)} run(s) have not completed '
                      f'({", ".join(unfinished[:3])}{more}); a law is fitted to finished runs')
  return [point(r, count) for r in runs]
