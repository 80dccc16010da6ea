"""The val loss by position (train.eval_positions): where in a document the tokens gain.

The last evaluation of a run with train.eval_positions=true logs
`val_loss_pos/<lo>-<hi>`: the mean loss of the validation targets whose input sits at
positions lo..hi of its document piece, i.e. that had lo..hi earlier tokens of their
document to attend to (jaxlab.train.step.position_terms). The report tabulates them per
method, mean ± 95% CI over seeds, and with a baseline the paired difference by seed
(jaxlab.report.stats.t_interval over per-seed differences; "not resolved" when the interval
includes 0).
"""
from __future__ import annotations

from jaxlab.report.stats import T_METHOD, paired_differences, t_interval
from jaxlab.rundir.read import Run, group_seeds, num
from jaxlab.rundir.records import POSITION_PREFIX as PREFIX


def _final(run: Run) -> dict[str, float]:
  """{bucket label: value} of the run's last record that has any (its last evaluation)."""
  for record in reversed(run.metrics):
    values = {k[len(PREFIX):]: num(v) for k, v in record.items() if k.startswith(PREFIX)}
    if values:
      return values
  return {}


def has_stats(runs: list[Run]) -> bool:
  return any(_final(r) for r in runs)


def _order(bucket: str) -> int:
  return int(bucket.split('-')[0])


def summary_rows(runs: list[Run], baseline: str | None = None) -> list[dict]:
  """Per method and bucket: the interval over seeds, and the paired difference against
  `baseline` (a method label) where the method is not the baseline."""
  methods = group_seeds(runs)
  finals = {m: {seed: _final(r) for seed, r in by_seed.items()} for m, by_seed in methods.items()}
  buckets = sorted({b for per in finals.values() for f in per.values() for b in f}, key=_order)
  base = finals.get(baseline) if baseline else None
  rows = []
  for method, per_seed in finals.items():
    if not any(per_seed.values()):
      continue
    for bucket in buckets:
      values = {s: f.get(bucket) for s, f in per_seed.items()}
      row = {'method': method, 'bucket': bucket, 'loss': t_interval(list(values.values()))}
      if base is not None and method != baseline:
        row['diff'] = t_interval(paired_differences(
            values, {s: f.get(bucket) for s, f in base.items()}))
      rows.append(row)
  return rows


def render(rows: list[dict], baseline: str | None = None) -> str:
  buckets = list(dict.fromkeys(r['bucket'] for r in rows))
  lines = ['## Val loss by position', '',
           'The last evaluation\'s loss of the targets by how many earlier tokens of their '
           'document they could attend to (`train.eval_positions`; keys `val_loss_pos/<lo>-<hi>`),'
           f' mean ± 95% CI over seeds ({T_METHOD})'
           + (f'; below each method, its paired difference against `{baseline}` by seed '
              '(negative: lower loss), "not resolved" when the interval includes 0.'
              if any('diff' in r for r in rows) else '.'), '',
           '| method | ' + ' | '.join(f'pos {b}' for b in buckets) + ' |',
           '|---' * (len(buckets) + 1) + '|']
  by_method: dict[str, dict] = {}
  for r in rows:
    by_method.setdefault(r['method'], {})[r['bucket']] = r
  for method, cells in by_method.items():
    lines.append(f'| {method} | ' + ' | '.join(
        cells[b]['loss'].format('.4f') if b in cells else '—' for b in buckets) + ' |')
    if any('diff' in c for c in cells.values()):
      def diff(c):
        d = c.get('diff')
        if d is None:
          return '—'
        return d.format('+.4f') + ('' if d.resolved else ' (not resolved)')
      lines.append(f'| − {baseline} | ' + ' | '.join(
          diff(cells[b]) if b in cells else '—' for b in buckets) + ' |')
  return '\n'.join(lines) + '\n'
