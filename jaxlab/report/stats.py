"""Confidence intervals over seeds, for the report's tables (docs/statistics.md).

Two intervals, both 95% by default, both stated in every report that uses them:

* `t_interval(values)`: Student's t-interval of a mean over seeds,
  mean ± t_{(1+c)/2, n-1} · s / sqrt(n), s the sample standard deviation (n - 1 in the
  denominator). For a difference against a baseline the values are the per-seed
  differences (seed k of both runs shares its init offset and data order), so the
  noise common to a seed cancels: a paired t-interval.
* `bootstrap_interval(statistic, n)`: for statistics that are not a mean of smooth
  per-seed quantities -- the FLOPs at which a seed-mean val curve first crosses a target,
  and the saving computed from two such crossings. The seeds are resampled with
  replacement (one draw of seed indices, used for the method and its baseline alike, so
  the pairing is kept); the interval is the normal-theory one (Efron & Tibshirani 1993,
  §13.2), estimate ± t_{(1+c)/2, n-1} · se, with se the standard deviation of the
  statistic over the resamples times sqrt(n / (n - 1)). With that factor and the t
  quantile the interval is exactly `t_interval` when the statistic is a mean (the
  bootstrap variance of a mean is (n - 1) / n · s^2 / n). A percentile interval would
  be about 2.5x narrower at n = 3 (only 10 distinct resamples) and overstate what three
  seeds can show. For n <= EXACT_MAX all n^n resamples are enumerated (no randomness);
  above, RESAMPLES draws from a fixed generator. If the statistic is undefined for any
  resample (a curve that never reaches the target), the interval is unbounded.

`Interval.resolved`: the interval excludes zero. With n = 1 there is no interval (the
half-width is nan) and nothing is resolved.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from typing import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
EXACT_MAX = 6           # enumerate every resample up to n = 6 (6^6 = 46,656)
RESAMPLES = 4000        # random resamples above EXACT_MAX
T_METHOD = 'Student t-interval over seeds'
BOOTSTRAP_METHOD = ('normal-theory bootstrap over seeds resampled in pairs: estimate ± '
                    't_(0.975, n-1) x sd of the resamples x sqrt(n / (n - 1)), all n^n '
                    f'resamples for n <= {EXACT_MAX}')


@dataclasses.dataclass(frozen=True)
class Interval:
  """estimate ± half (half = nan: no interval, e.g. n = 1; inf: unbounded)."""
  estimate: float | None   # None: undefined (e.g. the mean curve never crosses)
  half: float
  n: int

  @property
  def lo(self) -> float:
    return math.nan if self.estimate is None else self.estimate - self.half

  @property
  def hi(self) -> float:
    return math.nan if self.estimate is None else self.estimate + self.half

  @property
  def resolved(self) -> bool:
    """True when the interval exists and excludes zero."""
    return (self.estimate is not None and math.isfinite(self.half)
            and abs(self.estimate) > self.half)

  def format(self, spec: str = '.4f', scale: float = 1.0, unit: str = '') -> str:
    """'3.1% ± 1.2%' ('± ?' for n = 1, '± inf' when unbounded; '—' when undefined)."""
    if self.estimate is None:
      return '—'
    text = format(self.estimate * scale, spec) + unit
    if math.isnan(self.half):
      return text
    half = 'inf' if math.isinf(self.half) else format(self.half * scale, spec.lstrip('+'))
    return f'{text} ± {half}{unit if math.isfinite(self.half) else ""}'


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
  """t_{(1+c)/2, n-1}: 4.303 for n = 3 at 95%."""
  return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
  """Mean ± t · s / sqrt(n) over the finite `values` (half nan when n < 2)."""
  xs = [float(v) for v in values if v is not None and math.isfinite(v)]
  if not xs:
    return Interval(None, math.nan, 0)
  mean = statistics.fmean(xs)
  if len(xs) < 2:
    return Interval(mean, math.nan, len(xs))
  half = t_quantile(len(xs), confidence) * statistics.stdev(xs) / math.sqrt(len(xs))
  return Interval(mean, half, len(xs))


def paired_differences(values: dict, baseline: dict) -> list[float]:
  """values[k] - baseline[k] for every key k (seed) both have with a finite value."""
  out = []
  for k in values:
    a, b = values[k], baseline.get(k)
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
      out.append(a - b)
  return out


def resamples(n: int, seed: int = 0) -> np.ndarray:
  """Bootstrap index draws, shape (R, n): all n^n of them for n <= EXACT_MAX, else
  RESAMPLES from numpy's PCG64 seeded with `seed`."""
  if n <= EXACT_MAX:
    return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
  return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))


def bootstrap_interval(statistic: Callable[[Sequence[int]], float | None], n: int,
                       confidence: float = CONFIDENCE) -> Interval:
  """`statistic(indices)` on the n seeds, with the normal-theory bootstrap interval
  described in the module docstring. `statistic` returns None (or a non-finite value)
  where it is undefined."""
  if n < 1:
    return Interval(None, math.nan, 0)
  estimate = statistic(tuple(range(n)))
  estimate = None if estimate is None or not math.isfinite(estimate) else float(estimate)
  if n < 2 or estimate is None:
    return Interval(estimate, math.nan, n)
  values = []
  for idx in resamples(n):
    v = statistic(tuple(int(i) for i in idx))
    if v is None or not math.isfinite(v):
      return Interval(estimate, math.inf, n)
    values.append(float(v))
  se = float(np.std(values)) * math.sqrt(n / (n - 1))
  return Interval(estimate, t_quantile(n, confidence) * se, n)


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> float:
  """x of the minimum of the parabola through three points (xs strictly increasing):
  where a grid search's best value lies between its neighbours. The vertex stays within
  [xs[0], xs[2]] whenever ys[1] is the smallest of the three."""
  (x0, x1, x2), (y0, y1, y2) = xs, ys
  num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
  den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
  return x1 if den == 0 else x1 - 0.5 * num / den
