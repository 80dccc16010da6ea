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

Seeds (`launch.py sweep --seeds N`, runs `<label>/seed<k>`): the curves and the best grid
value use the mean val loss over seeds. Each seed's optimum is refined between grid
points by the parabola through its best point and the two neighbours (in log2 of the
hyperparameter; a best point at the grid's edge stays there and is flagged: the optimum
may lie beyond). The table gives that optimum's mean ± 95% CI over seeds, and its shift
from the narrowest width's optimum, paired by seed (seed k of every width shares its
data order), with a t-interval (jaxlab.report.stats); a shift whose CI includes 0 is "not
resolved". With k > 1 shifts in a study's table (every width but the narrowest, in every
panel) the shifts are k comparisons: their intervals are Holm-adjusted over the k (the
report's default, as for savings and paired differences), the unadjusted ones shown
beside them.

sigma_max ratios (weight decay): per seed, the mean over the hidden matrices and layers
of log(sigma_max(width) / sigma_max(narrowest width)) (seed k with seed k); over seeds a
t-interval of that mean, exponentiated: the geometric-mean ratio with its 95% CI. Beside
it, Fan et al.'s equilibrium prediction (width / narrowest)^(1/4 - e/2) for muP with
lr-coupled AdamW (sigma_max ~ sqrt(eta / lambda) d^(3/4), eta ~ 1/d, lambda ~ d^e;
docs/scaling_rules.md).
"""
from __future__ import annotations

import math
import statistics

from jaxlab.config.loading import flatten
from jaxlab.report import spectral, stats
from jaxlab.rundir.layout import method_and_seed
from jaxlab.rundir.read import summarize

STUDIES = {   # hyperparameter key -> (label, panel key)
    'optim.lr': ('lr', 'model.parametrization'),
    'optim.weight_decay': ('weight decay', 'optim.wd_width_exponent'),
}


def _get(run, dotted: str):
  return flatten(run.config).get(dotted)


def _val_loss(run) -> float | None:
  v = summarize(run)['final_val_loss']
  return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def studies(runs) -> list[str]:
  """The hyperparameter keys the runs form transfer studies of."""
  widths = {_get(r, 'model.d_model') for r in runs}
  return [key for key in STUDIES
          if len(widths) >= 2 and len({_get(r, key) for r in runs}) >= 2]


def _points(runs, key: str) -> dict:
  """{panel value: {width: [(x, seed, final val loss or None, run)]}}, x ascending."""
  panel_key = STUDIES[key][1]
  out: dict = {}
  for r in runs:
    out.setdefault(_get(r, panel_key), {}).setdefault(_get(r, 'model.d_model'), []).append(
        (float(_get(r, key)), method_and_seed(r.label)[1], _val_loss(r), r))
  for panel in out.values():
    for pts in panel.values():
      pts.sort(key=lambda p: (p[0], str(p[1])))
  return out


def _by_seed(points) -> dict:
  """{seed: [(x, loss)] ascending in x, finished runs only}."""
  out: dict = {}
  for x, seed, loss, _ in points:
    if loss is not None:
      out.setdefault(seed, []).append((x, loss))
  return out


def _losses_at(seeds: dict) -> dict:
  """{x: [loss of each seed that finished x]}, x ascending."""
  out: dict = {}
  for curve in seeds.values():
    for x, loss in curve:
      out.setdefault(x, []).append(loss)
  return dict(sorted(out.items()))


def seed_optimum(curve: list[tuple[float, float]]) -> tuple[float, bool]:
  """(log2 of the optimum, at the grid's edge?) of one seed's (x, loss) points: the
  parabola through the best point and its neighbours, in log2 x."""
  i = min(range(len(curve)), key=lambda j: curve[j][1])
  if 0 < i < len(curve) - 1:
    part = curve[i - 1:i + 2]
    return stats.parabola_vertex([math.log2(x) for x, _ in part], [y for _, y in part]), False
  return math.log2(curve[i][0]), len(curve) > 1


def best_rows(runs, key: str) -> list[dict]:
  """One row per (panel, width): the best grid value of the seed-mean loss, that loss,
  its log2 distance from the narrowest width's best (0 = transferred exactly); and over
  seeds the refined optimum (log2, an Interval) and its shift from the narrowest
  width's, paired by seed (an Interval; None at the narrowest width itself)."""
  rows, per_seed = [], []
  for panel, by_width in sorted(_points(runs, key).items(), key=lambda kv: str(kv[0])):
    base = base_opt = None
    for width in sorted(by_width):
      pts = by_width[width]
      seeds = _by_seed(pts)
      if not seeds:
        continue
      mean = {x: statistics.fmean(losses) for x, losses in _losses_at(seeds).items()}
      x = min(mean, key=lambda v: mean[v])
      base = x if base is None else base
      opts = {k: seed_optimum(c) for k, c in seeds.items()}
      opt = {k: o for k, (o, _) in opts.items()}
      is_base = base_opt is None
      base_opt = opt if is_base else base_opt
      shifts = None if is_base else stats.paired_differences(opt, base_opt)
      rows.append({'panel': panel, 'width': width, 'best': x, 'val_loss': mean[x],
                   'shift_log2': math.log2(x / base), 'runs': len(pts),
                   'finished': sum(p[2] is not None for p in pts), 'seeds': len(seeds),
                   'optimum_log2': stats.t_interval(opt.values()),
                   'edge': any(e for _, e in opts.values()),
                   'shift': None if shifts is None else stats.t_interval(shifts)})
      per_seed.append(shifts)
  _holm(rows, per_seed)
  return rows


def _holm(rows: list[dict], per_seed: list) -> None:
  """With k > 1 shifts that have an interval (two seeds or more), each one's interval is
  Holm-adjusted over the k; the unadjusted one is kept as 'shift_unadjusted', the
  adjusted p-value as 'holm_p'. per_seed: each row's per-seed shifts (None: the
  reference width)."""
  shifted = [(r, xs) for r, xs in zip(rows, per_seed) if xs is not None and len(xs) >= 2]
  if len(shifted) >= 2:
    for (row, _), (iv, p_adj) in zip(shifted, stats.holm_intervals([xs for _, xs in shifted])):
      row['shift_unadjusted'], row['shift'], row['holm_p'] = row['shift'], iv, p_adj


def fan_prediction(width: int, base_width: int, exponent: float) -> float:
  """Fan et al.'s equilibrium sigma_max ratio (width / base)^(1/4 - e/2) under muP with
  lr-coupled AdamW and the hidden decay lambda x m^e (docs/scaling_rules.md)."""
  return (width / base_width) ** (0.25 - exponent / 2)


def sigma_ratio_rows(runs) -> list[dict]:
  """Per (exponent, weight decay, width > narrowest): sigma_max(width) / sigma_max(narrowest
  width) of the hidden matrices at the last step either run logged them: per seed the
  mean over matrices and layers of the log ratio (seed k with seed k); 'ratio' the
  geometric mean over seeds, 'interval' its 95% CI (t over seeds in log space,
  exponentiated: [low, high]), 'prediction' Fan et al.'s."""
  rows = []
  for exponent, by_width in sorted(_points(runs, 'optim.weight_decay').items()):
    widths = sorted(by_width)
    finals = {w: {(x, seed): spectral.final_hidden(r) for x, seed, _, r in by_width[w]} for w in widths}
    for w in widths[1:]:
      per_x: dict = {}
      for (x, seed), sig in finals[w].items():
        base = finals[widths[0]].get((x, seed))
        pairs = [(sig[k], base[k]) for k in sig if base and k in base and base[k] > 0]
        if pairs:
          per_x.setdefault(x, []).append(
              (statistics.fmean(math.log(a / b) for a, b in pairs), len(pairs)))
      for x, logs in sorted(per_x.items()):
        iv = stats.t_interval([v for v, _ in logs])
        low, high = (math.nan, math.nan) if math.isnan(iv.half) else (
            math.exp(iv.lo), math.exp(iv.hi))
        rows.append({'exponent': exponent, 'weight_decay': x, 'width': w,
                     'base_width': widths[0], 'ratio': math.exp(iv.estimate),
                     'interval': stats.Interval(math.exp(iv.estimate), math.nan, iv.n,
                                                low, high),
                     'prediction': fan_prediction(w, widths[0], float(exponent or 0.0)),
                     'matrices': logs[0][1], 'seeds': len(logs)})
  return rows


def _shift_cell(iv: stats.Interval | None) -> str:
  if iv is None:   # the narrowest width: the reference the others' shifts are taken from
    return '0 (reference)'
  text = iv.format('+.2f')
  return text + (' (not resolved)' if iv.n >= 2 and not iv.resolved else '')


def render(runs) -> str:
  text = ''
  for key in studies(runs):
    label, panel_key = STUDIES[key]
    rows = best_rows(runs, key)
    holm = [r for r in rows if 'holm_p' in r]
    text += (f'\n## Transfer across widths: {label}\n\nBest {label} per width (final val '
             f'loss, mean over seeds), per {panel_key}; shift = log2(best / best at the '
             f'narrowest width). Optimum: each seed\'s best {label} refined by a parabola '
             f'in log2 {label} through the best point and its neighbours, mean ± '
             f'{100 * stats.CONFIDENCE:.0f}% CI over seeds ({stats.T_METHOD}); its shift '
             'from the narrowest width is paired by seed; "not resolved": the CI includes 0; '
             '"edge": a seed\'s best is at the end of the grid (the optimum may lie '
             'beyond).'
             + (f' The {len(holm)} optimum shifts are Holm-adjusted over the {len(holm)} '
                '(resolved: the adjusted interval excludes 0; adjusted p beside the '
                'unadjusted interval).' if holm else '') + '\n\n'
             f'| {panel_key} | width | best {label} | val loss | shift (log2) | seeds | '
             f'optimum (log2 {label}) | optimum shift (log2{", Holm" if holm else ""}) | '
             + ('unadjusted (Holm p) | ' if holm else '') + 'finished |\n'
             '|---|---|---|---|---|---|---|---|---|' + ('---|' if holm else '') + '\n')
    for r in rows:
      extra = ''
      if holm:
        extra = ('| ' if r['shift'] is None else
                 f"{r['shift_unadjusted'].format('+.2f')} (p {r['holm_p']:.3g}) | ")
      text += (f"| {r['panel']} | {r['width']} | {r['best']:.4g} | {r['val_loss']:.4f} | "
               f"{r['shift_log2']:+.2f} | {r['seeds']} | "
               f"{r['optimum_log2'].format('+.2f')}{' (edge)' if r['edge'] else ''} | "
               f"{_shift_cell(r['shift'])} | {extra}{r['finished']}/{r['runs']} |\n")
    text += f'\n![{label} transfer](transfer_{key.split(".")[1]}.png)\n'
    if key == 'optim.weight_decay':
      ratios = sigma_ratio_rows(runs)
      if ratios:
        text += ('\nsigma_max(width) / sigma_max(narrowest width) of the hidden matrices at '
                 'the last logged step: geometric mean over matrices, layers and seeds, '
                 f'{100 * stats.CONFIDENCE:.0f}% CI over seeds (t on the per-seed mean log '
                 'ratio); prediction: Fan et al.\'s (width / narrowest)^(1/4 - e/2) '
                 '(muP, lr-coupled AdamW):\n\n'
                 '| wd_width_exponent | weight decay | widths | seeds | ratio | prediction |\n'
                 '|---|---|---|---|---|---|\n')
        for r in ratios:
          text += (f"| {r['exponent']} | {r['weight_decay']:g} | {r['width']} / "
                   f"{r['base_width']} | {r['seeds']} | {r['interval'].format('.3f')} | "
                   f"{r['prediction']:.3f} |\n")
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
      seeds = _by_seed(points[panel][width])
      at = _losses_at(seeds)
      cis = [stats.t_interval(at[x]) for x in at]
      if at:
        ax.errorbar(list(at), [c.estimate for c in cis],
                    yerr=[0 if math.isnan(c.half) else c.half for c in cis], fmt='o-',
                    capsize=2, color=cmap(i / max(len(widths) - 1, 1)),
                    label=f'width {width}' + (f' (n = {len(seeds)})' if len(seeds) > 1 else ''))
    ax.set_xscale('log', base=2)
    ax.set_xlabel(label)
    ax.set_title(f'{panel_key}={panel}')
    ax.grid(alpha=0.3)
  seeded = any(method_and_seed(r.label)[1] is not None for r in runs)
  axes[0][0].set_ylabel('final val loss' + (' (mean over seeds, bars: 95% CI)' if seeded else ''))
  axes[0][-1].legend()
  fig.tight_layout()
  return fig


def write(runs, root) -> str:
  """Saves transfer_<name>.png for each study the runs form; returns the report text."""
  for key in studies(runs):
    plot(runs, key).savefig(root / f'transfer_{key.split(".")[1]}.png', bbox_inches='tight')
  return render(runs)
