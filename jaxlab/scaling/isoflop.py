"""isoFLOP profiles (Hoffmann et al. 2022, approach 2): for each FLOPs budget of a sweep,
a parabola in log N through the final losses of its sizes gives N_opt(C); then
N_opt = G C^a and D_opt = C / (6 N_opt) = C^(1-a) / (6 G) over the budgets.

Budgets: runs whose FLOPs lie within `BUDGET_TOLERANCE` (10%) of the smallest of a group
are one budget (a sweep sets each budget's steps from the runs' own FLOPs per token, so
its runs differ by rounding). A budget needs 3 sizes; its vertex must lie inside the
sizes it tried and the parabola must open upwards, else the budget is reported and left
out of the law (its optimum is not bracketed).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxlab.scaling.powerlaw import PowerLaw, fit_power

BUDGET_TOLERANCE = 0.10


def budgets(flops: Sequence[float]) -> list[int]:
  """A budget index per point (0 for the smallest budget)."""
  order = sorted(range(len(flops)), key=lambda i: flops[i])
  out = [0] * len(flops)
  group, first = -1, -math.inf
  for i in order:
    if flops[i] > first * (1 + BUDGET_TOLERANCE):
      group, first = group + 1, flops[i]
    out[i] = group
  return out


@dataclasses.dataclass(frozen=True)
class Profile:
  """One budget: its FLOPs (mean over its runs), sizes, mean losses and the parabola."""
  flops: float
  n_params: tuple[float, ...]
  loss: tuple[float, ...]
  coeffs: tuple[float, float, float]   # loss = c0 u^2 + c1 u + c2, u = ln N
  n_opt: float | None                  # None: the optimum is not bracketed
  why: str = ''

  def curve(self, n: float) -> float:
    u = math.log(n)
    return self.coeffs[0] * u * u + self.coeffs[1] * u + self.coeffs[2]


def profile(flops: float, n_params: Sequence[float], loss: Sequence[float]) -> Profile:
  """The parabola of one budget through (ln N, loss) points (several runs per size are
  averaged first)."""
  sizes = sorted(set(n_params))
  means = [float(np.mean([l for n, l in zip(n_params, loss) if n == s])) for s in sizes]
  if len(sizes) < 3:
    return Profile(flops, tuple(sizes), tuple(means), (math.nan,) * 3, None,
                   f'{len(sizes)} size(s); a profile needs 3')
  u = np.log(sizes)
  c0, c1, c2 = (float(v) for v in np.polyfit(u, means, 2))
  if c0 <= 0:
    return Profile(flops, tuple(sizes), tuple(means), (c0, c1, c2), None,
                   'the losses do not curve upwards in log N')
  vertex = -c1 / (2 * c0)
  if not u[0] <= vertex <= u[-1]:
    return Profile(flops, tuple(sizes), tuple(means), (c0, c1, c2), None,
                   f'the minimum (N = {math.exp(vertex):.3g}) lies outside the sizes tried')
  return Profile(flops, tuple(sizes), tuple(means), (c0, c1, c2), math.exp(vertex))


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
  profiles: tuple[Profile, ...]
  n_law: PowerLaw     # N_opt = G C^a
  d_law: PowerLaw     # D_opt = C / (6 N_opt)

  def allocation(self, flops: float) -> dict[str, tuple[float, float, float]]:
    n = self.n_law.predict(flops)
    d = self.d_law.predict(flops)
    return {'N_opt': (n, *self.n_law.predict_interval(flops)),
            'D_opt': (d, *self.d_law.predict_interval(flops))}


def fit_isoflop(flops: Sequence[float], n_params: Sequence[float],
                loss: Sequence[float]) -> IsoFlopFit:
  """Profiles per budget and the power laws over their optima. Raises ValueError naming
  what is missing when fewer than 2 budgets have a bracketed optimum."""
  groups = budgets(list(flops))
  profiles = []
  for g in sorted(set(groups)):
    idx = [i for i, b in enumerate(groups) if b == g]
    profiles.append(profile(float(np.mean([flops[i] for i in idx])),
                            [n_params[i] for i in idx], [loss[i] for i in idx]))
  good = [p for p in profiles if p.n_opt is not None]
  if len(good) < 2:
    why = '; '.join(f'{p.flops:.3g} FLOPs: {p.why}' for p in profiles if p.why)
    raise ValueError(f'isoFLOP needs at least 2 budgets with a bracketed optimum, each with '
                     f'3 or more sizes (got {len(profiles)} budget(s), {len(good)} usable'
                     f'{"; " + why if why else ""})')
  c = [p.flops for p in good]
  n_opt = [p.n_opt for p in good]
  return IsoFlopFit(tuple(profiles), fit_power(n_opt, c, names=['FLOPs']),
                    fit_power([ci / (6 * n) for ci, n in zip(c, n_opt)], c, names=['FLOPs']))
