"""metrics.jsonl and summary.json: the one reader and writer of each, and the names of the
metric keys one layer writes and another reads.

metrics.jsonl holds one JSON object per line: a logged step's record ({"step", "tokens",
"flops", "loss", "lr", ...}) or an event line ({"event": ...}, e.g. a growth event). A
line that is not a JSON object (cut short by a kill, or damaged) is never used: `read`
returns the objects and the numbers of the lines it dropped, and each caller says how it
reports them (a resume warns about each; a report about all but a last line cut short
while the run was going). A resumed run re-logs the steps after its checkpoint, so the
later lines of a step win (jaxlab.rundir.read).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

from jaxlab.rundir.layout import SUMMARY_FILE

# Keys of the records that the train step writes and the report reads.
SIGMA_PREFIX = 'sigma_max/'         # sigma_max/<module>.<param>[/<layer>]: top singular value
POSITION_PREFIX = 'val_loss_pos/'   # val_loss_pos/<lo>-<hi>: val loss by input position
WEIGHT_KEYS = {'prenorm_w_norm': 'mean |w| of norm-preceded matrices',
               'prenorm_eff_step': 'effective step |dw| / |w|',
               'proj_fired': 'AdamP / SGDP: share of params projected'}


def sigma_key(name: str, layer: int | None = None) -> str:
  """'attn.wq', 3 -> 'sigma_max/attn.wq/3'; 'head.kernel' -> 'sigma_max/head.kernel'."""
  return f'{SIGMA_PREFIX}{name}' + ('' if layer is None else f'/{layer}')


def parse_sigma_key(key: str) -> tuple[str, int | None] | None:
  """'sigma_max/attn.wq/3' -> ('attn.wq', 3); 'sigma_max/head.kernel' -> ('head.kernel',
  None); any other key -> None."""
  if not key.startswith(SIGMA_PREFIX):
    return None
  name, _, layer = key[len(SIGMA_PREFIX):].partition('/')
  return name, int(layer) if layer.isdigit() else None


def position_key(lo: int, hi: int) -> str:
  """The key of the val loss over input positions lo..hi (inclusive)."""
  return f'{POSITION_PREFIX}{lo}-{hi}'


@dataclasses.dataclass
class Lines:
  """metrics.jsonl as read: its JSON objects in order, and the lines that are not one."""
  objects: list[dict]
  bad: list[tuple[int, str]]     # (1-based line number, the line's start) of dropped lines
  count: int                     # lines in the file

  def bad_before_end(self) -> list[tuple[int, str]]:
    """The dropped lines other than a last one (cut short while the run was writing it)."""
    return [(i, text) for i, text in self.bad if i < self.count]


def read(path: str | pathlib.Path) -> Lines:
  """Every JSON object of a metrics.jsonl (none when there is no file)."""
  path = pathlib.Path(path)
  if not path.exists():
    return Lines([], [], 0)
  lines = path.read_text(errors='replace').splitlines()
  objects, bad = [], []
  for i, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      rec = None
    if isinstance(rec, dict):
      objects.append(rec)
    else:
      bad.append((i, line[:60]))
  return Lines(objects, bad, len(lines))


def line(record: dict) -> str:
  """One record as its metrics.jsonl line."""
  return json.dumps(record) + '\n'


def read_json_object(path: pathlib.Path, warn: bool = False) -> dict | None:
  """A JSON file holding an object, or None when it is missing or is not one (with
  warn=True, a file that exists but is not one is named in a warning)."""
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
    if warn:
      warnings.warn(f'{path}: not valid JSON ({err}); ignored', stacklevel=3)
    return None
  if not isinstance(value, dict):
    if warn:
      warnings.warn(f'{path}: expected a JSON object, got {type(value).__name__}; ignored',
                    stacklevel=3)
    return None
  return value


def read_summary(run_dir: str | pathlib.Path, warn: bool = False) -> dict | None:
  """A run's summary.json (written when a session ends), or None when it has none."""
  return read_json_object(pathlib.Path(run_dir) / SUMMARY_FILE, warn)


def status_of(run_dir: str | pathlib.Path) -> str | None:
  """summary.json's status ('completed', 'diverged', 'preempted', 'failed'), or None when
  the run wrote no summary (yet)."""
  summary = read_summary(run_dir)
  status = summary.get('status') if summary else None
  return status if isinstance(status, str) else None
