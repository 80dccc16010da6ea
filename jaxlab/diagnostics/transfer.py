"""Hyperparameter transfer across widths, read from a sweep's runs (experiments/
mup_transfer.py, wd_transfer.py): does the best value found at one width stay best at
the others?

A sweep is a transfer study for a hyperparameter when its runs span at least two
model.d_model values and two values of the hyperparameter:
  lr            optim.lr, one panel per model.parametrization (sp / mup);
  weight decay  optim.weight_decay, one panel per optim.wd_width_exponent; with logged
                top singular values (train.spectral_every) also the ratio of the hidden
                matrices' sigma_max between each width and the narrowest, per exponent.
The report gets, per study, a plot of final val loss against the hyperparameter (one
curve per width; log2 x axis), the best value per width, and how far (in powers of 2)
it moves from the narrowest width's.
"""
from __future__ import annotations

import math
import statistics

from jaxlab.diagnostics import spectral

STUDIES = {   # hyperparameter key -> (label, panel key)
    'optim.lr': ('lr', 'model.parametrization'),
    'optim.weight_decay': ('weight decay', 'optim.wd_width_exponent'),
}


def _get(run, dotted: str):
  node = run.config
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _val_loss(run) -> float | None:
  from jaxlab.run_data import summarize
  v = summarize(run)['final_val_loss']
  return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def studies(runs) -> list[str]:
  """The hyperparameter keys the runs form transfer studies of."""
  widths = {_get(r, 'model.d_model') for r in runs}
  return [key for key in STUDIES
          if len(widths) >= 2 and len({_get(r, key) for r in runs}) >= 2]


def _points(runs, key: str) -> dict:
  """{panel value: {width: [(x, final val loss or None, run)]}}, x ascending."""
  panel_key = STUDIES[key][1]
  out: dict = {}
  for r in runs:
    out.setdefault(_get(r, panel_key), {}).setdefault(_get(r, 'model.d_model'), []).append(
        (float(_get(r, key)), _val_loss(r), r))
  for panel in out.values():
    for pts in panel.values():
      pts.sort(key=lambda p: p[0])
  return out


def best_rows(runs, key: str) -> list[dict]:
  """One row per (panel, width): the best value, its loss, and its log2 distance from the
  narrowest width's best value (0 = transferred exactly)."""
  rows = []
  for panel, by_width in sorted(_points(runs, key).items(), key=lambda kv: str(kv[0])):
    base = None
    for width in sorted(by_width):
      done = [(x, loss) for x, loss, _ in by_width[width] if loss is not None]
      if not done:
        continue
      x, loss = min(done, key=lambda p: p[1])
      base = x if base is None else base
      rows.append({'panel': panel, 'width': width, 'best': x, 'val_loss': loss,
                   'shift_log2': math.log2(x / base), 'runs': len(by_width[width]),
                   'finished': len(done)})
  return rows


def sigma_ratio_rows(runs) -> list[dict]:
  """Per (exponent, weight decay, width > narrowest): the geometric mean over hidden
  matrices and layers of sigma_max(width) / sigma_max(narrowest width), at the last
  step either run logged them."""
  rows = []
  for exponent, by_width in sorted(_points(runs, 'optim.weight_decay').items()):
    widths = sorted(by_width)
    finals = {w: {x: _final_sigmas(r) for x, _, r in by_width[w]} for w in widths}
    for w in widths[1:]:
      for x, sig in sorted(finals[w].items()):
        base = finals[widths[0]].get(x)
        pairs = [(sig[k], base[k]) for k in sig if base and k in base and base[k] > 0]
        if pairs:
          ratio = math.exp(statistics.fmean(math.log(a / b) for a, b in pairs))
          rows.append({'exponent': exponent, 'weight_decay': x, 'width': w,
                       'base_width': widths[0], 'ratio': ratio, 'matrices': len(pairs)})
  return rows


def _final_sigmas(run) -> dict[str, float]:
  """The hidden matrices' sigma_max at the last step that logged them (the run's model's
  hidden matrices, from the parameter schema)."""
  recs = [r for r in run.metrics if any(k.startswith(spectral.PREFIX) for k in r)]
  if not recs:
    return {}
  from jaxlab.config import from_dict
  from jaxlab.config_types import ModelConfig
  hidden = spectral.hidden_names(from_dict(run.config.get('model', {}), ModelConfig))
  out = {}
  for k, v in recs[-1].items():
    parsed = spectral.parse_key(k)
    if parsed and parsed[0] in hidden and isinstance(v, (int, float)):
      out[k] = float(v)
  return out


def render(runs) -> str:
  text = ''
  for key in studies(runs):
    label, panel_key = STUDIES[key]
    text += (f'\n## Transfer across widths: {label}\n\nBest {label} per width (final val '
             f'loss), per {panel_key}; shift = log2(best / best at the narrowest width).\n\n'
             f'| {panel_key} | width | best {label} | val loss | shift (log2) | finished |\n'
             '|---|---|---|---|---|---|\n')
    for r in best_rows(runs, key):
      text += (f"| {r['panel']} | {r['width']} | {r['best']:.4g} | {r['val_loss']:.4f} | "
               f"{r['shift_log2']:+.2f} | {r['finished']}/{r['runs']} |\n")
    text += f'\n![{label} transfer](transfer_{key.split(".")[1]}.png)\n'
    if key == 'optim.weight_decay':
      rows = sigma_ratio_rows(runs)
      if rows:
        text += ('\nsigma_max(width) / sigma_max(narrowest width), geometric mean over the '
                 'hidden matrices and layers, at the last logged step:\n\n'
                 '| wd_width_exponent | weight decay | widths | ratio |\n|---|---|---|---|\n')
        for r in rows:
          text += (f"| {r['exponent']} | {r['weight_decay']:g} | {r['width']} / "
                   f"{r['base_width']} | {r['ratio']:.3f} |\n")
  return text


def plot(runs, key: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  label, panel_key = STUDIES[key]
  points = _points(runs, key)
  panels = sorted(points, key=str)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False,
                           sharey=True)
  cmap = plt.get_cmap('viridis')
  for ax, panel in zip(axes[0], panels):
    widths = sorted(points[panel])
    for i, width in enumerate(widths):
      pts = [(x, loss) for x, loss, _ in points[panel][width] if loss is not None]
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', label=f'width {width}',
                color=cmap(i / max(len(widths) - 1, 1)))
    ax.set_xscale('log', base=2)
    ax.set_xlabel(label)
    ax.set_title(f'{panel_key}={panel}')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('final val loss')
  axes[0][-1].legend()
  fig.tight_layout()
  return fig


def write(runs, root) -> str:
  """Saves transfer_<name>.png for each study the runs form; returns the report text."""
  for key in studies(runs):
    plot(runs, key).savefig(root / f'transfer_{key.split(".")[1]}.png', bbox_inches='tight')
  return render(runs)
