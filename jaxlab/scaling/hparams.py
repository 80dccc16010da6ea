"""Hyperparameter laws from a sweep over lr (and batch size) at several (N, D), in Step
Law's form (Li et al. 2025): lr*(N, D) = a N^alpha D^beta and B*(D) = b D^gamma.

Per cell -- the runs that share N, D and the other hyperparameter -- each seed's optimum
is the parabola through its best point and their neighbours in log2 of the swept value
(jaxlab.report.transfer.seed_optimum, the transfer report's rule); the cell's optimum is
the mean over seeds of log2. A cell whose best point is at the edge of its grid has no
bracketed optimum and is left out (and listed). The law is least squares in log space
(jaxlab.scaling.powerlaw), printed beside Step Law's published constants.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxlab.config import step_law
from jaxlab.report.transfer import seed_optimum
from jaxlab.scaling.powerlaw import PowerLaw, fit_power

STEP_LAW = {'lr': (step_law.LR_COEF, (step_law.LR_N_EXP, step_law.LR_D_EXP)),
            'batch': (step_law.BATCH_COEF, (step_law.BATCH_D_EXP,))}


@dataclasses.dataclass(frozen=True)
class Cell:
  n_params: float
  n_tokens: float
  other: float                # the hyperparameter held fixed in the cell
  optimum: float | None       # None: at the edge of the grid for some seed
  seeds: int


@dataclasses.dataclass(frozen=True)
class HparamPoint:
  """One run: N, D, lr, batch (tokens), seed, final val loss."""
  n_params: float
  n_tokens: float
  lr: float
  batch: float
  seed: int | None
  loss: float


def cells(points: Sequence[HparamPoint], swept: str) -> list[Cell]:
  """The optimum of `swept` ('lr' or 'batch') per (N, D, the other one)."""
  other = 'batch' if swept == 'lr' else 'lr'
  by_cell: dict[tuple, dict] = {}
  for p in points:
    key = (p.n_params, p.n_tokens, getattr(p, other))
    by_cell.setdefault(key, {}).setdefault(p.seed, []).append((getattr(p, swept), p.loss))
  out = []
  for (n, d, o), seeds in sorted(by_cell.items()):
    if len({x for curve in seeds.values() for x, _ in curve}) < 3:
      continue   # not a sweep of this hyperparameter
    optima = [seed_optimum(sorted(curve)) for curve in seeds.values()]
    edge = any(e for _, e in optima)
    out.append(Cell(n, d, o, None if edge else float(2 ** np.mean([v for v, _ in optima])),
                    len(seeds)))
  return out


@dataclasses.dataclass(frozen=True)
class HparamFit:
  swept: str                  # 'lr' or 'batch'
  cells: tuple[Cell, ...]
  law: PowerLaw               # lr: in N and D; batch: in D
  published: tuple[float, tuple[float, ...]]


def fit_hparams(points: Sequence[HparamPoint], swept: str = 'lr') -> HparamFit:
  """The law of the optimal `swept` value. Raises ValueError when the sweep cannot
  support it (no cell sweeps it over 3 values, or the bracketed optima do not vary in
  N and D independently)."""
  if swept not in STEP_LAW:
    raise ValueError(f'swept={swept!r}: expected lr or batch')
  found = cells(points, swept)
  good = [c for c in found if c.optimum is not None]
  if not found:
    raise ValueError(f'no (N, D) cell sweeps {swept} over 3 or more values')
  ys = [c.optimum for c in good]
  try:
    if swept == 'lr':
      law = fit_power(ys, [c.n_params for c in good], [c.n_tokens for c in good],
                      names=['N', 'D'])
    else:
      law = fit_power(ys, [c.n_tokens for c in good], names=['D'])
  except ValueError as e:
    edges = len(found) - len(good)
    raise ValueError(f'{e} ({len(good)} cell(s) with a bracketed optimum'
                     f'{f", {edges} at the edge of their grid" if edges else ""})') from None
  return HparamFit(swept, tuple(found), law, STEP_LAW[swept])
