"""Spectral diagnostic (notes §4, Fan et al.): the top singular value sigma_max of every
matrix param, each layer's slice on its own. Under lr-coupled AdamW it settles near
sqrt(lr / wd) * d^0.75; equal values at two widths mean the sublayer's gain transfers.

Metric keys in metrics.jsonl (flat, one per matrix per layer):
  sigma_max/<module>.<param>/<layer>   a matrix under the scanned 'layers' axis, e.g.
                                       sigma_max/attn.wq/0, sigma_max/mlp.w_down/3
  sigma_max/<module>.<param>           a matrix outside it: sigma_max/embed.embedding,
                                       sigma_max/head.kernel
<module>.<param> is the param's path with the 'layers' level dropped. Each weight is
read as a fan-in x fan-out matrix, its fan-in dims from the parameter schema
(jaxlab.models.schema): wq / wk / wv as D x (H*K), wo as (H*K) x D, the embedding as
V x D, the head as D x V. Vectors (norm gains) are skipped.

Cost: a full SVD of every matrix, O(L * D^2 * F) per call (and O(V * D^2) for the
embedding / head), so the loop calls it only every train.spectral_every steps, jitted
on its own, outside the train step (nothing is computed when it is off).
In the report: spectral.png (sigma_max vs step, one panel per matrix type, one line per
layer) and a table of the final values.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlab.config_types import ModelConfig
from jaxlab.models import schema

PREFIX = 'sigma_max/'
# Panel order in the plot and table; names not listed follow, sorted.
ORDER = ('attn.wq', 'attn.wk', 'attn.wv', 'attn.wo', 'mlp.w_gate', 'mlp.w_up', 'mlp.w_down',
         'embed.embedding', 'head.kernel')


def matrix_name(path: tuple[str, ...]) -> str:
  """The metric name of a param path: ('layers', 'attn', 'wq') -> 'attn.wq'."""
  return '.'.join(path[1:] if path[:1] == ('layers',) else path)


def top_singular_values(params, cfg: ModelConfig) -> dict[str, jax.Array]:
  """{metric key: sigma_max} (float32 scalars) for every matrix param of Transformer(cfg)
  and every layer slice. Jittable with cfg static (jax.jit(..., static_argnums=1)); a
  changed model (growth) retraces."""
  out = {}

  def one(param: schema.ParamSpec, w, path):
    if not param.is_matrix:
      return
    fan_in, fan_out = param.fan_dims()
    batch = tuple(i for i in range(w.ndim) if i not in fan_in + fan_out)
    w_LxIxO = jnp.transpose(w, batch + fan_in + fan_out)
    L = math.prod(w.shape[i] for i in batch)
    w_LxIxO = w_LxIxO.reshape(L, math.prod(w.shape[i] for i in fan_in), -1)
    s_L = jnp.linalg.svd(w_LxIxO.astype(jnp.float32), compute_uv=False)[:, 0]  # descending
    name = matrix_name(path)
    if param.stacked:
      out.update({f'{PREFIX}{name}/{i}': s_L[i] for i in range(L)})
    else:
      out[PREFIX + name] = s_L[0]

  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = schema.dict_keys(path)
    one(schema.spec_at(cfg, names), w, names[1:] if names[:1] == ('params',) else names)
  return out


def hidden_names(cfg: ModelConfig) -> set[str]:
  """Metric names of the hidden matrices (the 'hidden' role) of Transformer(cfg)."""
  return {matrix_name(path) for path, p in schema.specs(cfg).items()
          if p.role == 'hidden' and p.is_matrix}


def parse_key(key: str) -> tuple[str, int | None] | None:
  """'sigma_max/attn.wq/3' -> ('attn.wq', 3); 'sigma_max/head.kernel' -> ('head.kernel',
  None); any other key -> None."""
  if not key.startswith(PREFIX):
    return None
  name, _, layer = key[len(PREFIX):].partition('/')
  return name, int(layer) if layer.isdigit() else None


def _by_matrix(record: dict) -> dict[str, dict[int | None, float]]:
  """{matrix name: {layer (None outside the layers axis): sigma_max}} of one record."""
  out: dict[str, dict] = {}
  for key, value in record.items():
    parsed = parse_key(key)
    if parsed is not None and isinstance(value, (int, float)):
      out.setdefault(parsed[0], {})[parsed[1]] = float(value)
  return out


def _ordered(names) -> list[str]:
  names = set(names)
  return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def _records(run) -> list[dict]:
  return [r for r in run.metrics if any(k.startswith(PREFIX) for k in r)]


def has_stats(runs) -> bool:
  return any(_records(run) for run in runs)


def summary_rows(runs) -> list[dict]:
  """Per run with sigma keys: its last such step and {matrix: (mean, max) over layers}."""
  rows = []
  for run in runs:
    recs = _records(run)
    if recs:
      final = _by_matrix(recs[-1])
      rows.append({'run': run.label, 'step': recs[-1]['step'],
                   'sigma': {n: (sum(v.values()) / len(v), max(v.values()))
                             for n, v in final.items()}})
  return rows


def render(rows: list[dict]) -> str:
  names = _ordered(n for r in rows for n in r['sigma'])

  def cell(pair):
    if pair is None:
      return '—'
    mean, top = pair
    return f'{mean:.3g}' if mean == top else f'{mean:.3g} / {top:.3g}'
  lines = ['## Spectral norms', '',
           'Top singular value of each matrix at the last step that logged it: mean over '
           'layers / max over layers (one value outside the layer stack). Keys '
           '`sigma_max/<matrix>/<layer>` in metrics.jsonl.', '',
           '| run | step | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 2) + '|']
  for r in rows:
    lines.append(f"| {r['run']} | {r['step']} | "
                 + ' | '.join(cell(r['sigma'].get(n)) for n in names) + ' |')
  return '\n'.join(lines) + '\n\n![spectral norms](spectral.png)\n'


def plot(runs):
  """sigma_max vs step: one panel per matrix type, one line per layer. One run: a colour
  per layer (dark = first); several: a colour per run. A Figure on an Agg canvas."""
  import matplotlib
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.lines import Line2D

  from jaxlab.plotting import styles
  series = []   # per run: {name: {layer: [(step, sigma)]}}
  for run in runs:
    per: dict[str, dict] = {}
    for r in _records(run):
      for name, layers in _by_matrix(r).items():
        for layer, value in layers.items():
          per.setdefault(name, {}).setdefault(layer, []).append((r['step'], value))
    series.append(per)
  names = _ordered(n for per in series for n in per)
  cols = min(5, len(names))
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(3.6 * cols + 1.5, 3.0 * rows), dpi=110, layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  single = len(runs) == 1
  cmap = matplotlib.colormaps['viridis']
  for ax, name in zip(axes, names):
    for per, (color, ls) in zip(series, styles(len(runs))):
      layers = per.get(name, {})
      n_layers = max((k for k in layers if k is not None), default=0) + 1
      for layer, pts in sorted(layers.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        c = cmap(0.9 * (layer or 0) / max(n_layers - 1, 1)) if single else color
        ax.plot(*zip(*pts), color=c, ls=ls, lw=1.1, alpha=1.0 if single else 0.7)
    ax.set_title(name, fontsize='medium')
    ax.set_xlabel('step')
    ax.grid(True, alpha=0.3)
  for ax in axes[len(names):]:
    ax.set_visible(False)
  axes[0].set_ylabel('top singular value')
  if single:
    handles = [Line2D([], [], color=cmap(0.0), label='first layer'),
               Line2D([], [], color=cmap(0.9), label='last layer')]
  else:
    handles = [Line2D([], [], color=c, ls=ls, label=run.label)
               for run, (c, ls) in zip(runs, styles(len(runs)))]
  axes[cols - 1].legend(handles=handles, loc='upper left', bbox_to_anchor=(1.02, 1.0),
                        frameon=False, fontsize='small' if len(handles) <= 12 else 'x-small')
  return fig
