"""Sums of power laws with an irreducible term, fitted as Hoffmann et al. (2022, approach
3) fitted L(N, D) and as Besiroglu et al. (2024) refitted it:

  log L_hat = log-sum-exp(a_1 - alpha_1 log x_1, ..., a_k - alpha_k log x_k, e)
  i.e.  L_hat = E + sum_j A_j / x_j^alpha_j,   E = exp(e), A_j = exp(a_j)

minimising the Huber loss (delta = 1e-3) of log L_hat - log L with (L-)BFGS from a grid of
starting points and keeping the best optimum. Hoffmann et al.'s grid has 4,500 points for
L(N, D); the quasi-Newton search (`METHOD`) starts from the `GRID_KEEP` = 64 of them with
the lowest loss (the whole grid costs minutes; on the laws of tests/test_scaling.py both
reach the same optimum, docs/scaling.md). `fit_chinchilla` is the k = 2 case
(x = N, D); the frontier L(C) = E + A / C^gamma is k = 1 (`fit_frontier`).

Intervals: a bootstrap over points (Besiroglu et al.'s): the points are resampled with
replacement and refitted, each refit started from the full fit's optimum and from the
best few optima of the grid; a parameter's interval is the 2.5th and 97.5th percentile
of its refits. Their coverage, measured on data drawn from known laws: docs/scaling.md.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np

HUBER_DELTA = 1e-3
CONFIDENCE = 0.95
BOOTSTRAP = 200
# Hoffmann et al.'s grid of starting points (Besiroglu et al. kept it): exponents in
# {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, each a_j in {0, 5, ..., 25}.
GRID_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
REFIT_STARTS = 1   # grid optima (besides the full fit) a bootstrap refit starts from
GRID_KEEP = 64
# The quasi-Newton method. Hoffmann et al. name L-BFGS; with 5 parameters limited memory
# buys nothing, and scipy's BFGS reaches the same optima (tests/test_scaling.py) at about
# a fifteenth of L-BFGS-B's cost per evaluation here (0.25 vs 3.3 ms).
METHOD = 'BFGS'


def objective(theta: np.ndarray, log_x: np.ndarray, log_y: np.ndarray, delta: float):
  """(Huber loss, gradient) of theta = (a_1..a_k, alpha_1..alpha_k, e)."""
  k = log_x.shape[1]
  a, alpha, e = theta[:k], theta[k:2 * k], theta[2 * k]
  terms = np.concatenate([a - alpha * log_x, np.full((len(log_y), 1), e)], axis=1)
  top = terms.max(axis=1, keepdims=True)
  w = np.exp(terms - top)
  total = w.sum(axis=1, keepdims=True)
  pred = top[:, 0] + np.log(total[:, 0])
  w /= total
  r = pred - log_y
  small = np.abs(r) <= delta
  loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
  dr = np.clip(r, -delta, delta)
  grad_a = (dr[:, None] * w[:, :k]).sum(axis=0)
  grad_alpha = -(dr[:, None] * w[:, :k] * log_x).sum(axis=0)
  grad_e = (dr * w[:, k]).sum()
  return loss, np.concatenate([grad_a, grad_alpha, [grad_e]])


def _minimise(start, log_x, log_y, delta):
  # Imported here: scipy.optimize takes about a second to import, and every launch.py
  # command imports this package (for `fit`'s choices), `show` and `run` included.
  from scipy import optimize
  # Scaled by 1/delta so that the objective is O(residuals) and the tolerance bites.
  res = optimize.minimize(lambda t: tuple(v / delta for v in objective(t, log_x, log_y, delta)),
                          np.asarray(start, float), jac=True, method=METHOD,
                          options={'gtol': 1e-7})
  return res.fun * delta, res.x


def grid(k: int) -> list[np.ndarray]:
  """The starting points for k power-law terms."""
  out = []
  for a in itertools.product(GRID_A, repeat=k):
    for alpha in itertools.product(GRID_EXPONENTS, repeat=k):
      for e in GRID_E:
        out.append(np.array([*a, *alpha, e]))
  return out


def fit_theta(log_x: np.ndarray, log_y: np.ndarray, starts: Sequence[np.ndarray],
              delta: float = HUBER_DELTA, keep: int = 1) -> list[tuple[float, np.ndarray]]:
  """The `keep` best distinct optima (loss, theta) reached from `starts`, best first.
  Exponents are not bounded; a fit with a negative exponent says the data do not
  support a decreasing law, and the fit's caller reports it."""
  starts = list(starts)
  if len(starts) > GRID_KEEP:
    first = [objective(s, log_x, log_y, delta)[0] for s in starts]
    starts = [starts[i] for i in np.argsort(first, kind='stable')[:GRID_KEEP]]
  found = sorted((_minimise(s, log_x, log_y, delta) for s in starts), key=lambda t: t[0])
  out: list[tuple[float, np.ndarray]] = []
  for loss, theta in found:
    if all(np.abs(theta - t).max() > 1e-3 for _, t in out):
      out.append((loss, theta))
    if len(out) == keep:
      break
  return out


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """Refits on resampled points: `thetas[b]` the b-th refit's parameters. `widen` > 1
  stretches every derived quantity's refit values away from its value at `center` (the
  fit) by that factor before the percentiles are read: the small-sample correction of a
  resample of n seeds, sqrt(n / (n - 1)) (jaxlab.scaling.frontier)."""
  thetas: np.ndarray
  widen: float = 1.0
  center: np.ndarray | None = None

  def spread(self, vals: np.ndarray, at_center: float) -> np.ndarray:
    return vals if self.widen == 1.0 else at_center + self.widen * (vals - at_center)

  def interval(self, f: Callable[[np.ndarray], float], confidence: float = CONFIDENCE,
               kind: str = 'percentile') -> tuple[float, float]:
    """f's interval from the refits (nan when there are none): 'percentile' reads the
    2.5th and 97.5th percentiles of f over the refits; 'basic' reflects them about the
    fit's value (2 f(fit) - q_hi, 2 f(fit) - q_lo), which moves the interval against a
    bias the refits repeat (needs `center`)."""
    if not len(self.thetas):
      return math.nan, math.nan
    vals = np.array([f(t) for t in self.thetas], float)
    at = f(self.center) if self.center is not None else math.nan
    return quantile_interval(self.spread(vals, at), at, confidence, kind)


