"""The transfer studies' smoke variants end to end (sweep -> report), and the transfer
tables on hand-made runs."""
import math
import pathlib

import pytest

from jaxlab.launch import cli
from jaxlab.report import transfer
from jaxlab.report import Run, load_runs

T2 = 4.302652729749462   # t_{0.975, 2} (printed tables: 4.303)


def fake_run(p, width, lr, loss, wd=0.0, e=0.0, seed=None):
  config = {'model': {'d_model': width, 'parametrization': p},
            'optim': {'lr': lr, 'weight_decay': wd, 'wd_width_exponent': e}}
  label = f'{p}{width}_{lr}' + ('' if seed is None else f'/seed{seed}')
  return Run(label=label, dir=pathlib.Path('.'), config=config,
             metrics=[{'step': 10, 'loss': loss, 'val_loss': loss}],
             summary={'status': 'completed', 'final_val_loss': loss})


def test_best_rows_and_shift():
  runs = [fake_run('sp', 32, 2 ** -8, 3.0), fake_run('sp', 32, 2 ** -6, 2.9),
          fake_run('sp', 128, 2 ** -8, 2.7), fake_run('sp', 128, 2 ** -6, 2.8),
          fake_run('mup', 32, 2 ** -8, 3.0), fake_run('mup', 32, 2 ** -6, 2.9),
          fake_run('mup', 128, 2 ** -8, math.nan), fake_run('mup', 128, 2 ** -6, 2.6)]
  assert transfer.studies(runs) == ['optim.lr']
  rows = {(r['panel'], r['width']): r for r in transfer.best_rows(runs, 'optim.lr')}
  assert rows['sp', 128]['best'] == 2 ** -8 and rows['sp', 128]['shift_log2'] == -2.0
  assert rows['mup', 128]['best'] == 2 ** -6 and rows['mup', 128]['shift_log2'] == 0.0
  assert rows['mup', 128]['finished'] == 1          # the NaN run is not a candidate
  # One seed: no CI; both of sp's bests sit at the grid's edge.
  assert '| sp | 128 | 0.003906 | 2.7000 | -2.00 | 1 | -8.00 (edge) | -2.00 | 2/2 |' in \
      transfer.render(runs)
  assert transfer.studies(runs[:2]) == []           # one width: not a transfer study


def test_optimum_over_seeds_by_hand():
  # Loss (log2 lr - c_k)^2 + 3 on the grid log2 lr = -9..-5: exactly a parabola, so each
  # seed's refined optimum is c_k. Shifts (width 128 minus width 32, seed by seed):
  #   mup: c = -7.0, -7.2, -6.9 -> -7.1, -7.4, -7.0: shifts -0.1, -0.2, -0.1
  #   sp:  c = -7.0, -7.1, -6.9 -> -8.0, -8.2, -7.9: shifts -1.0, -1.1, -1.0
  # Both: mean -0.4/3 (mup) or -3.1/3 (sp); deviations 1/30, -2/30, 1/30 -> s^2 =
  # 6/900/2 = 1/300, s / sqrt(3) = 1/30: half = t_{0.975,2} / 30 = 0.1434. mup's CI
  # [-0.277, +0.010] includes 0 (not resolved); sp's [-1.177, -0.890] does not.
  centres = {('mup', 32): (-7.0, -7.2, -6.9), ('mup', 128): (-7.1, -7.4, -7.0),
             ('sp', 32): (-7.0, -7.1, -6.9), ('sp', 128): (-8.0, -8.2, -7.9)}
  runs = [fake_run(p, w, 2.0 ** k, (k - c) ** 2 + 3, seed=seed)
          for (p, w), cs in centres.items() for seed, c in enumerate(cs) for k in range(-9, -4)]
  rows = {(r['panel'], r['width']): r for r in transfer.best_rows(runs, 'optim.lr')}
  for key, cs in centres.items():
    assert rows[key]['optimum_log2'].estimate == pytest.approx(sum(cs) / 3, abs=1e-12)
    assert rows[key]['seeds'] == 3 and not rows[key]['edge']
  mup, sp = rows['mup', 128]['shift_unadjusted'], rows['sp', 128]['shift_unadjusted']
  assert mup.estimate == pytest.approx(-0.4 / 3, abs=1e-12)
  assert sp.estimate == pytest.approx(-3.1 / 3, abs=1e-12)
  assert mup.half == pytest.approx(T2 / 30, rel=1e-6) and sp.half == pytest.approx(T2 / 30, rel=1e-6)
  assert not mup.resolved and sp.resolved
  # Two shifts: Holm over k = 2. t = mean / (1/30): sp -31 (p = 2 P(T_2 < -31) = 0.00104),
  # mup -4 (p = 0.0572). sp first, at alpha / 2: rejected, its interval at 97.5%:
  # half = t_{0.9875, 2} / 30 = 6.2053 / 30 = 0.2068, adjusted p = 2 x 0.00104. mup then
  # at alpha / 1: 0.0572 > 0.05, not rejected; its interval stays at 95%, adjusted p =
  # max(0.00208, 1 x 0.0572).
  hmup, hsp = rows['mup', 128]['shift'], rows['sp', 128]['shift']
  assert hsp.estimate == sp.estimate and hsp.half == pytest.approx(6.205335 / 30, rel=1e-5)
  assert hmup.half == pytest.approx(T2 / 30, rel=1e-6)
  assert rows['sp', 128]['holm_p'] == pytest.approx(2 * 0.0010390, rel=1e-3)
  assert rows['mup', 128]['holm_p'] == pytest.approx(0.057191, rel=1e-3)
  assert hsp.resolved and not hmup.resolved
  # Best grid value of the seed-mean loss: mup width 128 -> -7 (mean centre -7.17), sp -> -8.
  assert rows['mup', 128]['best'] == 2.0 ** -7 and rows['sp', 128]['best'] == 2.0 ** -8
  text = transfer.render(runs)
  assert '| -0.13 ± 0.14 (not resolved) | -0.13 ± 0.14 (p 0.0572) |' in text
  assert '| -1.03 ± 0.21 | -1.03 ± 0.14 (p 0.00208) |' in text
  assert 'The 2 optimum shifts are Holm-adjusted over the 2' in text
  # The narrowest width is the reference, not a zero shift with a zero-width CI.
  assert rows['mup', 32]['shift'] is None and text.count('| 0 (reference) |') == 2


