"""Plot styling shared by the report, the savings table and the diagnostics."""
from __future__ import annotations

from typing import Any


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
