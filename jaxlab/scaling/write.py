"""`launch.py fit DIR --law L`: a law fitted to a sweep's finished runs -> DIR/fit_<law>.md
(parameters with 95% intervals, goodness of fit, an optional prediction) and its plots.

  chinchilla  L(N, D) = E + A/N^alpha + B/D^beta, and the compute-optimal allocation
  isoflop     per budget a parabola in log N, then N_opt = G C^a, D_opt = C/(6 N_opt)
  frontier    L(C) = E + A/C^gamma through the envelope of the runs' val loss curves
  hparams     lr*(N, D) = a N^alpha D^beta (and B*(D) = b D^gamma when batch is swept)
  multiplier  growth's compute multiplier against scratch, both frontiers fitted

`--method M` picks the runs of one growth method (growth.method; 'none', the default, is
training from scratch); the multiplier compares `--method` (default: the one growth
method present) with 'none'.
"""
from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from jaxlab.rundir.layout import method_and_seed
from jaxlab.scaling import chinchilla, frontier, hparams, isoflop
from jaxlab.scaling.points import MissingData, Point, read_points

LAWS = ('chinchilla', 'isoflop', 'frontier', 'hparams', 'multiplier')
_COUNT_TEXT = {'all': 'all parameters (Chinchilla\'s N)',
               'non_embedding': 'parameters without the token embedding and output head'}


def _g(v: float) -> str:
  return '—' if v is None or (isinstance(v, float) and math.isnan(v)) else (
      'inf' if math.isinf(v) else f'{v:.4g}')


def _ci(lo: float, hi: float) -> str:
  return '—' if math.isnan(lo) else f'[{_g(lo)}, {_g(hi)}]'


def parse_predict(text: str | None, keys: tuple[str, ...]) -> dict[str, float]:
  """'N=1e7,D=2e8' -> {'N': 1e7, 'D': 2e8}; MissingData naming what is wrong."""
  if not text:
    return {}
  out = {}
  for part in text.split(','):
    key, _, value = part.partition('=')
    try:
      out[key.strip()] = float(value)
    except ValueError:
      raise MissingData(f'--predict {text!r}: {part!r} is not KEY=NUMBER') from None
  if set(out) != set(keys) or not all(v > 0 and math.isfinite(v) for v in out.values()):
    raise MissingData(f'--predict {text!r}: this law predicts from '
                      f'{",".join(k + "=<number > 0>" for k in keys)}')
  return out


def _figure():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


E_UNDETERMINED = 1e-6   # E below this (in loss units) is the fit sending it to 0


def _e_note(e: float) -> list[str]:
  """A line for a fit whose irreducible loss went to 0: the runs do not determine it, and
  its interval (every refit starts near 0 and stays there) means nothing."""
  if e >= E_UNDETERMINED:
    return []
  return ['', f'E went to 0 ({e:.2g}): these runs do not determine an irreducible loss (their '
          'losses span too little of the curve), so E\'s interval is not an interval, the '
          'power-law terms carry all of the loss, and an extrapolation assumes the loss falls '
          'as a pure power law.']


def _save(fig, prefix: pathlib.Path, suffix: str = '') -> str:
  """Saves `fig` as <prefix><suffix>.png beside the page; returns the file name."""
  name = f'{prefix.name}{suffix}.png'
  fig.savefig(prefix.with_name(name))
  return name


def _finish(ax, xlabel: str, ylabel: str, title: str = '', *, legend: bool = True,
            logy: bool = False) -> None:
  """The axes every fit plot shares: log x (and y), labels, title, a small legend."""
  ax.set_xscale('log')
  if logy:
    ax.set_yscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if legend:
    ax.legend(fontsize=7)


def _select(points: list[Point], method: str) -> list[Point]:
  chosen = [p for p in points if p.method == method]
  if not chosen:
    have = sorted({p.method for p in points})
    raise MissingData(f'no finished runs with growth.method={method!r} (the runs have '
                      f'{", ".join(have)})')
  return chosen


