"""Replacing a file whole: a temporary file renamed over it, so a kill leaves either the
old file or the new one, never a part."""
from __future__ import annotations

import pathlib


def replace(path: pathlib.Path, data: str | bytes) -> None:
  """Writes `data` (text or bytes) to `path` through `<path>.tmp` and a rename; the
  temporary file is removed when the write fails."""
  tmp = path.with_name(path.name + '.tmp')
  try:
    if isinstance(data, bytes):
      tmp.write_bytes(data)
    else:
      tmp.write_text(data)
    tmp.replace(path)
  except OSError:
    tmp.unlink(missing_ok=True)
    raise
