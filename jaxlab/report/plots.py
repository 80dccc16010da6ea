"""The report's plots: loss vs step / FLOPs per run (or per method, mean over seeds with
its 95% band), and the styling every plot of the report shares. matplotlib's Agg canvas
directly (no pyplot, no display, no global backend switch)."""
from __future__ import annotations

import math
from typing import Any

from jaxlab.report import stats
from jaxlab.rundir.read import Run, aligned, group_seeds


def styles(n: int) -> list[tuple[Any, str]]:
  """(colour, linestyle) per run: distinct colours, plus linestyles past 10 runs."""
  import matplotlib
  if n <= 10:
    colors = [matplotlib.colormaps['tab10'](i) for i in range(n)]
  elif n <= 20:
    colors = [matplotlib.colormaps['tab20'](i) for i in range(n)]
  else:
    colors = [matplotlib.colormaps['turbo'](0.05 + 0.9 * i / (n - 1)) for i in range(n)]
  dashes = ['-'] if n <= 10 else ['-', '--', '-.', ':']
  return [(c, dashes[i % len(dashes)]) for i, c in enumerate(colors)]


def _positive_x(xs: list[float], *ys_lists: list[float]) -> tuple[list[float], ...]:
  keep = [i for i, a in enumerate(xs) if a > 0]
  return ([xs[i] for i in keep], *([ys[i] for i in keep] for ys in ys_lists))


def _curves(members: list[Run], key: str, x: str):
  """(xs, ys, pointwise CI half-widths or None): one run's series, or the mean over a
  method's seeds at their common steps."""
  if len(members) == 1:
    xs, ys = members[0].series(key, x)
    return xs, ys, None
  xs, ys_per_run = aligned(members, key, x)
  columns = list(zip(*ys_per_run))
  mean = [sum(c) / len(c) for c in columns]   # nan if any seed is nan there
  return xs, mean, [stats.t_interval(c).half if all(math.isfinite(v) for v in c) else math.nan
                    for c in columns]


def plot_loss(runs: list[Run], x: str = 'step'):
  """Train loss (lines) and val loss (markers, same colour) per run vs `x` ('step' | 'flops');
  the runs of a method with several seeds (`<method>/seed<k>`) as their mean, with the
  train loss's pointwise 95% t-interval shaded.

  Returns a matplotlib Figure on an Agg canvas. Non-finite losses break the
  line; an 'X' marks a run's last finite train loss before it diverged (drawn at
  the top edge when that loss is above the plot). The y range stops at the
  highest initial loss so one blow-up cannot flatten the other runs.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.lines import Line2D

  fig = Figure(figsize=(8, 5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  handles, finite, initial, diverged = [], [], [], []
  groups = group_seeds(runs)
  for (method, by_seed), (color, ls) in zip(groups.items(), styles(len(groups))):
    members = list(by_seed.values())
    label = members[0].label if len(members) == 1 else f'{method} (mean of {len(members)} seeds)'
    xs, ys, band = _curves(members, 'loss', x)
    vx, vy, _ = _curves(members, 'val_loss', x)
    band = band if band is not None else [math.nan] * len(xs)
    if x == 'flops':   # log axis: the step-0 point (0 FLOPs) cannot be drawn
      xs, ys, band = _positive_x(xs, ys, band)
      vx, vy = _positive_x(vx, vy)
    if len(members) > 1 and xs:
      ax.fill_between(xs, [y - h for y, h in zip(ys, band)], [y + h for y, h in zip(ys, band)],
                      color=color, alpha=0.2, lw=0)
    if not xs and not vx:
      continue
    ax.plot(xs, ys, color=color, ls=ls, lw=1.3)
    if vx:
      ax.plot(vx, vy, ls='none', marker='o', ms=3.5, color=color)
    ok = [y for y in (*ys, *vy) if math.isfinite(y)]
    finite += ok
    first = next((y for y in ys if math.isfinite(y)), None)
    if first is not None:
      initial.append(first)
    bad = next((i for i, y in enumerate(ys) if not math.isfinite(y)), None)
    if bad is not None and bad > 0:
      diverged.append((xs[bad - 1], ys[bad - 1], color))
    handles.append(Line2D([], [], color=color, ls=ls, lw=1.3, marker='o' if vx else None,
                          ms=3.5, label=label))
  if x == 'flops':
    ax.set_xscale('log')
  if finite:
    lo, hi = min(finite), max(finite)
    if initial:
      hi = min(hi, max(initial))
    pad = 0.03 * (hi - lo) or 0.05 * abs(hi) or 0.1
    ax.set_ylim(lo - pad, hi + pad)
  top = ax.get_ylim()[1]
  for xv, yv, color in diverged:
    ax.plot([xv], [min(yv, top)], ls='none', marker='X', ms=8, color=color, clip_on=False)
  ax.set_xlabel({'step': 'step', 'flops': 'training FLOPs (cumulative)'}.get(x, x))
  ax.set_ylabel('loss')
  seeds = max(len(g) for g in groups.values()) > 1 if groups else False
  ax.set_title(f'Loss vs {"training FLOPs" if x == "flops" else x} '
               '(lines: train, markers: validation' +
               ('; band: 95% CI over seeds)' if seeds else ')'), fontsize='medium')
  ax.grid(True, which='major', alpha=0.3)
  if not handles:
    ax.text(0.5, 0.5, 'no logged losses', transform=ax.transAxes, ha='center', va='center')
  else:
    if diverged:
      handles.append(Line2D([], [], color='0.3', ls='none', marker='X', ms=7,
                            label='diverged after this point'))
    n = len(handles)
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              frameon=False, fontsize='small' if n <= 12 else 'x-small', ncols=math.ceil(n / 25))
  return fig
