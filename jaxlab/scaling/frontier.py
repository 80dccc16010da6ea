"""The compute frontier L(C) = E + A / C^gamma of one family's ladder, and growth's
effective compute multiplier against it.

`fit_frontier_curves` (what `launch.py fit` uses) builds the envelope as Hoffmann et
al.'s approach 1 does: at `ENVELOPE_POINTS` log-spaced FLOPs values across the runs, the
lowest val loss any run's evaluation curve reaches there (interpolated in log C between
its evaluations), and fits the law to it with the machinery of jaxlab.scaling.laws
(log-sum-exp, Huber 1e-3, grid starts). The envelope's points are not independent, so
its interval is a bootstrap over runs: the runs are resampled with replacement and the
envelope rebuilt and refitted. `fit_frontier` fits points directly (envelope=True keeps
the Pareto front of (C, L): no point with at most its FLOPs has a lower loss), with a
bootstrap over points.

With seeds, the envelope is that of each cell's seed-mean curve and the bootstrap resamples
seeds within cells (`fit_frontier_curves`), every refit started as laws.refit_starts says
(E freed from its boundary): on simulated ladders of the study's shape the 95% intervals
of the multiplier, gamma, E, A and the frontier's predictions covered 88-100%
(bench/frontier_coverage.py, docs/scaling.md; a bootstrap over whole runs, and refits
stuck at E = 0, had covered gamma in 57-61%).

`compute_multiplier(scratch, method, flops)`: the FLOPs scratch's frontier needs to reach
the loss the method's frontier reaches at C, over C. Above 1: the method saves compute
(1.25 = scratch needs 25% more). Its interval refits both frontiers on each bootstrap
resample.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxlab.scaling import laws

# The interval of the frontier's parameters and predictions (FrontierFit.interval).
INTERVAL = 'percentile'

def frontier_points(flops: Sequence[float], loss: Sequence[float]) -> list[int]:
  """Indices of the points on the lower envelope of (flops, loss), by FLOPs."""
  order = sorted(range(len(flops)), key=lambda i: (flops[i], loss[i]))
  out, best = [], math.inf
  for i in order:
    if loss[i] < best:
      out.append(i)
      best = loss[i]
  return out


def _inverse(theta: np.ndarray, loss: float) -> float:
  """C at which E + A / C^gamma = loss (nan at or below E, or for gamma <= 0)."""
  a, gamma, e = (float(v) for v in theta)
  if gamma <= 0 or loss <= math.exp(e):
    return math.nan
  return math.exp((a - math.log(loss - math.exp(e))) / gamma)


@dataclasses.dataclass(frozen=True)
class FrontierFit:
  """L(C) = E + A / C^gamma through `n_points` points of the envelope."""
  E: float
  A: float
  gamma: float
  n_points: int
  residual_sd: float
  theta: np.ndarray = dataclasses.field(repr=False, compare=False)
  boot: laws.Bootstrap | None = dataclasses.field(default=None, repr=False, compare=False)
  # The grid's runner-up optima: where bootstrap refits start, besides theta.
  refit_starts: tuple = dataclasses.field(default=(), repr=False, compare=False)

  def predict(self, flops: float) -> float:
    return float(math.exp(laws.predict_log(self.theta, np.log([[flops]]))[0]))

  def flops_for(self, loss: float) -> float:
    """The FLOPs at which the frontier reaches `loss` (nan if it never does)."""
    return _inverse(self.theta, loss)

  def interval(self, name: str, kind: str = INTERVAL) -> tuple[float, float]:
    get = {'E': lambda t: math.exp(t[2]), 'A': lambda t: math.exp(t[0]),
           'gamma': lambda t: float(t[1])}
    if name not in get:
      raise ValueError(f'{name!r}: expected one of E, A, gamma')
    return self.boot.interval(get[name], kind=kind) if self.boot else (math.nan, math.nan)

  def predict_interval(self, flops: float, kind: str = INTERVAL) -> tuple[float, float]:
    if not self.boot:
      return math.nan, math.nan
    return self.boot.interval(lambda t: math.exp(laws.predict_log(t, np.log([[flops]]))[0]),
                              kind=kind)


def fit_frontier(flops: Sequence[float], loss: Sequence[float], *,
                 bootstrap: int = laws.BOOTSTRAP, seed: int = 0,
                 envelope: bool = True) -> FrontierFit:
  """Fits L(C) = E + A / C^gamma to the envelope of the points (all points with
  envelope=False). Raises ValueError when fewer than 4 points remain."""
  c = laws.check_points('flops', flops)
  y = laws.check_points('loss', loss)
  if len(c) != len(y):
    raise ValueError(f'flops and loss differ in length ({len(c)}, {len(y)})')
  keep = frontier_points(list(c), list(y)) if envelope else list(range(len(c)))
  if len(keep) < 4:
    raise ValueError(f'the frontier has 3 parameters: it needs at least 4 points on the '
                     f'lower envelope of loss vs FLOPs (got {len(keep)} of {len(c)} runs)')
  log_x, log_y = np.log(c[keep])[:, None], np.log(y[keep])
  best = laws.fit_theta(log_x, log_y, laws.grid(1), keep=1 + laws.REFIT_STARTS)
  theta = best[0][1]
  runners = tuple(t for _, t in best[1:])
  boot = None
  if bootstrap:
    boot = laws.bootstrap(log_x, log_y, theta, runners, reps=bootstrap, seed=seed)
  res = log_y - laws.predict_log(theta, log_x)
  return FrontierFit(E=math.exp(theta[2]), A=math.exp(theta[0]), gamma=float(theta[1]),
                     n_points=len(keep), residual_sd=float(np.std(res, ddof=1)), theta=theta,
                     boot=boot, refit_starts=runners)


ENVELOPE_POINTS = 30


def envelope(curves: Sequence[tuple[Sequence[float], Sequence[float]]],
             points: int = ENVELOPE_POINTS) -> tuple[np.ndarray, np.ndarray]:
  """(C, L) at `points` log-spaced FLOPs from the smallest last evaluation of a run to the
  largest: the lowest loss of any curve that spans C there."""
  cs = [np.asarray(c, float) for c, _ in curves]
  ls = [np.asarray(l, float) for _, l in curves]
  grid_c = np.geomspace(min(c[-1] for c in cs), max(c[-1] for c in cs), points)
  best = np.full(points, np.inf)
  for c, l in zip(cs, ls):
    inside = (grid_c >= c[0]) & (grid_c <= c[-1])
    best[inside] = np.minimum(best[inside], np.interp(np.log(grid_c[inside]), np.log(c), l))
  keep = np.isfinite(best)
  return grid_c[keep], best[keep]


def _cells(curves, groups) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per cell (the runs sharing a group label, in order of first appearance): the first
  run's evaluation FLOPs within the span every run of the cell covers, and the runs'
  losses there (runs x evaluations, interpolated in log C)."""
  members: dict = {}
  for (c, l), g in zip(curves, groups):
    members.setdefault(g, []).append((np.asarray(c, float), np.asarray(l, float)))
  out = []
  for runs in members.values():
    lo, hi = max(c[0] for c, _ in runs), min(c[-1] for c, _ in runs)
    grid = runs[0][0][(runs[0][0] >= lo) & (runs[0][0] <= hi)]
    out.append((grid, np.array([np.interp(np.log(grid), np.log(c), l) for c, l in runs])))
  return out


