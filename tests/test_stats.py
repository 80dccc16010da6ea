"""jaxlab.report.stats and the seed statistics of jaxlab.report.savings, against values computed by
hand (each computation is written out next to its assert). Synthetic numbers only: no
training, milliseconds."""
import math
import pathlib

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


def test_bootstrap_of_a_mean_is_the_t_interval():
  # Values 0, 1, 2 (s = 1): all 27 resamples enumerated; the bootstrap variance of the
  # mean is the plug-in variance / n = (2/3) / 3 = 2/9; times n / (n - 1) = 3/2 -> 1/3
  # = s^2 / n. Half-width t_{0.975,2} / sqrt(3) = 2.484138, the t-interval's.
  values = [0.0, 1.0, 2.0]
  iv = stats.bootstrap_interval(lambda idx: sum(values[i] for i in idx) / len(idx), 3)
  assert len(stats.resamples(3)) == 27
  assert iv.estimate == 1.0
  assert iv.half == pytest.approx(T2 / math.sqrt(3), rel=1e-6)
  assert iv.half == pytest.approx(stats.t_interval(values).half, rel=1e-12)
  # n = 10 > EXACT_MAX: 4000 random resamples (a fixed generator, so the same every
  # time). Their sd estimates the exact one with relative error ~ 1 / sqrt(2 x 4000)
  # = 1.1%: 5% is over 4 of those.
  ten = [0.3, 1.2, -0.4, 2.2, 0.9, 1.1, 0.0, 1.7, 0.6, 1.4]
  mean = lambda idx: sum(ten[i] for i in idx) / len(idx)   # noqa: E731
  iv = stats.bootstrap_interval(mean, 10)
  assert iv.half == stats.bootstrap_interval(mean, 10).half
  assert iv.half == pytest.approx(stats.t_interval(ten).half, rel=0.05)


def test_bootstrap_undefined_resample_is_unbounded():
  # Seed 2 never crosses: every resample made of seed 2 alone is undefined.
  crossing = [1.0, 2.0, None]

  def stat(idx):
    vals = [crossing[i] for i in idx]
    return None if all(v is None for v in vals) else max(v for v in vals if v is not None)
  iv = stats.bootstrap_interval(stat, 3)
  assert iv.estimate == 2.0 and math.isinf(iv.half) and not iv.resolved
  assert iv.format('.1f') == '2.0 ± inf'
  assert stats.bootstrap_interval(lambda idx: None, 3).estimate is None


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


def seeded_study():
  """Baseline seeds: [4, 3 + e_k, 2, 1], e = 0, 0.3, -0.3. Method seeds 0 and 1:
  [3, 2, 0.8, 0.5]; seed 2: [3, 2, 1.1, 0.5]."""
  runs = [_run(f'scratch/seed{k}', zip(FLOPS, [4.0, 3.0 + e, 2.0, 1.0]))
          for k, e in enumerate([0.0, 0.3, -0.3])]
  runs += [_run(f'stack/seed{k}', zip(FLOPS, [3.0, 2.0, y3, 0.5]))
           for k, y3 in enumerate([0.8, 0.8, 1.1])]
  return runs


