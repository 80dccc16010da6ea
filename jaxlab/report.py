"""Run and sweep directories -> a markdown / CSV table and loss plots.

``write_report(dir)`` finds every run under ``dir`` (every directory holding a
``metrics.jsonl``, sorted by relative path) and writes into ``dir``:

  report.md          title, one row per run, the best run named, the plots
  runs.csv           the same table, machine-readable, full precision
  loss_vs_step.png   train loss (lines) and validation loss (markers) per run; for a
                     sweep with seeds (`<method>/seed<k>` dirs) one mean curve per method
                     with its pointwise 95% t-interval shaded
  loss_vs_flops.png  the same against cumulative training FLOPs, log x

With seeds the report also gives, per method, the mean ± 95% CI of the final losses
over seeds (jaxlab.stats), and the savings table (--baseline) its statistics.

Runs are read by jaxlab.run_data (where the numbers come from is described there).
``load_runs`` (re-exported from there) and ``plot_loss`` are public for notebooks and later tooling.
Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch).
"""
from __future__ import annotations

import csv
import math
import os
import pathlib
import sys
from typing import Any

from jaxlab import paired, savings, stats
from jaxlab.diagnostics import write_report_sections
from jaxlab.plotting import styles
from jaxlab.run_data import (METRICS_FILE, UNKNOWN_STATUS, Run, aligned, find_run_dirs,
                             group_seeds, load_run, load_runs, num, summarize)

__all__ = ['COLUMNS', 'METRICS_FILE', 'UNKNOWN_STATUS', 'Run', 'find_run_dirs', 'load_run',
           'load_runs', 'plot_loss', 'render_markdown', 'summarize', 'write_csv', 'write_report']
PLOTS = {'step': 'loss_vs_step.png', 'flops': 'loss_vs_flops.png'}

# runs.csv column -> report.md header.
COLUMNS = {
    'run': 'run',
    'status': 'status',
    'steps': 'steps',
    'final_train_loss': 'final train loss',
    'final_val_loss': 'final val loss',
    'val_tokens': 'val tokens[^val]',
    'tokens': 'tokens',
    'flops': 'FLOPs',
    'tokens_per_sec': 'tokens/s[^tps]',
    'n_params': 'params',
}
_MISSING = '—'


# ----------------------------------------------------------------------------- table

def _sci(v: float) -> str:
  """1.234e15 -> '1.23e15'."""
  if v == 0 or not math.isfinite(v):
    return str(v)
  mantissa, exp = f'{v:.2e}'.split('e')
  return f'{mantissa}e{int(exp)}'


def _count(v) -> str:
  return f'{int(v):,}' if float(v).is_integer() else f'{v:,}'


_FORMAT = {
    'steps': lambda v: str(int(v)) if float(v).is_integer() else str(v),
    'final_train_loss': lambda v: f'{v:.4f}',
    'final_val_loss': lambda v: f'{v:.4f}',
    'val_tokens': _count,
    'tokens': _count,
    'flops': _sci,
    'tokens_per_sec': lambda v: f'{v:,.0f}',
    'n_params': _count,
}


def _best(rows: list[dict]) -> tuple[int, str] | None:
  """(row index, column) of the lowest finite final val loss, else final train loss."""
  for col in ('final_val_loss', 'final_train_loss'):
    scored = [(row[col], i) for i, row in enumerate(rows)
              if num(row[col]) is not None and math.isfinite(row[col])]
    if scored:
      return min(scored)[1], col
  return None


def render_markdown(title: str, rows: list[dict], runs: list[Run]) -> str:
  best = _best(rows)
  lines = [f'# Report: {title}', '',
           f'{len(rows)} run{"s" * (len(rows) != 1)}. Final values come from summary.json '
           'when the run wrote one, else from the last logged step.', '',
           '| ' + ' | '.join(COLUMNS.values()) + ' |',
           '|' + '|'.join(':---' if c in ('run', 'status') else '---:' for c in COLUMNS) + '|']
  for i, row in enumerate(rows):
    cells = []
    for col in COLUMNS:
      v = row[col]
      text = _MISSING if v is None else _FORMAT[col](v) if col in _FORMAT else str(v)
      text = text.replace('|', '\\|')
      if best and best == (i, col):
        text = f'**{text}**'
      cells.append(text)
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '[^tps]: tokens/s is the median over logged steps with a non-null value '
            '(the first step, which includes compilation, usually logs null).',
            '[^val]: target tokens in each evaluation (the same tokens every time; '
            'train.eval_batches=all: the whole validation split).', '']
  lines += seed_table(runs)
  if best:
    i, col = best
    lines += [f'Best run: `{rows[i]["run"]}` (lowest {COLUMNS[col]}, '
              f'{_FORMAT[col](rows[i][col])}).', '']
  unplotted = [r.label for r in runs if not r.metrics]
  if unplotted:
    lines += ['No logged losses yet (not plotted): ' +
              ', '.join(f'`{label}`' for label in unplotted) + '.', '']
  lines += ['## Loss vs step', '', f'![Loss vs step]({PLOTS["step"]})', '',
            '## Loss vs training FLOPs', '', f'![Loss vs training FLOPs]({PLOTS["flops"]})', '']
  return '\n'.join(lines)


