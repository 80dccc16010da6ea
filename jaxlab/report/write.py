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
over seeds (jaxlab.report.stats), and the savings table (--baseline) its statistics.

Runs are read by jaxlab.rundir.read (where the numbers come from is described there); the
plots are jaxlab.report.plots'.
"""
from __future__ import annotations

import csv
import math
import os
import pathlib

from jaxlab.report import (paired, positions, provenance, savings, spectral, stats, transfer,
                           weights)
from jaxlab.report.plots import plot_loss
from jaxlab.rundir.read import Run, group_seeds, load_runs, num, summarize

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


def _best_method(runs: list[Run]) -> str | None:
  """'Best method: ...' for a sweep with seeds (the lowest mean final val loss over its
  seeds, else train loss), None when no method has two seeds."""
  groups = group_seeds(runs)
  if max(len(g) for g in groups.values()) < 2:
    return None
  for col in ('final_val_loss', 'final_train_loss'):
    means = {}
    for method, by_seed in groups.items():
      iv = stats.t_interval([summarize(r)[col] for r in by_seed.values()
                             if num(summarize(r)[col]) is not None])
      if iv.estimate is not None and math.isfinite(iv.estimate):
        means[method] = iv
    if means:
      method = min(means, key=lambda m: means[m].estimate)
      return (f'Best method: `{method}` (lowest mean {COLUMNS[col]} over its '
              f'{means[method].n} seeds, {means[method].format(".4f")}).')
  return None


def render_markdown(title: str, rows: list[dict], runs: list[Run]) -> str:
  seeded = _best_method(runs)
  best = _best(rows) if len(rows) > 1 and seeded is None else None
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
  if seeded:
    lines += [seeded, '']
  elif best:
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
  ns = sorted({len(g) for g in groups.values() if len(g) >= 2})
  tq = '; '.join(f'n = {n}: t = {stats.t_quantile(n):.3f}' for n in ns)
  lines = ['## Over seeds', '',
           f'Mean ± {100 * stats.CONFIDENCE:.0f}% CI over seeds ({stats.T_METHOD}: mean ± '
           f't_(0.975, n-1) s / sqrt(n); {tq}). Runs `<method>/seed<k>`; seed k '
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


# ----------------------------------------------------------------------------- entry point

_PAIR_COLUMNS = ['run', 'baseline', 'n']


def _pair_order(column: str):
  return (_PAIR_COLUMNS.index(column) if column in _PAIR_COLUMNS else len(_PAIR_COLUMNS), column)


def write_report(path: str | os.PathLike, baseline: str | None = None) -> pathlib.Path:
  """Writes report.md, runs.csv and the loss plots into `path`; returns report.md's path.
  With `baseline` a method's label (growth studies), also the compute-saved table
  against it (savings.csv) and val_loss_vs_flops.png (see jaxlab.report.savings); with
  `baseline` KEY=V1,V2 the paired differences of every method against the one that
  differs only in KEY (paired.csv; see jaxlab.report.paired)."""
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
    write_csv(root / 'savings.csv', flat, list(dict.fromkeys(k for r in flat for k in r)))
    savings.plot_val_vs_flops(runs, target).savefig(root / 'val_loss_vs_flops.png',
                                                    bbox_inches='tight')
    text += '\n' + savings.render_savings(saved, baseline, target) + \
        '\n![val loss vs FLOPs](val_loss_vs_flops.png)\n'
  # weight_stats.png, spectral.png, the val loss by position: if logged
  text += diagnostics_sections(runs, root, baseline if pairing is None else None)
  text += '\n' + provenance.section(runs)
  out = root / 'report.md'
  out.write_text(text)
  return out


def diagnostics_sections(runs, root: pathlib.Path, baseline: str | None = None) -> str:
  """Saves the plot of each diagnostic the runs logged into `root`; returns their
  report.md sections ('' when none). baseline: a method label to pair against (the val
  loss by position), or None."""
  text = transfer.write(runs, root)   # best lr / weight decay per width, if a sweep spans them
  if positions.has_stats(runs):  # val loss by position (train.eval_positions)
    text += '\n' + positions.render(positions.summary_rows(runs, baseline), baseline)
  if weights.has_stats(runs):   # weight norms / effective steps / AdamP projections
    weights.plot(runs).savefig(root / 'weight_stats.png', bbox_inches='tight')
    text += '\n' + weights.render(weights.summary_rows(runs))
  if spectral.has_stats(runs):  # top singular values (train.spectral_every)
    spectral.plot(runs).savefig(root / 'spectral.png', bbox_inches='tight')
    text += '\n' + spectral.render(spectral.summary_rows(runs))
  return text