def fit_frontier_curves(curves: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                        groups: Sequence | None = None, bootstrap: int = laws.BOOTSTRAP,
                        seed: int = 0) -> FrontierFit:
  """The frontier through the envelope of runs' (FLOPs, val loss) curves (each with
  increasing FLOPs).

  `groups` labels the runs of one cell (one config over seeds). When every cell has at
  least 2 runs, the envelope is that of the cells' seed-mean curves, and the interval a
  bootstrap stratified by cell: each refit resamples the seeds within every cell, so
  every (size, budget) cell is in every refit, and the spread of every derived quantity
  (E, gamma, a prediction, the multiplier) around the fit's value is widened by
  sqrt(n / (n - 1)) for n seeds per cell (a resample of n values has (n - 1)/n of their
  variance). Otherwise (no seeds) the bootstrap resamples whole runs. The
  coverage of both is measured in bench/frontier_coverage.py (docs/scaling.md)."""
  curves = [(c, l) for c, l in curves if len(c)]
  if len(curves) < 2:
    raise ValueError(f'a frontier needs the curves of at least 2 runs (got {len(curves)})')
  cells = _cells(curves, groups) if groups is not None else []
  seeded = bool(cells) and min(len(l) for _, l in cells) >= 2
  points = envelope([(g, l.mean(axis=0)) for g, l in cells] if seeded else curves)
  fit = fit_frontier(*points, bootstrap=0, envelope=False)
  if not bootstrap:
    return fit
  # as fit_frontier's own refits start (with E freed from its boundary, laws.refit_starts)
  starts = laws.refit_starts(fit.theta, fit.refit_starts, np.log(points[1]))
  rng = np.random.default_rng(seed)
  thetas = []
  for _ in range(bootstrap):
    if seeded:
      bc, by = envelope([(g, l[rng.integers(0, len(l), len(l))].mean(axis=0)) for g, l in cells])
    else:
      bc, by = envelope([curves[i] for i in rng.integers(0, len(curves), len(curves))])
    if len(bc) < 4:
      continue
    thetas.append(laws.fit_theta(np.log(bc)[:, None], np.log(by), starts)[0][1])
  n = min(len(l) for _, l in cells) if seeded else 0
  widen = math.sqrt(n / (n - 1)) if seeded else 1.0
  return dataclasses.replace(fit, boot=laws.Bootstrap(np.array(thetas), widen, fit.theta))


def _multiplier(scratch_theta, method_theta, flops: float) -> float:
  reached = math.exp(laws.predict_log(method_theta, np.log([[flops]]))[0])
  return _inverse(scratch_theta, reached) / flops


def compute_multiplier(scratch: FrontierFit, method: FrontierFit, flops: float,
                       kind: str = 'percentile') -> tuple[float, float, float]:
  """(multiplier, low, high) at `flops`: scratch's FLOPs to reach the method's loss at
  `flops`, over `flops`. The interval pairs the b-th refit of each frontier: both
  bootstraps use the same seed, so they pick the same seeds in the same cells (or the
  same positions among the runs, sorted by label), which pairs the runs of a ladder whose
  methods share rungs and seeds. inf where the method's loss lies below scratch's irreducible loss E (scratch
  never reaches it)."""
  est = _multiplier(scratch.theta, method.theta, flops)
  if not (scratch.boot and method.boot):
    return est, math.nan, math.nan
  vals = np.array([_multiplier(s, m, flops)
                   for s, m in zip(scratch.boot.thetas, method.boot.thetas)])
  vals = np.where(np.isnan(vals), math.inf, vals)   # never reached: an unbounded saving
  with np.errstate(invalid='ignore'):               # inf stays inf
    vals = scratch.boot.spread(vals, est)
  return (est, *laws.quantile_interval(vals, est, kind=kind))
