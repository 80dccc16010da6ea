"""Where a val-loss curve first reaches a target: the FLOPs-to-target estimator of the
savings table (jaxlab.report.savings), and its confidence interval.

A curve is known at its evaluations only. Between them it is read off the cubic through
the four evaluations around the point, in log FLOPs (Lagrange interpolation; three or
two points where a segment has fewer), never across a growth event: the loss jumps
there, so each segment between events is interpolated on its own. The interpolant is a
fixed linear map of the evaluations (`interpolation_weights`), which the interval below
needs, and it is not smoothed: the baseline's end and the method's curve are read alike.
(A moving average cut short at the end credited the baseline's last evaluation with the
mean of its last two, a target above its final level that the method reached early: the
savings were biased toward growth by 2-5 points.) On noiseless synthetic curves at the
studies' evaluation grids (power laws, and loss curves under jaxlab's warmup + cosine or
linear schedules, true savings 0-40%) the saving and the speedup come out within 0.25
percentage points (tests/test_savings_estimator.py).

The estimate: the first FLOPs at which the seed-mean method curve reaches the
baseline's seed-mean final val loss. Its interval is a calibration interval (inverse
prediction): seed k gives D_k(F) = method_k(F) - baseline_k(final), a linear function of
seed k's evaluations; at the estimate F^ the paired t-interval of mean D has half-width
h = t_{0.975, n-1} s(F^) / sqrt(n), and the interval holds the candidates F at which the
seed-mean curve lies within h of the target, |mean D(F)| <= h, from the first to the
last. Read at the true crossing F*, mean D(F*) is pure seed noise and s(F^) is close to
s(F*), so the interval holds F* about as often as the t-interval holds 0. (Testing each F
with its own s(F) instead -- the pointwise inverted t-test -- leaves gaps wherever the few
seed curves happen to meet and s(F) dips; spanning them covered 99.0% at 3 seeds, taking
only the run around the estimate 90%: docs/statistics.md.) Where the interval reaches the
first or the last of the method's evaluations the bound is open. Coverage, measured by
simulation from the studies' own seed noise: docs/statistics.md.
"""
from __future__ import annotations

import functools

import numpy as np

GRID = 4000   # candidate FLOPs (evenly in log FLOPs) at which the interval's test is made


def _segments(x_E: np.ndarray, breaks) -> np.ndarray:
  """Segment id of each evaluation: events at the given log FLOPs start a new segment."""
  return np.searchsorted(np.sort(np.asarray(breaks, dtype=np.float64)), x_E, side='right')


def interpolation_weights(x_E, xq_G, breaks=()) -> np.ndarray:
  """W (G x E): curve(xq) = W @ curve(x) (x and xq in log FLOPs), the cubic through the
  four evaluations around xq within its segment (fewer points where the segment has
  fewer); between the last evaluation before an event and the first after it, the
  straight line between the two."""
  x = np.asarray(x_E, dtype=np.float64)
  seg = _segments(x, breaks)
  xq_G = np.asarray(xq_G, dtype=np.float64)
  W = np.zeros((len(xq_G), len(x)))
  if len(x) == 1:
    W[:, 0] = 1.0
    return W
  for g, xq in enumerate(xq_G):
    j = int(np.clip(np.searchsorted(x, xq), 1, len(x) - 1))   # x[j - 1] <= xq <= x[j]
    if seg[j - 1] != seg[j]:
      idx = np.array([j - 1, j])
    else:
      members = np.flatnonzero(seg == seg[j])
      k = int(np.searchsorted(x[members], xq))
      lo = min(max(0, k - 2), max(0, len(members) - 4))
      idx = members[lo:lo + 4]
    xs = x[idx]
    for a, i in enumerate(idx):
      others = np.delete(xs, a)
      W[g, i] = np.prod((xq - others) / (xs[a] - others))
  return W


@functools.lru_cache(maxsize=64)
def _grid_weights(x: tuple, breaks: tuple) -> tuple[np.ndarray, np.ndarray]:
  """(the GRID candidates in log FLOPs, their interpolation weights) for one grid of
  evaluations; cached, as a study's seeds and a simulation's draws share it."""
  grid = np.linspace(x[0], x[-1], GRID)
  return grid, interpolation_weights(np.array(x), grid, breaks)


def _log_breaks(breaks) -> tuple:
  return tuple(float(np.log(b)) for b in breaks if b and b > 0)


def _first_below(values_G: np.ndarray) -> int | None:
  below = np.flatnonzero(values_G <= 0)
  return int(below[0]) if below.size else None


