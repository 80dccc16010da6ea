"""compile.json and the table `launch.py compile` prints: one row per phase."""
from __future__ import annotations

import json
import pathlib

from jaxlab.aot.targets import GIB

# Keys of a row that are not JSON (the jax Compiled objects, kept for callers and tests).
_NOT_JSON = ('compiled',)


def to_json(rows: list[dict]) -> list[dict]:
  return [{k: v for k, v in row.items() if k not in _NOT_JSON} for row in rows]


def write(rows: list[dict], run_dir: pathlib.Path) -> pathlib.Path:
  run_dir.mkdir(parents=True, exist_ok=True)
  path = run_dir / 'compile.json'
  path.write_text(json.dumps(to_json(rows), indent=2) + '\n')
  return path


def _gib(n) -> str:
  return '?' if n is None else f'{n / GIB:.2f}'


def _tflop(n) -> str:
  return '-' if n is None else f'{n / 1e12:.3g}'


def table(rows: list[dict]) -> str:
  """Markdown table; the estimates are XLA's cost model, labelled as such."""
  head = ('| phase | model | mesh d/f/t | attention | remat | HBM GiB/chip | of GiB | fits | '
          'TFLOP/step jaxlab | TFLOP/step XLA | est. step s | est. MFU | compile s |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  notes = []
  for r in rows:
    mesh = '/'.join(str(r['mesh'][a]) for a in ('data', 'fsdp', 'tensor'))
    hbm = ('>= ' if r.get('hbm_is_lower_bound') else '') + _gib(r['hbm_bytes_per_chip'])
    step = '-' if r.get('estimated_step_seconds') is None else f"{r['estimated_step_seconds']:.4g}"
    mfu = '-' if r.get('estimated_mfu') is None else f"{100 * r['estimated_mfu']:.1f}%"
    if r.get('estimate_note'):
      mfu += ' *'
      notes.append(f"* phase {r['phase']}: {r['estimate_note']}")
    lines.append(f"| {r['phase']} | {r['model']} | {mesh} | {r['attention']} | {r['remat']} | "
                 f"{hbm} | {_gib(r['hbm_capacity_bytes'])} | {'yes' if r['fits'] else 'NO'} | "
                 f"{_tflop(r['flops_per_step'])} | {_tflop(r.get('xla_flops_per_step'))} | "
                 f"{step} | {mfu} | {r['compile_seconds']:.1f} |")
  lines.append('')
  for r in rows:
    if r.get('population', 1) > 1:
      rate = r.get('member_steps_per_second_per_chip')
      lines.append(f"phase {r['phase']}: a population of {r['population']} (one step trains "
                   'every member; TFLOP/step counts them all): est. member-steps/s per chip '
                   + ('-' if rate is None else f'{rate:.4g}'))
  lines.append('est. step / est. MFU: compile-time estimates from XLA\'s cost model (a per-op '
               'roofline), not measurements.')
  return '\n'.join(lines + notes)


def failure(rows: list[dict]) -> str | None:
  """The error line naming each phase that does not fit and its remedies, or None."""
  bad = [r for r in rows if not r['fits']]
  if not bad:
    return None
  parts = []
  for r in bad:
    need = _gib(r['hbm_bytes_per_chip'])
    need = ('at least ' if r.get('hbm_is_lower_bound') else '') + need
    parts.append(f"phase {r['phase']} ({r['model']}) does not fit on {r['target']}: it needs "
                 f"{need} GiB per chip of {_gib(r['hbm_capacity_bytes'])} GiB"
                 + (f" ({r['failed_program']} step)" if r.get('failed_program') else '')
                 + '; try: ' + '; '.join(r['remedies']))
  return '\n'.join(parts)
