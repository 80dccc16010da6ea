"""jaxlab.report.stats and the seed statistics of jaxlab.report.savings, against values computed by
hand (each computation is written out next to its assert). Synthetic numbers only: no
training, milliseconds."""
import math
import pathlib

import numpy as np
import pytest

from jaxlab.report import savings, stats
from jaxlab.rundir.read import Run, aligned, group_seeds, method_and_seed

# Student t quantiles t_{0.975, df} from a printed table (e.g. NIST/SEMATECH e-Handbook
# of Statistical Methods, 1.3.6.7.2, "Critical values of the Student's t distribution"),
# not from scipy: df 1, 2, 4, 9.
T_TABLE = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262}
T2 = 4.302653   # t_{0.975, 2} to 7 digits (the table's 4.303, rounded there)


def test_t_quantile_matches_the_printed_table():
  for df, t in T_TABLE.items():
    assert stats.t_quantile(df + 1) == pytest.approx(t, abs=5e-4)   # the table's rounding


def test_t_interval_by_hand():
  # values 1, 2, 4: mean 7/3; deviations -4/3, -1/3, 5/3; squares sum 16/9 + 1/9 + 25/9
  # = 42/9; s^2 = 42/9 / 2 = 7/3; s / sqrt(3) = sqrt(7/9); half = t_{0.975,2} sqrt(7/9).
  iv = stats.t_interval([1.0, 2.0, 4.0])
  assert iv.n == 3 and iv.estimate == pytest.approx(7 / 3, rel=1e-12)
  assert iv.half == pytest.approx(T2 * math.sqrt(7 / 9), rel=1e-6)   # T2 has 7 digits
  assert iv.half == pytest.approx(3.794582, rel=1e-6)
  assert iv.lo == pytest.approx(7 / 3 - 3.794582, rel=1e-6)


def test_resolved_means_the_interval_excludes_zero():
  assert stats.t_interval([1.0, 2.0, 4.0]).resolved is False   # 2.33 ± 3.79 spans 0
  assert stats.t_interval([-0.1, -0.05, -0.1]).resolved is True
  one = stats.t_interval([0.3])
  assert one.n == 1 and math.isnan(one.half) and not one.resolved
  assert one.format('.2f') == '0.30'                              # no ± without an interval
  assert stats.t_interval([]).estimate is None
  assert stats.t_interval([1.0, float('nan'), 3.0]).n == 2        # non-finite values dropped


def test_paired_differences_by_hand():
  # Per seed: 3.1 - 3.2, 3.0 - 3.05, 3.2 - 3.3 = -0.1, -0.05, -0.1 (seed 3 of the
  # baseline has no partner and is left out). Mean -0.25 / 3 = -0.083333; deviations
  # -1/60, +2/60, -1/60 -> s^2 = (1 + 4 + 1) / 3600 / 2 = 1/1200; s / sqrt(3) = 1/60;
  # half = t_{0.975,2} / 60.
  method = {0: 3.1, 1: 3.0, 2: 3.2}
  base = {0: 3.2, 1: 3.05, 2: 3.3, 3: 2.0}
  diffs = stats.paired_differences(method, base)
  assert diffs == pytest.approx([-0.1, -0.05, -0.1], abs=1e-12)
  iv = stats.t_interval(diffs)
  assert iv.estimate == pytest.approx(-0.25 / 3, rel=1e-9)
  assert iv.half == pytest.approx(T2 / 60, rel=1e-6)
  assert iv.resolved   # -0.0833 ± 0.0717
  # Unpaired, the same numbers are not resolved: the seeds' common offsets stay in.
  a, b = stats.t_interval(list(method.values())), stats.t_interval(list(base.values())[:3])
  assert a.hi > b.lo


def test_parabola_vertex_by_hand():
  assert stats.parabola_vertex([-1, 0, 1], [2, 1, 2]) == 0
  # Through (0, 1), (1, 0), (2, 3): y = a x^2 + b x + c with c = 1, a + b = -1,
  # 4a + 2b = 2 -> a = 2, b = -3; vertex -b / 2a = 0.75.
  assert stats.parabola_vertex([0, 1, 2], [1, 0, 3]) == pytest.approx(0.75)
  assert stats.parabola_vertex([0, 1, 2], [1, 1, 1]) == 1     # flat: the middle point


