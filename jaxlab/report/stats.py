"""Confidence intervals over seeds, for the report's tables (docs/statistics.md).

* `t_interval(values)`: Student's t-interval of a mean over seeds,
  mean ± t_{(1+c)/2, n-1} · s / sqrt(n), s the sample standard deviation (n - 1 in the
  denominator). For a difference against a baseline the values are the per-seed
  differences (seed k of both runs shares its init offset and data order), so the
  noise common to a seed cancels: a paired t-interval. `t_pvalue` is its test.
* The FLOPs to reach a target, and the saving and speedup read from them, are not a mean
  of per-seed quantities: their interval inverts a paired t-test along the curve
  (jaxlab.report.crossing).
* `holm`: with k comparisons against one baseline, Holm's step-down adjusts the level of
  each interval, so that "resolved" (the interval excludes 0) holds for the family at
  95% (Holm 1979).

`Interval.resolved`: the interval excludes zero. With n = 1 there is no interval (the
half-width is nan) and nothing is resolved. The coverage of every interval the reports
print, measured by simulation: docs/statistics.md (bench/savings_coverage.py).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Sequence

from scipy import special

CONFIDENCE = 0.95
T_METHOD = 'Student t-interval over seeds'


@dataclasses.dataclass(frozen=True)
class Interval:
  """estimate ± half (half = nan: no interval, e.g. n = 1; inf: unbounded), or, for an
  interval that is not symmetric about its estimate, [low, high] (inf where open)."""
  estimate: float | None   # None: undefined (e.g. the mean curve never crosses)
  half: float
  n: int
  low: float | None = None
  high: float | None = None

  @property
  def lo(self) -> float:
    if self.low is not None:
      return self.low
    return math.nan if self.estimate is None else self.estimate - self.half

  @property
  def hi(self) -> float:
    if self.high is not None:
      return self.high
    return math.nan if self.estimate is None else self.estimate + self.half

  @property
  def resolved(self) -> bool:
    """True when the interval exists and excludes zero."""
    if self.estimate is None or math.isnan(self.lo) or math.isnan(self.hi):
      return False
    return self.lo > 0 or self.hi < 0

  def format(self, spec: str = '.4f', scale: float = 1.0, unit: str = '') -> str:
    """'3.1% ± 1.2%', '3.1% [0.4%, 7.0%]' ('± inf' / 'inf' where unbounded; no interval
    for n = 1; '—' when undefined)."""
    if self.estimate is None and (self.low is None or math.isnan(self.low)):
      return '—'
    text = '—' if self.estimate is None else format(self.estimate * scale, spec) + unit

    def bound(v):
      return ('-inf' if v < 0 else 'inf') if math.isinf(v) else format(v * scale, spec.lstrip('+')) + unit
    if self.low is not None:
      if math.isnan(self.low) or math.isnan(self.high):
        return text
      return f'{text} [{bound(self.low)}, {bound(self.high)}]'
    if math.isnan(self.half):
      return text
    half = 'inf' if math.isinf(self.half) else format(self.half * scale, spec.lstrip('+'))
    return f'{text} ± {half}{unit if math.isfinite(self.half) else ""}'


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
  """t_{(1+c)/2, n-1}: 4.303 for n = 3 at 95%."""
  return float(special.stdtrit(n - 1, 0.5 + confidence / 2))


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


def t_pvalue_of(t: float, n: int) -> float:
  """Two-sided p-value of a t statistic with n - 1 degrees of freedom (1.0 for n < 2 or
  a nan t)."""
  if n < 2 or math.isnan(t):
    return 1.0
  return float(2 * special.stdtr(n - 1, -abs(t)))


def t_pvalue(values: Sequence[float]) -> float:
  """Two-sided p-value of Student's t-test that the finite `values` have mean 0 (1.0 with
  fewer than 2 values or no spread)."""
  xs = [float(v) for v in values if v is not None and math.isfinite(v)]
  if len(xs) < 2:
    return 1.0
  sd = statistics.stdev(xs)
  if sd == 0:
    return 0.0 if statistics.fmean(xs) != 0 else 1.0
  return t_pvalue_of(statistics.fmean(xs) / (sd / math.sqrt(len(xs))), len(xs))


def holm(p_values: Sequence[float], confidence: float = CONFIDENCE) -> list[tuple[float, float]]:
  """Holm's step-down over k comparisons with one baseline: per comparison, (its
  adjusted p-value, the confidence level of its adjusted interval). Sorted by p, the
  i-th (from 0) is tested at alpha / (k - i) while every one before it was rejected;
  from the first that is not, it and all after it keep that level (their p-values are no
  smaller, so none of their intervals excludes 0). Adjusted p-value: the running maximum
  of (k - i) p_(i), at most 1 (Holm 1979)."""
  alpha, k = 1 - confidence, len(p_values)
  order = sorted(range(k), key=lambda i: p_values[i])
  out: list = [None] * k
  running, stopped = 0.0, None
  for rank, i in enumerate(order):
    level = alpha / (k - rank)
    if stopped is None and p_values[i] > level:
      stopped = level
    running = max(running, min(1.0, (k - rank) * p_values[i]))
    out[i] = (running, 1 - (level if stopped is None else stopped))
  return out


def holm_intervals(samples: Sequence[Sequence[float]],
                   confidence: float = CONFIDENCE) -> list[tuple[Interval, float]]:
  """k samples (each one comparison's per-seed differences) -> per comparison its
  t-interval at its Holm level and its Holm-adjusted p-value (holm over the k t-tests)."""
  adjusted = holm([t_pvalue(xs) for xs in samples], confidence)
  return [(t_interval(xs, level), p_adj) for xs, (p_adj, level) in zip(samples, adjusted)]


def paired_differences(values: dict, baseline: dict) -> list[float]:
  """values[k] - baseline[k] for every key k (seed) both have with a finite value."""
  out = []
  for k in values:
    a, b = values[k], baseline.get(k)
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
      out.append(a - b)
  return out


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> float:
  """x of the minimum of the parabola through three points (xs strictly increasing):
  where a grid search's best value lies between its neighbours. The vertex stays within
  [xs[0], xs[2]] whenever ys[1] is the smallest of the three."""
  (x0, x1, x2), (y0, y1, y2) = xs, ys
  num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
  den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
  return x1 if den == 0 else x1 - 0.5 * num / den
