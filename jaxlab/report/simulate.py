"""Synthetic seed curves with a known truth, for measuring the report's estimators and the
coverage of its intervals (tests/test_savings_estimator.py, bench/savings_coverage.py,
docs/statistics.md).

Curves. A val-loss curve is L(t) = E + A * S(t)^-alpha in the training step t, S the
learning rate summed up to t (jaxlab's warmup + cosine or linear decay to 10% of the
peak, or a constant rate: a power law), normalised by the steps; a loss curve follows the
area under its lr schedule to a good approximation (Tissue, Wang and Wang, "Scaling Law
with Learning Rate Annealing", NeurIPS 2025: L0 + A S1^-alpha - C S2; here C = 0). A method with true saving s has the same law with its summed
lr scaled by k = S(T) / S((1 - s) T): its own schedule, as effective as the baseline's
at (1 - s) T steps, so its curve reaches the baseline's final loss L(T) at exactly
(1 - s) T and keeps falling after. Both are read at the evaluation grid of a study.

Noise. Seed k of method m at evaluation e: u_k + v_mk + w_mke, with u_k shared by the
methods (seed k of every method has the same data order), v_mk the method's own seed
offset, and w an AR(1) series over the evaluations (correlation rho between neighbours,
as training noise carries over). `fit_noise` estimates (sd_u, sd_v, sd_w, rho) from a
study's runs: the residuals of each seed from its method's seed mean over the second half
of the evaluations (where targets and crossings lie).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

SCHEDULES = ('cosine', 'linear', 'constant')


def summed_lr(steps: float, schedule: str = 'cosine', warmup: float = 0.05,
              floor: float = 0.1, resolution: int = 20001):
  """S(t): the lr schedule's area up to step t over the peak lr, divided by `steps` (and
  continued at the final lr past the end), plus 1% of a step so that S(0) > 0."""
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule {schedule!r}: one of {SCHEDULES}')
  ts = np.linspace(0.0, steps, resolution)
  w = warmup * steps
  frac = np.clip((ts - w) / (steps - w), 0.0, 1.0)
  decay = {'cosine': floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * frac)),
           'linear': floor + (1 - floor) * (1 - frac), 'constant': np.ones_like(ts)}[schedule]
  lr = np.where(ts < w, ts / max(w, 1e-12), decay) if schedule != 'constant' else decay
  area = np.concatenate([[0.0], np.cumsum((lr[1:] + lr[:-1]) / 2 * np.diff(ts))])
  end_lr = lr[-1]

  def S(t):
    t = np.asarray(t, dtype=np.float64)
    inside = np.interp(np.minimum(t, steps), ts, area)
    return (np.where(t <= steps, inside, area[-1] + end_lr * (t - steps)) + 0.01) / steps
  return S


@dataclasses.dataclass(frozen=True)
class Law:
  """L(t) = E + A * (k * S(t))^-alpha for a schedule over `steps` steps."""
  E: float
  A: float
  alpha: float
  steps: float
  schedule: str = 'cosine'

  def loss(self, t, k: float = 1.0):
    return self.E + self.A * (k * summed_lr(self.steps, self.schedule)(t)) ** -self.alpha

  def multiplier(self, saving: float) -> float:
    """k at which the curve reaches loss(steps) at (1 - saving) * steps."""
    S = summed_lr(self.steps, self.schedule)
    return float(S(self.steps) / S((1 - saving) * self.steps))


@dataclasses.dataclass(frozen=True)
class Noise:
  shared: float     # sd of u_k
  paired: float     # sd of v_mk
  eval: float       # sd of w_mke
  rho: float        # AR(1) correlation of w between neighbouring evaluations


def draw(rng, noise: Noise, n: int, curve_E: np.ndarray, shared_N: np.ndarray) -> np.ndarray:
  """n seed curves (n x E) around `curve_E` with the shared offsets `shared_N`."""
  E = len(curve_E)
  z = rng.normal(0.0, noise.eval, (n, E))
  w = np.empty_like(z)
  w[:, 0] = z[:, 0]
  for e in range(1, E):
    w[:, e] = noise.rho * w[:, e - 1] + math.sqrt(1 - noise.rho ** 2) * z[:, e]
  return curve_E + shared_N[:, None] + rng.normal(0.0, noise.paired, (n, 1)) + w


def fit_noise(curves: dict[str, np.ndarray], window: float = 0.5) -> Noise:
  """Noise from a study's seed curves {method: seeds x evaluations} (the same seeds, in
  the same order, for every method): method-of-moments over the last `window` of each
  method's evaluations."""
  offsets, within, lag = [], [], []
  for Y in curves.values():
    Y = np.asarray(Y, dtype=np.float64)
    tail = Y[:, int(Y.shape[1] * (1 - window)):]
    r = tail - tail.mean(axis=0)                    # residuals from the method's seed mean
    o = r.mean(axis=1)                              # each seed's offset there
    d = r - o[:, None]
    offsets.append(o)
    within.append(float((d ** 2).sum() / (d.shape[0] * (d.shape[1] - 1))))
    if d.shape[1] > 2:
      lag.append(float(np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1]))
  n = len(offsets[0])
  var_o = float(np.mean([np.sum(o ** 2) / (n - 1) for o in offsets]))
  pairs = [np.sum(a * b) / (n - 1) for a, b in itertools.combinations(offsets, 2)]
  shared = max(float(np.mean(pairs)), 0.0) if pairs else 0.0
  eval_var = float(np.mean(within))
  window_len = min(max(2, int(np.asarray(Y).shape[1] * window)) for Y in curves.values())
  paired = max(var_o - shared - eval_var / window_len, 0.0)
  rho = float(np.clip(np.mean(lag), 0.0, 0.95)) if lag else 0.0
  return Noise(math.sqrt(shared), math.sqrt(paired), math.sqrt(eval_var), rho)