def test_seed_labels_and_alignment():
  assert method_and_seed('stack_7pct/seed2') == ('stack_7pct', 2)
  assert method_and_seed('optim.lr=1e-3') == ('optim.lr=1e-3', None)
  assert method_and_seed('a/seed1/b') == ('a/seed1/b', None)
  a = _run('m/seed0', [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)])
  b = _run('m/seed1', [(1.0, 3.5), (2.0, 2.5), (3.0, 1.5)])
  del b.metrics[1]['val_loss']                            # no evaluation at step 2
  xs, ys = aligned([a, b], 'val_loss', 'flops')
  assert xs == [1.0, 3.0] and ys == [[3.0, 1.0], [3.5, 1.5]]
  assert list(group_seeds([a, b])) == ['m'] and list(group_seeds([a, b])['m']) == [0, 1]


def _run(label, points, events=()):
  """A Run whose evaluation i is at step i + 1, FLOPs points[i][0], val loss points[i][1]."""
  return Run(label=label, dir=pathlib.Path('.'), config={}, summary=None, events=list(events),
             metrics=[{'step': i + 1, 'flops': f, 'loss': v, 'val_loss': v}
                      for i, (f, v) in enumerate(points)])


FLOPS = [1.0, 2.0, 3.0, 4.0]
E = math.e
LOG_FLOPS = [1.0, E, E ** 2, E ** 3]      # log FLOPs 0, 1, 2, 3


def seeded_study():
  """Evaluations at log FLOPs 0, 1, 2, 3. Baseline seed k: [4, 3, 2, b_k], b = 0.9, 1.0,
  1.1 (target: their mean, 1.0). Method seed k: 3 - x + c_k at log FLOPs x, c = 0, 0.1,
  -0.1 (straight lines: the cubic through them is the line itself)."""
  runs = [_run(f'scratch/seed{k}', zip(LOG_FLOPS, [4.0, 3.0, 2.0, b]))
          for k, b in enumerate([0.9, 1.0, 1.1])]
  runs += [_run(f'stack/seed{k}', zip(LOG_FLOPS, [3.0 - x + c for x in range(4)]))
           for k, c in enumerate([0.0, 0.1, -0.1])]
  return runs


def test_savings_over_seeds_by_hand():
  rows, target = savings.method_rows(seeded_study(), 'scratch')
  by = {r['run']: r for r in rows}
  assert target == pytest.approx(1.0, abs=1e-12)
  stack = by['stack']
  # Mean method curve 3 - x meets 1.0 at x = 2: F = e^2 of F_baseline = e^3 (the
  # baseline's last evaluation): saving 1 - 1/e, speedup e - 1.
  assert stack['flops_to_target'].estimate == pytest.approx(E ** 2, rel=1e-9)
  assert stack['saving'].estimate == pytest.approx(1 - 1 / E, rel=1e-9)
  assert stack['speedup'].estimate == pytest.approx(E - 1, rel=1e-9)
  # The interval inverts the paired t-test along the curve: seed k's method minus its
  # baseline final is D_k(x) = 3 + c_k - b_k - x = a_k - x, a = 2.1, 2.1, 1.8: mean
  # 2.0 - x, s = sqrt((0.01 + 0.01 + 0.04) / 2) = sqrt(0.03) at every x. Not rejected
  # where |2 - x| <= t_{0.975,2} sqrt(0.03 / 3) = 0.430265: x in [1.5697, 2.4303].
  h = T2 * math.sqrt(0.03 / 3)
  f = stack['flops_to_target']
  assert f.lo == pytest.approx(E ** (2 - h), rel=2e-3) and f.hi == pytest.approx(E ** (2 + h), rel=2e-3)
  s = stack['saving']   # 1 - F / e^3
  assert s.lo == pytest.approx(1 - E ** (h - 1), rel=2e-3)
  assert s.hi == pytest.approx(1 - E ** (-1 - h), rel=2e-3)
  assert s.resolved and stack['speedup'].lo == pytest.approx(E ** (1 - h) - 1, rel=2e-3)
  # Tail means (last 3 evals): baseline (3 + 2 + b_k) / 3; method (2 + 1 + 0) / 3 + c_k.
  # Paired Δ = c_k - (b_k - 0.0) / 3 - 1 ... by seed: (3 + 3c_k - 5 - b_k) / 3.
  d = [(3 + 3 * c - 5 - b) / 3 for c, b in zip([0.0, 0.1, -0.1], [0.9, 1.0, 1.1])]
  delta = stack['delta_tail_val_loss']
  assert delta.estimate == pytest.approx(sum(d) / 3, rel=1e-9)
  assert delta.half == pytest.approx(stats.t_interval(d).half, rel=1e-12)
  base = by['scratch']
  assert base['saving'].estimate == pytest.approx(0.0, abs=1e-9) and base['n'] == 3
  assert base['delta_tail_val_loss'].estimate == 0.0
  # The CSV form: estimates, bounds and verdicts.
  flat = {r['run']: r for r in savings.flatten(rows)}
  assert flat['stack']['saving'] == s.estimate
  assert (flat['stack']['saving_lo'], flat['stack']['saving_hi']) == (s.lo, s.hi)
  assert flat['stack']['saving_resolved'] is True