def _chinchilla(points, out: pathlib.Path, predict, boot: int) -> list[str]:
  try:
    fit = chinchilla.fit_chinchilla([p.n_params for p in points], [p.n_tokens for p in points],
                                    [p.loss for p in points], bootstrap=boot)
  except ValueError as e:
    raise MissingData(str(e)) from None
  lines = ['| parameter | estimate | 95% CI |', '|---|---|---|']
  lines += [f'| {k} | {_g(getattr(fit, k))} | {_ci(*fit.interval(k))} |'
            for k in ('E', 'A', 'B', 'alpha', 'beta')]
  c = max(p.flops for p in points)
  lines += ['', f'Compute-optimal allocation at C = {c:.3g} FLOPs (the largest run; C = 6 N D):', '',
            '| quantity | estimate | 95% CI |', '|---|---|---|']
  lines += [f'| {k} | {_g(v)} | {_ci(lo, hi)} |' for k, (v, lo, hi) in fit.allocation(c).items()]
  lines += ['', f'Goodness of fit: {fit.n_points} runs, SD of the log residuals '
            f'{fit.residual_sd:.4f} (Huber delta {fit.huber_delta:g}).'] + _e_note(fit.E)
  if predict:
    est, flo, fhi, rlo, rhi = fit.prediction(predict['N'], predict['D'])
    lines += ['', f'Prediction at N = {predict["N"]:.4g}, D = {predict["D"]:.4g}: L = {est:.4f}, '
              f'95% interval of the law {_ci(flo, fhi)}, of one new run {_ci(rlo, rhi)}.']
  fig, ax = _figure()
  sizes = sorted({p.n_params for p in points})
  for n in sizes:
    mine = sorted((p for p in points if p.n_params == n), key=lambda p: p.n_tokens)
    line = ax.plot([p.flops for p in mine], [p.loss for p in mine], 'o', label=f'N={n:.3g}')
    ds = np.geomspace(min(p.n_tokens for p in mine), max(p.n_tokens for p in mine), 30)
    ratio = np.mean([p.flops / p.n_tokens for p in mine])
    ax.plot(ds * ratio, [fit.predict(n, d) for d in ds], '-', color=line[0].get_color())
  _finish(ax, 'FLOPs', 'final val loss', 'L(N, D) fit (lines) and runs (points)')
  curves = _save(fig, out)
  fig, ax = _figure()
  ax.axhline(0, color='grey', lw=0.5)
  ax.plot([p.n_params for p in points], fit.residuals, 'o')
  _finish(ax, 'N', 'log L - log L_hat', 'residuals', legend=False)
  residuals = _save(fig, out, '_residuals')
  return lines + ['', f'![fit]({curves})', f'![residuals]({residuals})']


def _law_rows(law, names) -> list[str]:
  rows = ['| parameter | estimate | 95% CI |', '|---|---|---|',
          f'| coefficient | {_g(law.coef)} | {_ci(*law.coef_ci)} |']
  rows += [f'| exponent of {n} | {_g(e)} | {_ci(*ci)} |'
           for n, e, ci in zip(names, law.exponents, law.exponent_ci)]
  return rows + ['', f'{law.dof} residual degree(s) of freedom; SD of the log residuals '
                 f'{_g(law.residual_sd)}.']


def _isoflop(points, out: pathlib.Path, predict, boot: int) -> list[str]:
  try:
    fit = isoflop.fit_isoflop([p.flops for p in points], [p.n_params for p in points],
                              [p.loss for p in points])
  except ValueError as e:
    raise MissingData(str(e)) from None
  lines = ['| budget (FLOPs) | sizes | N_opt | note |', '|---|---|---|---|']
  lines += [f'| {pr.flops:.3g} | {len(pr.n_params)} | {_g(pr.n_opt)} | {pr.why} |'
            for pr in fit.profiles]
  lines += ['', 'N_opt = G C^a:', ''] + _law_rows(fit.n_law, ['C'])
  lines += ['', 'D_opt = C / (6 N_opt):', ''] + _law_rows(fit.d_law, ['C'])
  if predict:
    alloc = fit.allocation(predict['C'])
    lines += ['', f'Prediction at C = {predict["C"]:.4g}: ' + ', '.join(
        f'{k} = {_g(v)} {_ci(lo, hi)}' for k, (v, lo, hi) in alloc.items()) + '.']
  fig, ax = _figure()
  for pr in fit.profiles:
    line = ax.plot(pr.n_params, pr.loss, 'o', label=f'C={pr.flops:.3g}')
    if not math.isnan(pr.coeffs[0]):
      ns = np.geomspace(min(pr.n_params), max(pr.n_params), 40)
      ax.plot(ns, [pr.curve(n) for n in ns], '-', color=line[0].get_color())
    if pr.n_opt:
      ax.plot([pr.n_opt], [pr.curve(pr.n_opt)], '*', ms=12, color=line[0].get_color())
  _finish(ax, 'N', 'final val loss', 'isoFLOP profiles (stars: N_opt)')
  return lines + ['', f'![isoflop]({_save(fig, out)})']