def test_sigma_ratio_interval_by_hand():
  # Two matrices of one layer, three seeds; per seed the mean log ratio width 128 / 32 is
  # log 2 + d_k with d = (0.1, -0.1, 0.3) (the two matrices' log ratios differ by +-0.2
  # around it), so the geometric mean is 2 e^0.1 and the 95% CI exp(log 2 + 0.1 +-
  # t_{0.975,2} s / sqrt 3), s = 0.2: [2 e^(0.1 - 0.4969), 2 e^(0.1 + 0.4969)].
  from jaxlab.rundir.records import sigma_key

  def run(width, seed, a, b):
    r = fake_run('mup', width, 2 ** -7, 3.0, wd=0.3, e=0.5, seed=seed)
    r.metrics.append({'step': 20, sigma_key('attn.wq', 0): a, sigma_key('mlp.w1', 0): b})
    return r
  d = (0.1, -0.1, 0.3)
  runs = [run(32, k, 1.0, 3.0) for k in range(3)] + [
      run(128, k, 2 * math.exp(d[k] + 0.2), 6 * math.exp(d[k] - 0.2)) for k in range(3)]
  (row,) = transfer.sigma_ratio_rows(runs)
  half = T2 * 0.2 / math.sqrt(3)
  assert row['ratio'] == pytest.approx(2 * math.exp(0.1), rel=1e-12)
  assert row['interval'].lo == pytest.approx(2 * math.exp(0.1 - half), rel=1e-9)
  assert row['interval'].hi == pytest.approx(2 * math.exp(0.1 + half), rel=1e-9)
  assert row['prediction'] == 1.0 and row['seeds'] == 3 and row['matrices'] == 2
  assert transfer.fan_prediction(128, 32, 0.0) == pytest.approx(2 ** 0.5)
  assert transfer.fan_prediction(128, 32, 1.0) == pytest.approx(2 ** -0.5)
  # A second decay without sigma_max logged makes it a transfer study the report renders.
  runs += [fake_run('mup', w, 2 ** -7, 3.1, wd=0.03, e=0.5, seed=k) for w in (32, 128)
           for k in range(3)]
  assert len(transfer.sigma_ratio_rows(runs)) == 1
  assert '| 0.5 | 0.3 | 128 / 32 | 3 | 2.210 [1.345, 3.633] | 1.000 |' in transfer.render(runs)


def sweep_and_report(name, tmp_path):
  assert cli.main(['sweep', name, f'train.workdir={tmp_path}']) == 0
  assert cli.main(['report', str(tmp_path / name)]) == 0
  return load_runs(tmp_path / name), (tmp_path / name / 'report.md').read_text()


def test_mup_transfer_smoke(tmp_path):
  runs, report = sweep_and_report('mup_transfer_smoke', tmp_path)
  assert len(runs) == 8 and all(r.status == 'completed' for r in runs)
  rows = transfer.best_rows(runs, 'optim.lr')
  assert {(r['panel'], r['width']) for r in rows} == {(p, w) for p in ('sp', 'mup')
                                                       for w in (16, 64)}
  assert '## Transfer across widths: lr' in report
  assert (tmp_path / 'mup_transfer_smoke' / 'transfer_lr.png').stat().st_size > 10_000
  # At the base width muP is SP: the same losses, bit for bit.
  loss = {r.label: r.summary['final_val_loss'] for r in runs}
  for k in (-8, -5):
    assert loss[f'sp_w16_log2lr{k}'] == loss[f'mup_w16_log2lr{k}']
    assert loss[f'sp_w64_log2lr{k}'] != loss[f'mup_w64_log2lr{k}']


def test_wd_transfer_smoke(tmp_path):
  runs, report = sweep_and_report('wd_transfer_smoke', tmp_path)
  assert len(runs) == 8 and all(r.status == 'completed' for r in runs)
  ratios = transfer.sigma_ratio_rows(runs)
  assert {(r['exponent'], r['weight_decay']) for r in ratios} == {
      (e, wd) for e in (0.0, 1.0) for wd in (0.1, 1.0)}
  assert all(r['matrices'] == 14 and 0.1 < r['ratio'] < 10 for r in ratios)  # 7 x 2 layers
  assert '## Transfer across widths: weight decay' in report
  assert 'sigma_max(width) / sigma_max(narrowest width)' in report
  loss = {r.label: r.summary['final_val_loss'] for r in runs}
  # m = 1 at the base width: the exponent changes nothing there, and something at 4x.
  for wd in ('0.1', '1'):
    assert loss[f'w16_e0_wd{wd}'] == loss[f'w16_e1_wd{wd}']
    assert loss[f'w64_e0_wd{wd}'] != pytest.approx(loss[f'w64_e1_wd{wd}'], abs=1e-9)