def test_crossing_interval_against_scipy_t_interval():
  """The calibration interval equals scanning candidate FLOPs for where the seed-mean
  paired difference lies within the half-width of scipy's one-sample t confidence
  interval (an outside implementation) at the estimate."""
  from scipy import stats as scipy_stats
  from jaxlab.report import crossing
  rng = np.random.default_rng(3)
  flops = np.geomspace(1e12, 8e12, 9)
  x = np.log(flops)
  M = 3.0 - 0.4 * (x - x[0]) + rng.normal(0, 0.04, (4, 9))
  b = 2.6 + rng.normal(0, 0.04, 4)                   # crossed near log FLOPs x[0] + 1
  est, lo, hi = crossing.crossing_interval(flops, M, b, stats.t_quantile(4))
  grid = np.linspace(x[0], x[-1], 3001)
  D = M @ crossing.interpolation_weights(x, grid).T - b[:, None]
  at = np.argmin(np.abs(grid - np.log(est)))
  ci = scipy_stats.ttest_1samp(D[:, at], 0.0).confidence_interval(0.95)
  half = (ci.high - ci.low) / 2
  accepted = np.exp(grid[np.abs(D.mean(axis=0)) <= half])
  assert accepted.min() == pytest.approx(lo, rel=2e-3)
  assert accepted.max() == pytest.approx(hi, rel=2e-3)
  assert lo < est < hi
  # Where the interval reaches the last evaluation, the bound is open.
  est, lo, hi = crossing.crossing_interval(flops, M, b - 0.3, stats.t_quantile(4))
  assert hi == math.inf and lo < est


def test_saving_pvalue_decides_as_the_saving_interval():
  """Holm's step-down orders and tests the savings by p-values; they must come from the
  test the saving's interval inverts, or an 'adjusted' interval could stay open while its
  p-value rejects (a 0.008 beside an open interval in an earlier gstack_operators
  report). Over random 3-seed curves: the upper bound is open exactly when p >= alpha,
  at several alphas; and p is scipy's t distribution at the statistic."""
  from scipy import stats as scipy_stats
  from jaxlab.report import crossing
  rng = np.random.default_rng(11)
  flops = np.geomspace(1e12, 8e12, 12)
  x = np.log(flops)
  checked, outcomes = 0, set()
  for _ in range(120):
    M = 3.0 - 0.4 * (x - x[0]) + rng.normal(0, rng.uniform(0.01, 0.08), (3, 12))
    b = M[:, -1] + rng.normal(rng.uniform(-0.08, 0.02), 0.03, 3)
    t, n = crossing.last_evaluation_t(flops, M, b)
    p = stats.t_pvalue_of(t, n)
    assert p == pytest.approx(2 * scipy_stats.t.sf(t, n - 1), rel=1e-9, abs=1e-15)
    for alpha in (0.05, 0.025, 0.0125):
      if abs(p - alpha) < 1e-6:
        continue
      _, _, hi = crossing.crossing_interval(flops, M, b, stats.t_quantile(n, 1 - alpha))
      assert (hi == math.inf) == (p >= alpha), (p, alpha, hi)
      checked += 1
      outcomes.add(hi == math.inf)
  assert checked > 300 and outcomes == {True, False}