def _frontier_lines(name: str, fit) -> list[str]:
  return [f'| {name} | {_g(fit.E)} {_ci(*fit.interval("E"))} | {_g(fit.A)} {_ci(*fit.interval("A"))} '
          f'| {_g(fit.gamma)} {_ci(*fit.interval("gamma"))} | {fit.n_points} | {fit.residual_sd:.4f} |']


_FRONTIER_HEAD = ['| runs | E [95% CI] | A [95% CI] | gamma [95% CI] | envelope points | SD log residual |',
                  '|---|---|---|---|---|---|']


def _fit_frontier(points, boot):
  try:
    return frontier.fit_frontier_curves([p.curve for p in points], bootstrap=boot,
                                        groups=[method_and_seed(p.label)[0] for p in points])
  except ValueError as e:
    raise MissingData(f'growth.method={points[0].method}: {e}') from None


def _plot_frontier(ax, points, fit, label):
  line = None
  for p in points:
    line = ax.plot(*p.curve, '-', lw=0.6, alpha=0.35,
                   **({'color': line[0].get_color()} if line else {'label': label}))
  cs = np.geomspace(min(p.flops for p in points), max(p.flops for p in points), 50)
  ax.plot(cs, [fit.predict(c) for c in cs], '-', color=line[0].get_color())


def _frontier(points, out: pathlib.Path, predict, boot: int) -> list[str]:
  fit = _fit_frontier(points, boot)
  lines = _FRONTIER_HEAD + _frontier_lines(points[0].method, fit) + _e_note(fit.E)
  if predict:
    lines += ['', f'Prediction at C = {predict["C"]:.4g}: L = {fit.predict(predict["C"]):.4f} '
              f'{_ci(*fit.predict_interval(predict["C"]))}.']
  fig, ax = _figure()
  _plot_frontier(ax, points, fit, points[0].method)
  _finish(ax, 'FLOPs', 'final val loss',
          'L(C) = E + A / C^gamma through the envelope of the runs\' curves', legend=False)
  return lines + ['', f'![frontier]({_save(fig, out)})']


def _multiplier(all_points, method, out: pathlib.Path, predict, boot: int) -> list[str]:
  scratch = _select(all_points, 'none')
  if method == 'none':
    grown = sorted({p.method for p in all_points} - {'none'})
    if len(grown) != 1:
      raise MissingData(f'--law multiplier compares one growth method with scratch: name it with '
                        f'--method (the runs have {", ".join(grown) or "no growth method"})')
    method = grown[0]
  mine = _select(all_points, method)
  fs, fm = _fit_frontier(scratch, boot), _fit_frontier(mine, boot)
  lines = _FRONTIER_HEAD + _frontier_lines('none', fs) + _frontier_lines(method, fm)
  lines += _e_note(min(fs.E, fm.E))
  groups = isoflop.budgets([p.flops for p in mine])   # one row per budget: its runs' mean FLOPs
  budgets = [float(np.mean([p.flops for p, g in zip(mine, groups) if g == b]))
             for b in sorted(set(groups))]
  if predict:
    budgets.append(predict['C'])
  lines += ['', f'Compute multiplier of {method}: the FLOPs scratch\'s frontier needs for the '
            f'loss {method}\'s frontier reaches at C, over C (above 1: {method} saves compute).',
            '', '| C (FLOPs) | multiplier | 95% CI |', '|---|---|---|']
  for c in budgets:
    m, lo, hi = frontier.compute_multiplier(fs, fm, c)
    lines.append(f'| {c:.3g} | {_g(m)} | {_ci(lo, hi)} |')
  fig, ax = _figure()
  _plot_frontier(ax, scratch, fs, 'none (scratch)')
  _plot_frontier(ax, mine, fm, method)
  _finish(ax, 'FLOPs', 'final val loss', 'frontiers')
  return lines + ['', f'![frontiers]({_save(fig, out)})']