def crossing_flops(flops_E, curves_RxE, targets_R, breaks=()) -> np.ndarray:
  """The FLOPs at which each curve (a row, evaluated at `flops_E`) first reaches its
  target: nan where it never does. `breaks`: FLOPs of growth events (the curve is
  interpolated on each side of one separately). Resolution: 1 / GRID of the log-FLOPs
  span, then refined between the two candidates that bracket the crossing."""
  flops = np.asarray(flops_E, dtype=np.float64)
  y = np.atleast_2d(np.asarray(curves_RxE, dtype=np.float64))
  target = np.broadcast_to(np.asarray(targets_R, dtype=np.float64), (y.shape[0],))
  keep = flops > 0
  flops, y = flops[keep], y[:, keep]
  out = np.full(y.shape[0], np.nan)
  if y.shape[1] == 0:
    return out
  x = np.log(flops)
  lb = _log_breaks(breaks)
  if len(x) == 1:
    out[(y[:, 0] <= target)] = flops[0]
    return out
  grid, W = _grid_weights(tuple(x), lb)
  for r in range(y.shape[0]):
    if not np.all(np.isfinite(y[r])):
      continue
    diff = W @ y[r] - target[r]
    g = _first_below(diff)
    if g is None:
      continue
    if g == 0:
      out[r] = flops[0]
      continue
    a, b = grid[g - 1], grid[g]          # diff(a) > 0 >= diff(b): bisect between them
    for _ in range(40):
      m = (a + b) / 2
      if interpolation_weights(x, [m], lb)[0] @ y[r] - target[r] > 0:
        a = m
      else:
        b = m
    f = np.exp((a + b) / 2)
    first = flops[np.flatnonzero(y[r] <= target[r])]   # an evaluation already there
    if first.size and f >= first[0] * (1 - 1e-9):       # bounds it; at it, it is exact
      f = first[0]
    out[r] = f
  return out


def _paired_gaps(flops_E, method_SxE, base_final_S, breaks):
  """(estimate, log-FLOPs grid G, seed-mean gap G, its standard error at the estimate):
  seed k's method curve minus its baseline final, read on the grid; None when fewer than
  two seeds or evaluations leave no spread to read."""
  flops = np.asarray(flops_E, dtype=np.float64)
  M = np.asarray(method_SxE, dtype=np.float64)
  b = np.asarray(base_final_S, dtype=np.float64)
  keep = flops > 0
  flops, M = flops[keep], M[:, keep]
  n = M.shape[0]
  estimate = float(crossing_flops(flops, M.mean(axis=0)[None], [b.mean()], breaks)[0])
  if n < 2 or len(flops) < 2:
    return estimate, None
  grid, W = _grid_weights(tuple(np.log(flops)), _log_breaks(breaks))
  D = M @ W.T - b[:, None]        # S x G: seed k's method curve minus its baseline final
  at = GRID - 1 if not np.isfinite(estimate) else int(np.argmin(np.abs(grid - np.log(estimate))))
  return estimate, (grid, D.mean(axis=0), D[:, at].std(ddof=1) / np.sqrt(n), n)


def crossing_interval(flops_E, method_SxE, base_final_S, t_crit: float, breaks=()):
  """(estimate, lo, hi) in FLOPs for paired seeds: the seed-mean method curve's first
  crossing of the seed-mean baseline final, and the calibration interval described in the
  module docstring (critical value `t_crit`, n - 1 degrees of freedom). lo = 0 / hi = inf
  where it reaches the first / last evaluation. estimate nan when the mean never crosses
  (the spread is then read at the last evaluation, and the bounds say what the data
  cannot exclude)."""
  estimate, gaps = _paired_gaps(flops_E, method_SxE, base_final_S, breaks)
  if gaps is None:
    return estimate, np.nan, np.nan
  grid, mean_G, se, _ = gaps
  accept = np.abs(mean_G) <= t_crit * se
  if not accept.any():
    return estimate, estimate, estimate      # nan when the mean never crosses either
  i, j = np.flatnonzero(accept)[[0, -1]]
  lo = 0.0 if i == 0 else float(np.exp(grid[i]))
  hi = np.inf if j == GRID - 1 else float(np.exp(grid[j]))
  if not np.isfinite(estimate):
    return estimate, lo, hi
  return estimate, min(lo, estimate), max(hi, estimate)


def last_evaluation_t(flops_E, method_SxE, base_final_S, breaks=()) -> tuple[float, int]:
  """(|t|, n): the interval's test statistic at the method's last evaluation (the
  baseline's FLOPs, where 'no saving' puts the crossing): |mean gap there| over the
  standard error read at the estimate. crossing_interval's upper bound is open exactly
  when |t| <= t_crit, so a p-value from this t decides as the interval does (Holm's
  step-down over savings needs that). (nan, n) without spread."""
  _, gaps = _paired_gaps(flops_E, method_SxE, base_final_S, breaks)
  if gaps is None:
    return np.nan, np.asarray(method_SxE).shape[0]
  _, mean_G, se, n = gaps
  if se == 0:
    return (np.inf if mean_G[-1] != 0 else 0.0), n
  return float(abs(mean_G[-1]) / se), n