def test_holm_adjusted_intervals_by_hand():
  """Three methods against one baseline. p-values from scipy's paired t-test (an outside
  implementation); Holm by hand: sorted, the first is tested at 0.05 / 3, the second at
  0.05 / 2, the third at 0.05 / 1, stopping at the first that is not rejected."""
  from scipy import stats as scipy_stats
  deltas = {'a': [-0.30, -0.32, -0.28], 'b': [-0.10, -0.09, -0.12], 'c': [0.01, -0.02, 0.03]}
  p = {k: float(scipy_stats.ttest_1samp(v, 0.0).pvalue) for k, v in deltas.items()}
  assert p['a'] < p['b'] < p['c']
  assert p['a'] <= 0.05 / 3 and p['b'] <= 0.05 / 2 and p['c'] > 0.05   # a, b rejected
  got = dict(zip(deltas, stats.holm([p[k] for k in deltas])))
  assert got['a'][1] == pytest.approx(1 - 0.05 / 3) and got['b'][1] == pytest.approx(1 - 0.05 / 2)
  assert got['c'][1] == pytest.approx(1 - 0.05)
  assert got['a'][0] == pytest.approx(3 * p['a']) and got['b'][0] == pytest.approx(2 * p['b'])
  assert got['c'][0] == pytest.approx(p['c'])
  # Adjusted half-widths: t_{1 - alpha_i / 2, 2} s / sqrt(3).
  for k, level in (('a', 1 - 0.05 / 3), ('b', 1 - 0.05 / 2)):
    s = float(np.std(deltas[k], ddof=1))
    want = float(scipy_stats.t.ppf(1 - (1 - level) / 2, 2)) * s / math.sqrt(3)
    assert stats.t_interval(deltas[k], level).half == pytest.approx(want, rel=1e-12)
  # A failure stops the step-down: with p = 0.001, 0.04, 0.045, the second (0.04 > 0.025)
  # is not rejected, so the third keeps its level 0.05 / 2 even though 0.045 < 0.05.
  out = stats.holm([0.001, 0.04, 0.045])
  assert [level for _, level in out] == pytest.approx([1 - 0.05 / 3, 1 - 0.025, 1 - 0.025])
  assert [q for q, _ in out] == pytest.approx([0.003, 0.08, 0.08])


def test_a_report_with_three_methods_is_holm_adjusted():
  runs = seeded_study()
  for name, shift in (('zero', 0.3), ('random', -0.2)):
    runs += [_run(f'{name}/seed{k}', zip(LOG_FLOPS, [3.0 - x + c + shift for x in range(4)]))
             for k, c in enumerate([0.0, 0.12, -0.1])]
  rows, _ = savings.method_rows(runs, 'scratch')
  by = {r['run']: r for r in rows}
  for name in ('stack', 'zero', 'random'):
    adjusted, raw = by[name]['saving'], by[name]['saving_unadjusted']
    assert adjusted.lo <= raw.lo and adjusted.hi >= raw.hi       # wider, never narrower
    assert 0 < by[name]['holm_p_saving'] <= 1
  assert 'holm_p_delta' not in by['scratch']
  md = savings.render_savings(rows, 'scratch', 1.0)
  assert 'Holm-adjusted over 3 methods' in md and 'unadjusted' in md


def test_headlines_say_resolved_or_not():
  rows, _ = savings.method_rows(seeded_study(), 'scratch')
  stack = next(r for r in rows if r['run'] == 'stack')
  s = stack['saving']
  assert savings.headline(stack, 'scratch') == (
      f"stack reaches scratch's final val loss with {100 * s.estimate:.1f}% fewer FLOPs "
      f'(saving {s.format("+.1f", 100, "%")}, n = 3 seeds, 95% CI).')
  noisy = seeded_study()[:3] + [_run(f'zero/seed{k}', zip(LOG_FLOPS, ys)) for k, ys in enumerate(
      [[3.5, 2.5, 1.0, 0.4], [3.5, 2.5, 1.6, 1.3], [3.5, 2.5, 1.3, 0.9]])]
  rows, _ = savings.method_rows(noisy, 'scratch')
  zero = next(r for r in rows if r['run'] == 'zero')
  # Seed 1 ends above its baseline's final: the test does not reject up to the last
  # evaluation, so the interval is open there (no saving cannot be excluded).
  assert not zero['saving'].resolved and zero['saving'].lo == -math.inf
  assert '[-inf, ' in zero['saving'].format('+.1f', 100, '%')
  assert savings.headline(zero, 'scratch').startswith(
      'zero vs scratch: not resolved at this scale (saving ')
  md = savings.render_savings(rows, 'scratch', 1.0)
  assert '(not resolved)' in md and 'Student t-interval' in md and 'n = 3: t = 4.303' in md
  single = [_run('scratch', zip(FLOPS, [4.0, 3.0, 2.0, 1.0])),
            _run('stack', zip(FLOPS, [3.0, 2.0, 0.9, 0.5]))]
  rows, _ = savings.method_rows(single, 'scratch')
  assert 'no confidence interval' in savings.headline(rows[1], 'scratch')