def seed_table(runs: list[Run]) -> list[str]:
  """Report lines: per method, mean ± CI over seeds of the final losses (nothing when no
  method has two seeds)."""
  groups = group_seeds(runs)
  if max(len(g) for g in groups.values()) < 2:
    return []
  lines = ['## Over seeds', '',
           f'Mean ± {100 * stats.CONFIDENCE:.0f}% CI over seeds ({stats.T_METHOD}: mean ± '
           't_(0.975, n-1) s / sqrt(n); n = 3: t = 4.303). Runs `<method>/seed<k>`; seed k '
           'of every method shares its data order.', '',
           '| method | seeds | completed | final train loss | final val loss |',
           '|:---|---:|---:|---:|---:|']
  for method, by_seed in groups.items():
    rows = [summarize(r) for r in by_seed.values()]
    done = sum(r['status'] == 'completed' for r in rows)
    train, val = ([r[k] for r in rows if num(r[k]) is not None]
                  for k in ('final_train_loss', 'final_val_loss'))
    lines.append(f'| {method} | {len(rows)} | {done} | '
                 f'{stats.t_interval(train).format(".4f")} | '
                 f'{stats.t_interval(val).format(".4f")} |')
  return lines + ['']


def write_csv(path: pathlib.Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames or list(COLUMNS))
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)


# ----------------------------------------------------------------------------- plots

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


# ----------------------------------------------------------------------------- entry point

_PAIR_COLUMNS = ['run', 'baseline', 'n']


def _pair_order(column: str):
  return (_PAIR_COLUMNS.index(column) if column in _PAIR_COLUMNS else len(_PAIR_COLUMNS), column)


def write_report(path: str | os.PathLike, baseline: str | None = None) -> pathlib.Path:
  """Writes report.md, runs.csv and the loss plots into `path`; returns report.md's path.
  With `baseline` a method's label (growth studies), also the compute-saved table
  against it (savings.csv) and val_loss_vs_flops.png (see jaxlab.savings); with
  `baseline` KEY=V1,V2 the paired differences of every method against the one that
  differs only in KEY (paired.csv; see jaxlab.paired)."""
  root = pathlib.Path(path)
  runs = load_runs(root)
  rows = [summarize(r) for r in runs]
  write_csv(root / 'runs.csv', rows)
  for x, name in PLOTS.items():
    plot_loss(runs, x).savefig(root / name, bbox_inches='tight')
  title = runs[0].label if len(runs) == 1 and runs[0].dir == root else root.resolve().name
  text = render_markdown(title, rows, runs)
  pairing = paired.parse(baseline) if baseline is not None else None
  if pairing is not None:   # --baseline KEY=V1,V2: paired differences in one config key
    rows = paired.pair_rows(runs, *pairing)
    write_csv(root / 'paired.csv', savings.flatten(rows),
              sorted({k for r in savings.flatten(rows) for k in r}, key=_pair_order))
    text += '\n' + paired.render(rows, *pairing)
  elif baseline is not None:
    saved, target = savings.method_rows(runs, baseline)
    flat = savings.flatten(saved)
    write_csv(root / 'savings.csv', flat, list(flat[0]))
    savings.plot_val_vs_flops(runs, target).savefig(root / 'val_loss_vs_flops.png',
                                                    bbox_inches='tight')
    text += '\n' + savings.render_savings(saved, baseline, target) + \
        '\n![val loss vs FLOPs](val_loss_vs_flops.png)\n'
  # weight_stats.png, spectral.png, the val loss by position: if logged
  text += write_report_sections(runs, root, baseline if pairing is None else None)
  out = root / 'report.md'
  out.write_text(text)
  return out


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m jaxlab.report RUN_OR_SWEEP_DIR')
  print(write_report(sys.argv[1]))
