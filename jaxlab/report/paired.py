"""Paired differences between methods that differ in one config key
(`launch.py report DIR --baseline optim.name=adamw,sgd`).

Each method (jaxlab.rundir.read.group_seeds) whose `key` is not one of the baseline values
is matched with the method whose config is the same in every other key (seeds, name and
workdir aside) and whose `key` is one of them: e.g. AdamP at lr 3e-3 and weight decay
0.1 with AdamW at the same lr and weight decay. For each pair: the final val loss and
the mean of the last TAIL evaluations, method minus baseline, seed by seed (seed k of
both shares its data order), with a t-interval (jaxlab.report.stats), Holm-adjusted over
the pairs when there are several; "not resolved" when the CI includes 0.
"""
from __future__ import annotations

import json

from jaxlab.config.loading import flatten
from jaxlab.report import stats
from jaxlab.rundir.read import Run, group_seeds, summarize
from jaxlab.report.savings import TAIL

_IGNORED = ('name', 'train.seed', 'data.seed', 'train.workdir', 'train.checkpoint_dir')


def parse(baseline: str) -> tuple[str, tuple[str, ...]] | None:
  """'optim.name=adamw,sgd' -> ('optim.name', ('adamw', 'sgd')); a run label -> None."""
  if '=' not in baseline:
    return None
  key, values = baseline.split('=', 1)
  return key.strip(), tuple(v.strip() for v in values.split(',') if v.strip())


def _signature(run: Run, key: str) -> str:
  flat = {k: v for k, v in flatten(run.config).items() if k not in _IGNORED and k != key}
  return json.dumps(flat, sort_keys=True, default=str)


def _value(run: Run, key: str):
  return flatten(run.config).get(key)


def _per_seed(by_seed: dict[int | None, Run]) -> tuple[dict, dict]:
  final, tail = {}, {}
  for k, run in by_seed.items():
    final[k] = summarize(run)['final_val_loss']
    _, ys = run.series('val_loss')
    ys = [y for y in ys if y == y][-TAIL:]   # finite (nan != nan) last evaluations
    tail[k] = sum(ys) / len(ys) if ys else None
  return final, tail


def pair_rows(runs: list[Run], key: str, values: tuple[str, ...]) -> list[dict]:
  """One row per method paired with a baseline method (see the module docstring)."""
  groups = group_seeds(runs)
  first = {m: next(iter(g.values())) for m, g in groups.items()}
  known = {str(_value(r, key)) for r in first.values()}
  if not known & set(values):
    raise ValueError(f'--baseline {key}={",".join(values)}: no run has {key} in '
                     f'{{{", ".join(values)}}}; the runs have {", ".join(sorted(known))}')
  bases = {_signature(r, key): m for m, r in first.items() if str(_value(r, key)) in values}
  rows = []
  for method, run in first.items():
    if str(_value(run, key)) in values:
      continue
    base = bases.get(_signature(run, key))
    row = {'run': method, 'baseline': base, 'n': len(groups[method])}
    if base is not None:
      (final, tail), (b_final, b_tail) = _per_seed(groups[method]), _per_seed(groups[base])
      row['_final'] = stats.paired_differences(final, b_final)
      row['_tail'] = stats.paired_differences(tail, b_tail)
      row['delta_final_val_loss'] = stats.t_interval(row['_final'])
      row['delta_tail_val_loss'] = stats.t_interval(row['_tail'])
    rows.append(row)
  _holm(rows)
  for row in rows:
    row.pop('_final', None)
    row.pop('_tail', None)
  return rows


def _holm(rows: list[dict]) -> None:
  """With k > 1 pairs, each Δ's interval is Holm-adjusted over the k pairs (its family:
  the final or the tail Δs); the unadjusted one is kept as '<name>_unadjusted'."""
  paired_rows = [r for r in rows if r['baseline'] is not None]
  if len(paired_rows) < 2:
    return
  for name, key in (('delta_final_val_loss', '_final'), ('delta_tail_val_loss', '_tail')):
    for row, (iv, p_adj) in zip(paired_rows, stats.holm_intervals([r[key] for r in paired_rows])):
      row[f'{name}_unadjusted'] = row[name]
      row[name] = iv
      row[f'holm_p_{name[len("delta_"):]}'] = p_adj


def render(rows: list[dict], key: str, values: tuple[str, ...]) -> str:
  def cell(iv):
    text = iv.format('+.4f')
    return text + (' (not resolved)' if iv.n >= 2 and not iv.resolved else '')

  lines = [f'## Paired differences against {key} = {" or ".join(values)}', '',
           f'Each run minus the run with the same config but {key} in {{{", ".join(values)}}}, '
           f'seed by seed (seed k of both shares its data order): mean ± '
           f'{100 * stats.CONFIDENCE:.0f}% CI ({stats.T_METHOD}); negative: lower loss than '
           f'the baseline. Tail: the mean of the last {TAIL} evaluations. "not resolved": the '
           'CI includes 0.' + (f' With {sum(r["baseline"] is not None for r in rows)} pairs, '
                               'each column\'s intervals are Holm-adjusted over them '
                               '(paired.csv also has the unadjusted ones).'
                               if sum(r['baseline'] is not None for r in rows) > 1 else ''),
           '',
           '| run | baseline | seeds | Δ final val loss | Δ tail val loss |',
           '|---|---|---|---|---|']
  for r in rows:
    if r['baseline'] is None:
      lines.append(f"| {r['run']} | — (no run differs only in {key}) | {r['n']} | — | — |")
      continue
    lines.append(f"| {r['run']} | {r['baseline']} | {r['delta_final_val_loss'].n} | "
                 f"{cell(r['delta_final_val_loss'])} | {cell(r['delta_tail_val_loss'])} |")
  return '\n'.join(lines) + '\n'
