"""The loss law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, approach 3),
the compute-optimal allocation that follows from it, and the frontier L(C) = E + A / C^gamma
of one family's ladder. Both are fitted by jaxlab.scaling.laws (log-sum-exp, Huber 1e-3,
L-BFGS from Hoffmann et al.'s grid, the best optimum kept), with bootstrap intervals.

The allocation uses Chinchilla's C = 6 N D:
  N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = (C/6)^(alpha/(alpha+beta)) / G,
  G = (alpha A / (beta B))^(1/(alpha+beta)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxlab.scaling import laws

_NAMES = ('E', 'A', 'B', 'alpha', 'beta')


def _params(theta: np.ndarray) -> dict[str, float]:
  a_n, a_d, alpha, beta, e = (float(v) for v in theta)
  return {'E': math.exp(e), 'A': math.exp(a_n), 'B': math.exp(a_d), 'alpha': alpha,
          'beta': beta}


def _allocation(theta: np.ndarray, c: float) -> tuple[float, float]:
  """(N_opt, D_opt) at C FLOPs (C = 6 N D); nan where an exponent is not positive."""
  p = _params(theta)
  alpha, beta = p['alpha'], p['beta']
  if alpha <= 0 or beta <= 0:
    return math.nan, math.nan
  log_g = (math.log(alpha * p['A']) - math.log(beta * p['B'])) / (alpha + beta)
  log_c6 = math.log(c / 6)
  n = math.exp(log_g + beta / (alpha + beta) * log_c6)
  return n, c / 6 / n


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A / N^alpha + B / D^beta, fitted to `n_points` runs."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  n_points: int
  huber_delta: float
  residual_sd: float              # of log L - log L_hat over the points
  theta: np.ndarray = dataclasses.field(repr=False, compare=False)
  residuals: np.ndarray = dataclasses.field(repr=False, compare=False)
  boot: laws.Bootstrap | None = dataclasses.field(default=None, repr=False, compare=False)

  def predict(self, n_params: float, n_tokens: float) -> float:
    return float(math.exp(laws.predict_log(self.theta, np.log([[n_params, n_tokens]]))[0]))

  def interval(self, name: str) -> tuple[float, float]:
    """The bootstrap interval of one of E, A, B, alpha, beta."""
    if name not in _NAMES:
      raise ValueError(f'{name!r}: expected one of {", ".join(_NAMES)}')
    return self._boot(lambda t: _params(t)[name])

  def allocation(self, flops: float) -> dict[str, tuple[float, float, float]]:
    """{'N_opt', 'D_opt', 'tokens_per_param', 'a', 'b'}: (estimate, low, high) at C=flops;
    a and b are the exponents of N_opt and D_opt in C."""
    def one(t):
      n, d = _allocation(t, flops)
      p = _params(t)
      s = p['alpha'] + p['beta']
      return {'N_opt': n, 'D_opt': d, 'tokens_per_param': d / n,
              'a': p['beta'] / s, 'b': p['alpha'] / s}
    est = one(self.theta)
    return {k: (v, *self._boot(lambda t, k=k: one(t)[k])) for k, v in est.items()}

  def prediction(self, n_params: float, n_tokens: float) -> tuple[float, float, float, float, float]:
    """(L_hat, fit low, fit high, run low, run high): the fit's interval (parameter
    uncertainty, the bootstrap) and the interval for one new run, which adds the points'
    scatter about the law (each refit's prediction times a residual drawn from the fit)."""
    log_x = np.log([[n_params, n_tokens]])
    est = self.predict(n_params, n_tokens)
    if self.boot is None or not len(self.boot.thetas):
      return est, math.nan, math.nan, math.nan, math.nan
    preds = np.array([laws.predict_log(t, log_x)[0] for t in self.boot.thetas])
    rng = np.random.default_rng(0)
    noisy = preds[:, None] + rng.choice(self.residuals, (len(preds), 50))
    q = 100 * (1 - laws.CONFIDENCE) / 2
    fit = np.exp(np.percentile(preds, [q, 100 - q]))
    run = np.exp(np.percentile(noisy, [q, 100 - q]))
    return est, float(fit[0]), float(fit[1]), float(run[0]), float(run[1])

  def _boot(self, f) -> tuple[float, float]:
    return (math.nan, math.nan) if self.boot is None else self.boot.interval(f)


def fit_chinchilla(n_params: Sequence[float], n_tokens: Sequence[float],
                   loss: Sequence[float], *, huber_delta: float = laws.HUBER_DELTA,
                   bootstrap: int = laws.BOOTSTRAP, seed: int = 0,
                   groups: Sequence | None = None) -> ChinchillaFit:
  """Fits L = E + A / N^alpha + B / D^beta to runs of N params trained on D tokens with
  final loss `loss` (one point per run, or per run averaged over seeds). `bootstrap`
  refits on resampled points give the intervals (0: none); `groups` makes the bootstrap
  resample whole groups. Raises ValueError when the points cannot support the law."""
  n = laws.check_points('n_params', n_params)
  d = laws.check_points('n_tokens', n_tokens)
  y = laws.check_points('loss', loss)
  if not len(n) == len(d) == len(y):
    raise ValueError(f'n_params, n_tokens and loss differ in length ({len(n)}, {len(d)}, {len(y)})')
  if len(np.unique(n)) < 2 or len(np.unique(d)) < 2 or len(y) < 6:
    raise ValueError(f'the law has 5 parameters: it needs at least 6 runs over at least 2 '
                     f'sizes and 2 token counts (got {len(y)} runs, {len(np.unique(n))} '
                     f'size(s), {len(np.unique(d))} token count(s))')
  log_x, log_y = np.log(np.stack([n, d], axis=1)), np.log(y)
  best = laws.fit_theta(log_x, log_y, laws.grid(2), huber_delta, keep=1 + laws.REFIT_STARTS)
  theta = best[0][1]
  residuals = log_y - laws.predict_log(theta, log_x)
  boot = None
  if bootstrap:
    boot = laws.bootstrap(log_x, log_y, theta, [t for _, t in best[1:]], reps=bootstrap,
                          seed=seed, delta=huber_delta,
                          groups=None if groups is None else np.asarray(groups))
  return ChinchillaFit(**_params(theta), n_points=len(y), huber_delta=huber_delta,
                       residual_sd=float(np.std(residuals, ddof=1)), theta=theta,
                       residuals=residuals, boot=boot)
