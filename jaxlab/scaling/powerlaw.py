"""A power law y = c * x_1^e_1 * ... * x_k^e_k, fitted by least squares in log space, with
Student-t intervals on log c and each exponent (exact when the log residuals are
independent and normal with one variance; their coverage on simulated laws is measured
in tests/test_scaling.py). Used for the isoFLOP law N_opt = G C^a and the
hyperparameter laws lr* = a N^alpha D^beta, B* = b D^gamma."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import special

from jaxlab.scaling import laws


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coef * prod x_j^exponents[j]; `*_ci` the 95% intervals (nan without residual
  degrees of freedom)."""
  coef: float
  exponents: tuple[float, ...]
  coef_ci: tuple[float, float]
  exponent_ci: tuple[tuple[float, float], ...]
  residual_sd: float   # of log y about the law
  dof: int
  beta: np.ndarray = dataclasses.field(repr=False, compare=False)
  cov: np.ndarray = dataclasses.field(repr=False, compare=False)

  def predict(self, *x: float) -> float:
    return float(math.exp(self.beta @ np.array([1.0, *map(math.log, x)])))

  def predict_interval(self, *x: float, new: bool = False) -> tuple[float, float]:
    """The interval of the law's value at x, or (new=True) of one new observation."""
    if self.dof < 1:
      return math.nan, math.nan
    row = np.array([1.0, *map(math.log, x)])
    var = row @ self.cov @ row + (self.residual_sd ** 2 if new else 0.0)
    half = special.stdtrit(self.dof, (1 + laws.CONFIDENCE) / 2) * math.sqrt(var)
    mid = self.beta @ row
    return math.exp(mid - half), math.exp(mid + half)


def fit_power(y: Sequence[float], *x: Sequence[float], names: Sequence[str] = ()) -> PowerLaw:
  """Least squares of log y on 1, log x_1, ..., log x_k. Raises ValueError when the
  design cannot determine the law (fewer points than parameters, or regressors that do
  not vary independently)."""
  ys = laws.check_points('y', y)
  xs = [laws.check_points(names[j] if j < len(names) else f'x{j + 1}', v) for j, v in enumerate(x)]
  if any(len(v) != len(ys) for v in xs):
    raise ValueError('the regressors and y differ in length')
  design = np.column_stack([np.ones(len(ys)), *[np.log(v) for v in xs]])
  p = design.shape[1]
  if len(ys) < p or np.linalg.matrix_rank(design) < p:
    what = ', '.join(names) if names else 'the regressors'
    raise ValueError(f'{len(ys)} point(s) cannot determine a law in {what}: it needs at least '
                     f'{p} points whose {what} vary independently')
  log_y = np.log(ys)
  beta, *_ = np.linalg.lstsq(design, log_y, rcond=None)
  res = log_y - design @ beta
  dof = len(ys) - p
  if dof > 0:
    s2 = float(res @ res) / dof
    cov = s2 * np.linalg.inv(design.T @ design)
    t = special.stdtrit(dof, (1 + laws.CONFIDENCE) / 2)
    half = t * np.sqrt(np.diag(cov))
  else:
    s2, cov, half = math.nan, np.full((p, p), math.nan), np.full(p, math.nan)
  ci = [(float(b - h), float(b + h)) for b, h in zip(beta, half)]
  return PowerLaw(coef=math.exp(beta[0]), exponents=tuple(float(b) for b in beta[1:]),
                  coef_ci=(math.exp(ci[0][0]), math.exp(ci[0][1])) if dof > 0 else (math.nan, math.nan),
                  exponent_ci=tuple(ci[1:]), residual_sd=math.sqrt(s2) if dof > 0 else math.nan,
                  dof=dof, beta=beta, cov=cov)