def _hparams(points, out: pathlib.Path, predict, boot: int) -> list[str]:
  lines = []
  fits = []
  usable = [hparams.HparamPoint(p.n_params, p.n_tokens, p.lr, p.batch, p.seed, p.loss)
            for p in points if p.lr and p.batch]
  for swept in ('lr', 'batch'):
    try:
      fits.append(hparams.fit_hparams(usable, swept))
    except ValueError as e:
      if swept == 'lr':
        raise MissingData(str(e)) from None
  for fit in fits:
    names = ['N', 'D'] if fit.swept == 'lr' else ['D']
    coef, exps = fit.published
    lines += ['', f'{fit.swept}* = c ' + ' '.join(f'{n}^e' for n in names) + ':', '']
    lines += ['| cell (N, D) | seeds | optimum |', '|---|---|---|']
    lines += [f'| {c.n_params:.3g}, {c.n_tokens:.3g} | {c.seeds} | '
              f'{_g(c.optimum) if c.optimum else "at the grid edge (left out)"} |' for c in fit.cells]
    lines += [''] + _law_rows(fit.law, names)
    lines += ['', f'Step Law (Li et al. 2025, non-embedding N): coefficient {coef}, exponents '
              + ', '.join(f'{n} {e}' for n, e in zip(names, exps)) + '.']
    if predict and fit.swept == 'lr':
      x = (predict['N'], predict['D'])
      lines += ['', f'Prediction at N = {x[0]:.4g}, D = {x[1]:.4g}: lr* = {fit.law.predict(*x):.4g} '
                f'{_ci(*fit.law.predict_interval(*x, new=True))}.']
  fig, ax = _figure()
  lr_fit = fits[0]
  good = [c for c in lr_fit.cells if c.optimum]
  ax.plot([c.n_params for c in good], [c.optimum for c in good], 'o', label='optimum per cell')
  ax.plot([c.n_params for c in good], [lr_fit.law.predict(c.n_params, c.n_tokens) for c in good],
          'x', label='fitted law')
  _finish(ax, 'N', 'lr*', logy=True)
  return lines + ['', f'![lr*]({_save(fig, out)})']


def write_fit(path: str | os.PathLike, law: str, *, method: str = 'none', count: str | None = None,
              predict: str | None = None, bootstrap: int = 200) -> pathlib.Path:
  """Fits `law` to the runs under `path`; writes fit_<law>.md (fit_<law>_<method>.md for
  a growth method's runs) and plots there. Raises
  MissingData (one line) when the runs cannot support it."""
  if law not in LAWS:
    raise MissingData(f'--law {law!r}: expected one of {", ".join(LAWS)}')
  count = count or ('non_embedding' if law == 'hparams' else 'all')
  keys = {'chinchilla': ('N', 'D'), 'hparams': ('N', 'D')}.get(law, ('C',))
  wanted = parse_predict(predict, keys)
  root = pathlib.Path(path)
  points = read_points(root, count)
  # fit_<law>.md, fit_<law>_<method>.md for a growth method's runs (plots alike).
  prefix = root / (f'fit_{law}' if method == 'none' or law == 'multiplier' else f'fit_{law}_{method}')
  if law == 'multiplier':
    body = _multiplier(points, method, prefix, wanted, bootstrap)
  else:
    chosen = _select(points, method)
    body = {'chinchilla': _chinchilla, 'isoflop': _isoflop, 'frontier': _frontier,
            'hparams': _hparams}[law](chosen, prefix, wanted, bootstrap)
  head = [f'# {law} fit: {root}', '',
          f'{len(points)} finished run(s)' + ('' if law == 'multiplier' else
                                              f', those with growth.method={method} fitted') +
          f'; N counts {_COUNT_TEXT[count]}; FLOPs are the runs\' own '
          'accounting (summary.json); loss is the final val loss. Intervals: 95%, '
          'docs/scaling.md says how each is made and what its coverage is.', '']
  out = prefix.with_name(prefix.name + '.md')
  out.write_text('\n'.join(head + body) + '\n')
  return out