def _opt_run(name, lr, seed, losses):
  config = {'name': f'seed{seed}', 'optim': {'name': name, 'lr': lr},
            'train': {'seed': seed, 'workdir': f'runs/x/{name}_{lr}'}, 'data': {'seed': seed}}
  run = _run(f'{name}_lr{lr}/seed{seed}', zip(FLOPS, losses))
  run.config = config
  return run


def test_paired_differences_in_one_config_key_by_hand():
  from jaxlab.report import paired
  # AdamP - AdamW at lr 1e-3, seed by seed: final losses 2.0 - 2.1, 2.2 - 2.25, 1.9 - 2.05
  # = -0.1, -0.05, -0.15: mean -0.1; deviations 0, 0.05, -0.05 -> s^2 = 0.005 / 2;
  # s / sqrt(3) = sqrt(0.0025 / 3); half = t_{0.975,2} x 0.028868 = 0.124207: the CI
  # [-0.224, +0.024] includes 0, so not resolved.
  runs = [_opt_run('adamw', 1e-3, k, [3.0, 2.6, 2.3, f]) for k, f in enumerate([2.1, 2.25, 2.05])]
  runs += [_opt_run('adamp', 1e-3, k, [3.0, 2.6, 2.3, f]) for k, f in enumerate([2.0, 2.2, 1.9])]
  runs += [_opt_run('adamp', 3e-3, 0, [3.0, 2.5, 2.2, 2.0])]          # no AdamW partner
  assert paired.parse('optim.name=adamw,sgd') == ('optim.name', ('adamw', 'sgd'))
  assert paired.parse('scratch') is None
  rows = {r['run']: r for r in paired.pair_rows(runs, 'optim.name', ('adamw', 'sgd'))}
  assert set(rows) == {'adamp_lr0.001', 'adamp_lr0.003'}
  row = rows['adamp_lr0.001']
  assert row['baseline'] == 'adamw_lr0.001'
  d = row['delta_final_val_loss']
  assert d.estimate == pytest.approx(-0.1, abs=1e-12)
  assert d.half == pytest.approx(T2 * math.sqrt(0.0025 / 3), rel=1e-6) and not d.resolved
  # Tail: the last 3 evaluations share 2.6 and 2.3, so the Δ is a third of the final's.
  assert row['delta_tail_val_loss'].estimate == pytest.approx(-0.1 / 3, abs=1e-12)
  assert rows['adamp_lr0.003']['baseline'] is None
  text = paired.render(list(rows.values()), 'optim.name', ('adamw', 'sgd'))
  assert '| adamp_lr0.001 | adamw_lr0.001 | 3 | -0.1000 ± 0.1242 (not resolved) |' in text
  with pytest.raises(ValueError, match=r'no run has optim.name in \{lion\}'):
    paired.pair_rows(runs, 'optim.name', ('lion',))


def test_paired_report_is_holm_adjusted_over_its_pairs():
  """Two pairs (AdamP - AdamW at two lrs): each Δ column is Holm-adjusted over the two,
  at the levels `stats.holm` gives for their paired t-tests' p-values."""
  from scipy import stats as scipy_stats
  from jaxlab.report import paired
  finals = {('adamw', 1e-3): [2.1, 2.25, 2.05], ('adamp', 1e-3): [2.0, 2.2, 1.9],
            ('adamw', 3e-3): [2.0, 2.1, 2.0], ('adamp', 3e-3): [1.7, 1.82, 1.69]}
  runs = [_opt_run(name, lr, k, [3.0, 2.6, 2.3, f]) for (name, lr), fs in finals.items()
          for k, f in enumerate(fs)]
  rows = {r['run']: r for r in paired.pair_rows(runs, 'optim.name', ('adamw',))}
  diffs = {lr: [a - b for a, b in zip(finals[('adamp', lr)], finals[('adamw', lr)])]
           for lr in (1e-3, 3e-3)}
  p = [float(scipy_stats.ttest_1samp(diffs[lr], 0.0).pvalue) for lr in (1e-3, 3e-3)]
  levels = [level for _, level in stats.holm(p)]
  for (lr, label), level in zip(((1e-3, 'adamp_lr0.001'), (3e-3, 'adamp_lr0.003')), levels):
    d = rows[label]['delta_final_val_loss']
    assert d.half == pytest.approx(stats.t_interval(diffs[lr], level).half, rel=1e-12)
    assert rows[label]['delta_final_val_loss_unadjusted'].half == pytest.approx(
        stats.t_interval(diffs[lr]).half, rel=1e-12)
  text = paired.render(list(rows.values()), 'optim.name', ('adamw',))
  assert 'Holm-adjusted over them' in text