def quantile_interval(vals: np.ndarray, at: float, confidence: float = CONFIDENCE,
                      kind: str = 'percentile') -> tuple[float, float]:
  """The bootstrap interval of refit values `vals` of a quantity whose fitted value is
  `at` (Bootstrap.interval's kinds; nan refits dropped)."""
  vals = vals[~np.isnan(vals)]
  if not len(vals):
    return math.nan, math.nan
  q = 100 * (1 - confidence) / 2
  lo, hi = float(np.percentile(vals, q)), float(np.percentile(vals, 100 - q))
  if kind == 'percentile':
    return lo, hi
  if kind == 'basic':
    return 2 * at - hi, 2 * at - lo
  raise ValueError(f'interval kind {kind!r}: expected percentile or basic')


# A fit whose irreducible term is this far below the lowest loss has put E on its
# boundary (e -> -inf): see `refit_starts`.
E_AT_BOUNDARY = math.log(1e3)


def refit_starts(theta: np.ndarray, extra: Sequence[np.ndarray],
                 log_y: np.ndarray) -> list[np.ndarray]:
  """Where a bootstrap refit starts: the fit's optimum, the grid's runner-up optima, and,
  when the fit put E on its boundary (E = exp(e) -> 0), that optimum with E at half the
  lowest loss. From e far below the data the gradient in e vanishes, so a refit started
  only there keeps E = 0 whatever its resample prefers: measured on simulated ladders,
  the frontier's gamma interval then covered 55-61% (bench/frontier_coverage.py)."""
  out = [theta, *extra]
  if theta[-1] < float(np.min(log_y)) - E_AT_BOUNDARY:
    out.append(np.concatenate([theta[:-1], [float(np.min(log_y)) - math.log(2.0)]]))
  return out


def bootstrap(log_x: np.ndarray, log_y: np.ndarray, theta: np.ndarray,
              extra_starts: Sequence[np.ndarray], *, reps: int, seed: int,
              delta: float = HUBER_DELTA, groups: np.ndarray | None = None) -> Bootstrap:
  """Refits on `reps` resamples of the points (of whole groups when `groups` labels them,
  e.g. one group per (size, budget) cell resampled within each method), each started
  from `refit_starts`."""
  rng = np.random.default_rng(seed)
  n = len(log_y)
  starts = refit_starts(theta, extra_starts, log_y)
  thetas = []
  for _ in range(reps):
    if groups is None:
      idx = rng.integers(0, n, n)
    else:
      labels = np.unique(groups)
      pick = rng.choice(labels, len(labels))
      idx = np.concatenate([np.flatnonzero(groups == g) for g in pick])
    best = fit_theta(log_x[idx], log_y[idx], starts, delta)
    thetas.append(best[0][1])
  return Bootstrap(np.array(thetas))


def predict_log(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
  """log L_hat at the rows of log_x."""
  k = log_x.shape[1]
  terms = np.concatenate([theta[:k] - theta[k:2 * k] * log_x,
                          np.full((len(log_x), 1), theta[2 * k])], axis=1)
  top = terms.max(axis=1, keepdims=True)
  return top[:, 0] + np.log(np.exp(terms - top).sum(axis=1))


def check_points(name: str, values: Sequence[float]) -> np.ndarray:
  """`values` as a float array; raises ValueError naming `name` unless all are finite
  and > 0 (every quantity a power law is fitted to is)."""
  arr = np.asarray(values, float)
  if arr.ndim != 1 or not len(arr):
    raise ValueError(f'{name}: expected a non-empty list of numbers')
  bad = ~(np.isfinite(arr) & (arr > 0))
  if bad.any():
    raise ValueError(f'{name}: {int(bad.sum())} value(s) are not finite numbers > 0 '
                     f'(first: {arr[bad][0]!r})')
  return arr