def test_savings_over_seeds_by_hand():
  rows, target = savings.method_rows(seeded_study(), 'scratch', smooth=1)
  by = {r['run']: r for r in rows}
  # Target: the baseline's mean final val loss, 1.0, first reached at its last eval:
  # F_baseline = 4 in every resample (e_k only moves its second evaluation).
  assert target == 1.0
  stack = by['stack']
  # Mean curve of the method: [3, 2, 0.9, 0.5] -> crosses 1.0 between FLOPs 2 (2.0)
  # and 3 (0.9): x = 2 + (2 - 1) / (2 - 0.9) = 2.909091; saving 1 - x / 4 = 0.272727.
  assert stack['flops_to_target'].estimate == pytest.approx(2 + 1 / 1.1, rel=1e-12)
  assert stack['saving'].estimate == pytest.approx(1 - (2 + 1 / 1.1) / 4, rel=1e-12)
  assert stack['speedup'].estimate == pytest.approx(4 / (2 + 1 / 1.1) - 1, rel=1e-12)
  # Bootstrap by hand: a resample holds seed 2 j times, j ~ Binomial(3, 1/3):
  # P = 8/27, 12/27, 6/27, 1/27; its mean third evaluation is 0.8 + 0.1 j:
  #   j = 0, 1, 2: y <= 1, crossing 2 + 1 / (2 - y) = 2 + 1/1.2, 2 + 1/1.1, 3
  #   j = 3: y = 1.1 > 1, crossing between (3, 1.1) and (4, 0.5): 3 + 0.1 / 0.6
  p = [8 / 27, 12 / 27, 6 / 27, 1 / 27]
  s = [1 - (2 + 1 / 1.2) / 4, 1 - (2 + 1 / 1.1) / 4, 1 - 3 / 4, 1 - (3 + 0.1 / 0.6) / 4]
  mean = sum(pj * sj for pj, sj in zip(p, s))
  sd = math.sqrt(sum(pj * (sj - mean) ** 2 for pj, sj in zip(p, s)))
  assert stack['saving'].half == pytest.approx(T2 * sd * math.sqrt(3 / 2), rel=1e-6)
  assert stack['saving'].resolved         # 27.3% ± 8.1%
  # Tail means (last 3 evals): baseline 2 + e_k / 3 = 2.0, 2.1, 1.9; method 1.1, 1.1,
  # 1.2. Paired Δ = -0.9, -1.0, -0.7: mean -2.6 / 3; deviations -0.1/3, -0.4/3, 0.5/3
  # -> s^2 = (0.01 + 0.16 + 0.25) / 9 / 2 = 0.42 / 18; half = t sqrt(0.42 / 18 / 3).
  delta = stack['delta_tail_val_loss']
  assert delta.estimate == pytest.approx(-2.6 / 3, rel=1e-9)
  assert delta.half == pytest.approx(T2 * math.sqrt(0.42 / 54), rel=1e-6)
  # Final val loss over seeds: 0.5 each -> mean 0.5 with zero spread.
  assert stack['final_val_loss'].estimate == 0.5 and stack['final_val_loss'].half == 0
  base = by['scratch']
  assert base['saving'].estimate == 0.0 and base['n'] == 3
  assert base['delta_tail_val_loss'].estimate == 0.0
  # The CSV form: estimates, half-widths and verdicts.
  flat = {r['run']: r for r in savings.flatten(rows)}
  assert flat['stack']['saving'] == stack['saving'].estimate
  assert flat['stack']['saving_ci'] == stack['saving'].half
  assert flat['stack']['saving_resolved'] is True


def test_headlines_say_resolved_or_not():
  rows, _ = savings.method_rows(seeded_study(), 'scratch', smooth=1)
  stack = next(r for r in rows if r['run'] == 'stack')
  s = stack['saving']
  assert savings.headline(stack, 'scratch') == (
      f"stack reaches scratch's final val loss with {100 * s.estimate:.1f}% ± "
      f"{100 * s.half:.1f}% fewer FLOPs (n = 3 seeds, 95% CI).")
  noisy = seeded_study()[:3] + [_run(f'zero/seed{k}', zip(FLOPS, [3.5, 2.5, 1.2, y4]))
                                for k, y4 in enumerate([0.9, 1.0, 1.1])]
  rows, _ = savings.method_rows(noisy, 'scratch', smooth=1)
  zero = next(r for r in rows if r['run'] == 'zero')
  # Seed 2 alone (1.1 at the end) never reaches 1.0: the interval is unbounded.
  assert math.isinf(zero['saving'].half)
  assert savings.headline(zero, 'scratch').startswith(
      'zero vs scratch: not resolved at this scale (saving ')
  md = savings.render_savings(rows, 'scratch', 1.0)
  assert '(not resolved)' in md and 'Student t-interval' in md and 'bootstrap' in md
  single = [_run('scratch', zip(FLOPS, [4.0, 3.0, 2.0, 1.0])),
            _run('stack', zip(FLOPS, [3.0, 2.0, 0.9, 0.5]))]
  rows, _ = savings.method_rows(single, 'scratch', smooth=1)
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
