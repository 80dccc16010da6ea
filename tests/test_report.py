"""Tests for jaxlab.report on synthetic run dirs with known numbers."""
import csv
import json
import math

import numpy as np
import pytest

from jaxlab import report
from jaxlab.report import write
from jaxlab.rundir import UNKNOWN_STATUS
from jaxlab.config.types import ConfigError

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def write_run(d, name, lines, summary=None, raw_tail=''):
  """A run dir: config.json, metrics.jsonl from `lines` (+ raw text), optional summary.json."""
  d.mkdir(parents=True, exist_ok=True)
  (d / 'config.json').write_text(json.dumps(
      {'name': name, 'model': {'d_model': 64}, 'optim': {}, 'data': {}, 'mesh': {}, 'train': {}}))
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines) + raw_tail)
  if summary is not None:
    (d / 'summary.json').write_text(json.dumps(summary))
  return d


VAL_TOKENS = 4096


def steps(losses, tps=None, val=None, flops_per_step=2.5e12, tokens_per_step=1000):
  """Metric lines at steps 10, 20, ...; `val` maps index -> val_loss."""
  out = []
  for i, loss in enumerate(losses):
    step = 10 * (i + 1)
    rec = {'step': step, 'tokens': tokens_per_step * step, 'flops': flops_per_step * step,
           'loss': loss, 'lr': 1e-3, 'grad_norm': 0.5,
           'tokens_per_sec': None if tps is None else tps[i], 'mfu': None, 'time': float(i)}
    if val and i in val:
      rec['val_loss'] = val[i]
      rec['val_tokens'] = VAL_TOKENS
    out.append(rec)
  return out


def table_rows(md):
  """report.md's table rows (header and separator skipped), as lists of cells."""
  rows = [l for l in md.splitlines() if l.startswith('| ')]
  return [[c.strip() for c in r.strip('|').split('|')] for r in rows[1:]]


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


# tokens/s: null at compile, then 100, 300, 200, 1000 -> median 250 (mean would be 400).
TPS = [None, 100.0, 300.0, 200.0, 1000.0]


def test_single_run_table_uses_summary_and_median_tps(tmp_path):
  run = write_run(tmp_path / 'r', 'my-run',
                  steps([5.5, 4.0, 3.25, 3.0, 2.875], tps=TPS, val={1: 4.125, 3: 3.0625}),
                  # The run ended at step 55, after the last logged step (50): summary wins.
                  summary={'status': 'completed', 'step': 55, 'tokens': 55000, 'flops': 1.234e15,
                           'final_loss': 2.8125, 'final_val_loss': 3.03125, 'val_tokens': 194291,
                           'tokens_per_sec': 999.0, 'n_params': 1234567})
  out = report.write_report(run)
  assert out == run / 'report.md'
  md = out.read_text()
  assert md.startswith('# Report: my-run')
  rows = table_rows(md)
  assert rows == [['my-run', 'completed', '55', '2.8125', '3.0312', '194,291', '55,000',
                   '1.23e15', '250', '1,234,567']]
  assert 'median over logged steps with a non-null value' in md
  assert 'Best run' not in md and 'Best method' not in md     # one run: nothing to compare
  assert '![Loss vs step](loss_vs_step.png)' in md
  assert '](loss_vs_flops.png)' in md


def test_runs_csv_parses_back_exactly(tmp_path):
  run = write_run(tmp_path / 'r', 'csv-run',
                  steps([5.5, 4.0, 3.141592653589793], tps=TPS[:3], val={2: 3.3}))
  report.write_report(run)
  [row] = read_csv(run / 'runs.csv')
  assert list(row) == list(report.COLUMNS)
  assert row['run'] == 'csv-run'
  assert row['status'] == UNKNOWN_STATUS
  assert int(row['steps']) == 30
  assert float(row['final_train_loss']) == 3.141592653589793   # full precision, not 3.1416
  assert float(row['final_val_loss']) == 3.3
  assert int(row['val_tokens']) == VAL_TOKENS
  assert int(row['tokens']) == 30000
  assert float(row['flops']) == 2.5e12 * 30
  assert float(row['tokens_per_sec']) == 200.0   # median of 100, 300
  assert row['n_params'] == ''


def test_missing_summary_takes_last_logged_values(tmp_path):
  # val_loss only on some lines: the final val loss is the last one logged, not the last line.
  lines = steps([5.0, 4.5, 4.25, 4.0], tps=[None, 10.0, 30.0, 20.0], val={1: 4.75})
  run = write_run(tmp_path / 'live', 'live', lines)
  rows = table_rows(report.write_report(run).read_text())
  assert rows == [['live', UNKNOWN_STATUS, '40', '4.0000', '4.7500', '4,096', '40,000',
                   '1.00e14', '20', write._MISSING]]


def test_plots_are_valid_pngs(tmp_path):
  run = write_run(tmp_path / 'r', 'r', steps([5.0, 4.0, 3.5, 3.2], val={1: 4.1, 3: 3.3}))
  report.write_report(run)
  for name in ('loss_vs_step.png', 'loss_vs_flops.png'):
    data = (run / name).read_bytes()
    assert data[:8] == PNG_MAGIC, name
    assert len(data) > 10_000, (name, len(data))


def test_sweep_with_nested_runs_gives_one_row_each(tmp_path):
  sweep = tmp_path / 'sweep'
  write_run(sweep / 'lr=1e-3' / 'seed0', 'a', steps([5.0, 3.0], val={1: 3.5}))
  write_run(sweep / 'lr=3e-3', 'b', steps([5.0, 2.5], val={1: 2.75}))
  write_run(sweep / 'deep' / 'x' / 'y', 'c', steps([5.0, 4.0]))
  # A run's checkpoints are never searched; a plain dir without metrics is no run.
  write_run(sweep / 'lr=3e-3' / 'checkpoints' / '100', 'ckpt', steps([1.0]))
  (sweep / 'notes').mkdir()
  report.write_report(sweep)
  md = (sweep / 'report.md').read_text()
  rows = table_rows(md)
  assert [r[0] for r in rows] == ['deep/x/y', 'lr=1e-3/seed0', 'lr=3e-3']
  assert rows[2][4] == '**2.7500**' and rows[1][4] == '3.5000'
  assert 'Best run: `lr=3e-3`' in md
  assert [r['run'] for r in read_csv(sweep / 'runs.csv')] == [r[0] for r in rows]


def test_diverged_empty_and_unfinished_runs(tmp_path):
  sweep = tmp_path / 'sweep'
  write_run(sweep / 'diverged', 'd', steps([5.0, 40.0, 1e6, float('nan'), float('nan')]))
  write_run(sweep / 'empty', 'e', [])
  # Unknown keys, events, lines without loss and a half-written last line are ignored.
  noisy = steps([5.0, 4.0, 3.0])
  noisy[1]['top_singular_values'] = [3.0, 2.0]
  noisy.insert(2, {'event': 'growth', 'step': 20, 'from': 'a', 'to': 'b'})
  noisy.insert(0, {'step': 0, 'note': 'no loss here'})
  write_run(sweep / 'running', 'r', noisy, raw_tail='{"step": 40, "loss": 2.')
  report.write_report(sweep)
  rows = {r[0]: r for r in table_rows((sweep / 'report.md').read_text())}
  assert rows['diverged'][1:4] == ['diverged', '50', 'nan']
  assert rows['empty'][1:] == [UNKNOWN_STATUS] + [write._MISSING] * 8
  assert rows['running'][1:4] == [UNKNOWN_STATUS, '30', '**3.0000**']
  assert (sweep / 'loss_vs_step.png').read_bytes()[:8] == PNG_MAGIC
  runs = {r.label: r for r in report.load_runs(sweep)}
  assert runs['running'].events == [{'event': 'growth', 'step': 20, 'from': 'a', 'to': 'b'}]
  assert [r['step'] for r in runs['running'].metrics] == [10, 20, 30]
  assert 'No logged losses yet (not plotted): `empty`' in (sweep / 'report.md').read_text()


def test_summary_status_wins(tmp_path):
  run = write_run(tmp_path / 'p', 'p', steps([5.0, 4.0]),
                  summary={'status': 'preempted', 'step': 20, 'final_loss': None})
  [row] = table_rows(report.write_report(run).read_text())
  assert row[1:4] == ['preempted', '20', '4.0000']   # null in summary -> last logged loss


def test_resumed_run_keeps_the_replayed_steps(tmp_path):
  # Logged up to step 40, preempted, resumed from the step-20 checkpoint.
  first = steps([5.0, 4.0, 3.5, 3.4])
  resumed = [dict(r, loss=r['loss'] - 0.25) for r in steps([5.0, 4.0, 3.5, 3.4, 3.0])[1:]]
  run = write_run(tmp_path / 'r', 'r', first + resumed)
  [loaded] = report.load_runs(run)
  assert [r['step'] for r in loaded.metrics] == [10, 20, 30, 40, 50]
  assert [r['loss'] for r in loaded.metrics] == [5.0, 3.75, 3.25, 3.15, 2.75]


def test_no_runs_raises_naming_the_path(tmp_path):
  (tmp_path / 'just_a_dir' / 'sub').mkdir(parents=True)
  with pytest.raises(ValueError, match='no runs found under .*just_a_dir'):
    report.write_report(tmp_path / 'just_a_dir')
  with pytest.raises(ValueError, match='missing_dir: no such directory'):
    report.load_runs(tmp_path / 'missing_dir')
  assert not (tmp_path / 'just_a_dir' / 'report.md').exists()


def test_plot_colours_scales_and_nan(tmp_path):
  write_run(tmp_path / 'a', 'a', steps([5.0, 4.0, 3.0], val={2: 3.5}))
  write_run(tmp_path / 'b', 'b', steps([5.0, float('nan'), float('nan')]))
  runs = report.load_runs(tmp_path)
  fig = report.plot_loss(runs, 'flops')
  ax = fig.axes[0]
  assert ax.get_xscale() == 'log'
  train_a, val_a = ax.lines[0], ax.lines[1]
  assert list(train_a.get_ydata()) == [5.0, 4.0, 3.0]
  assert list(val_a.get_ydata()) == [3.5] and val_a.get_linestyle() == 'None'
  assert val_a.get_color() == train_a.get_color()
  assert any(l.get_marker() == 'X' and list(l.get_ydata()) == [5.0] for l in ax.lines)
  assert ax.get_legend().get_texts()[-1].get_text() == 'diverged after this point'
  assert math.isnan(ax.lines[2].get_ydata()[1])
  assert report.plot_loss(runs, 'step').axes[0].get_xscale() == 'linear'


def test_legend_with_30_runs_sits_outside_the_axes(tmp_path):
  for i in range(30):
    write_run(tmp_path / f'run{i:02d}', f'r{i}', steps([5.0, 4.0 - i / 100, 3.0 - i / 100]))
  runs = report.load_runs(tmp_path)
  fig = report.plot_loss(runs, 'step')
  ax = fig.axes[0]
  legend = ax.get_legend()
  assert [t.get_text() for t in legend.get_texts()] == [f'run{i:02d}' for i in range(30)]
  renderer = fig.canvas.get_renderer()
  fig.draw(renderer)
  assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
  assert legend.get_texts()[0].get_fontsize() < 10
  colours = {tuple(l.get_color()) + (l.get_linestyle(),) for l in ax.lines}
  assert len(colours) == 30
  report.write_report(tmp_path)
  assert len(table_rows((tmp_path / 'report.md').read_text())) == 30


def test_stale_summary_of_a_resumed_run_is_ignored(tmp_path):
  # Preempted at step 20 (summary written), resumed, now logging step 30 and on.
  run = write_run(tmp_path / 'r', 'r', steps([5.0, 4.0, 3.5]),
                  summary={'status': 'preempted', 'step': 20, 'final_loss': 4.0})
  [row] = table_rows(report.write_report(run).read_text())
  assert row[1:4] == [UNKNOWN_STATUS, '30', '3.5000']


# ----------------------------------------------------------------------------- seeds

def test_sweep_configs_pair_seeds_across_methods():
  # demo: 2 methods x SEEDS = 3; seed k of both has train.seed = data.seed = k and lives
  # in <sweep>/<method>/seed<k>; points go seed by seed.
  from jaxlab.launch import sweep_points
  sweep_dir, points = sweep_points.sweep_configs('demo', [], [])
  assert [label for label, _ in points] == [
      f'{m}/seed{k}' for k in range(3) for m in ('scratch', 'stack_20pct')]
  for label, cfg in points:
    k = int(label[-1])
    assert (cfg.train.seed, cfg.data.seed, cfg.name) == (k, k, f'seed{k}')
    assert cfg.train.workdir == str(sweep_dir / label.split('/')[0])
  _, points = sweep_points.sweep_configs('tiny', ['optim.lr=1e-2'], ['train.seed=5'], seeds=2,
                                         vary='init')
  assert [(c.train.seed, c.data.seed) for _, c in points] == [(5, 0), (6, 0)]
  with pytest.raises(ConfigError, match='seeds=0 must be an integer >= 1'):
    sweep_points.sweep_configs('tiny', ['optim.lr=1e-2'], [], seeds=0)


def test_sweep_with_seeds_in_parallel_processes_then_report(tmp_path, capsys):
  # Two seeds of one point, as two `sweep --point i` processes at once; then the report
  # groups them into one method with its mean ± CI.
  from jaxlab.launch import cli
  args = ['sweep', 'tiny', '--grid', 'optim.lr=0.01', '--seeds', '2', '--jobs', '2',
          'train.steps=4', 'train.log_every=2', 'train.eval_every=0', 'train.checkpoint_every=0',
          f'train.workdir={tmp_path}']
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert 'optim.lr=0.01/seed1: completed after' in out and '2 completed' in out
  method = tmp_path / 'tiny' / 'optim.lr=0.01'
  configs = [json.loads((method / f'seed{k}' / 'config.json').read_text()) for k in (0, 1)]
  assert [(c['train']['seed'], c['data']['seed']) for c in configs] == [(0, 0), (1, 1)]
  assert all((method / f'seed{k}' / 'launch.log').is_file() for k in (0, 1))
  runs = report.load_runs(tmp_path / 'tiny')
  assert [r.status for r in runs] == ['completed', 'completed']
  assert runs[0].metrics[0]['loss'] != runs[1].metrics[0]['loss']   # other init and data
  # Tokens evaluated: the targets the loss counts in tiny's 2 validation batches.
  from jaxlab import config, data
  cfg = config.load('tiny')
  segs = [b['segment_ids'] for b in data.eval_batches(cfg.data, data.make_tokenizer(cfg.data),
                                                      4, 2)]
  counted = sum(int(np.sum((s[:, :-1] == s[:, 1:]) & (s[:, :-1] != 0))) for s in segs)
  assert 200 < counted <= 2 * 4 * 32
  assert [r.summary['val_tokens'] for r in runs] == [counted, counted]
  assert runs[0].metrics[-1]['val_tokens'] == counted
  assert cli.main(args) == 0                                         # finished: skipped
  assert capsys.readouterr().out.count('finished earlier, skipped') == 2
  md = report.write_report(tmp_path / 'tiny').read_text()
  assert '## Over seeds' in md and '| optim.lr=0.01 | 2 | 2 |' in md


def test_report_command_loads_no_jax(tmp_path):
  """`launch.py report DIR --baseline B` on a sweep with seeds, a growth event, spectra,
  weight statistics and the val loss by position, run in a fresh process by the command
  line's own code: it writes every section and jax, flax, optax, orbax, the model and the
  kernels stay unimported (sys.modules afterwards)."""
  import subprocess
  import sys
  from jaxlab.rundir.records import position_key, sigma_key
  sweep = tmp_path / 'study'
  for method, drop in (('scratch', 0.0), ('grown', 0.1)):
    for k in range(3):
      lines = steps([3.0 - drop - 0.1 * i - 0.01 * k for i in range(6)],
                    val={i: 3.1 - drop - 0.1 * i - 0.01 * k for i in range(6)})
      for rec in lines:
        rec.update({sigma_key('attn.wq', 0): 1.0 + rec['step'] / 100, sigma_key('head.kernel'): 2.0,
                    'prenorm_w_norm': 1.0, 'prenorm_eff_step': 1e-3})
      lines[-1].update({position_key(0, 15): 2.5, position_key(16, 31): 2.2})
      if method == 'grown':
        lines.insert(2, {'event': 'grow', 'step': 20, 'tokens': 20000, 'flops': 5e13,
                         'method': 'stack', 'optimizer': 'reset', 'from': 'd64 L2',
                         'to': 'd64 L8'})
      write_run(sweep / method / f'seed{k}', f'seed{k}', lines,
                summary={'status': 'completed', 'step': 60})
  code = ('import sys\n'
          'from jaxlab.launch.cli import main\n'
          f'rc = main(["report", {str(sweep)!r}, "--baseline", "scratch"])\n'
          'heavy = ("jax", "jaxlib", "flax", "optax", "orbax", "jaxlab.models", "jaxlab.kernels",\n'
          '         "jaxlab.train", "jaxlab.rundir.checkpoint")\n'
          'print(rc, sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines()[-1] == '0 []'
  md = (sweep / 'report.md').read_text()
  for section in ('## Over seeds', 'Headline: grown', '## Spectral norms',
                  '## Weight norms and effective steps', '## Val loss by position'):
    assert section in md, section


def test_provenance_and_config_drift(tmp_path):
  """A run records its experiment file, overrides and commit when it first starts; the
  report shows them and flags the run once its experiment file gives another config."""
  from jaxlab.launch import cli
  exp = tmp_path / 'mini.py'
  exp.write_text((__import__('pathlib').Path(__file__).resolve().parent.parent /
                  'experiments' / 'tiny.py').read_text())
  args = ['run', str(exp), 'train.steps=2', 'train.eval_every=2', f'train.workdir={tmp_path}',
          'optim.lr=0.01']
  assert cli.main(args) == 0
  run_dir = tmp_path / 'mini'
  prov = json.loads((run_dir / 'provenance.json').read_text())
  assert prov['experiment'] == str(exp) and prov['overrides'] == args[2:]   # outside the checkout: absolute
  assert len(prov['experiment_sha256']) == 64 and len(prov['commit'] or 'x' * 40) == 40
  md = report.write_report(run_dir).read_text()
  assert '## Provenance' in md and prov['experiment_sha256'][:12] in md
  assert "Every run's config is what its experiment file" in md
  # The experiment changes after the run: the report names the run and the key.
  exp.write_text(exp.read_text().replace('d_ff=64', 'd_ff=128'))
  md = report.write_report(run_dir).read_text()
  assert '**Warning: config drift.**' in md
  assert "model.d_ff: ran with 64, gives 128 today" in md
  # A field added to Config after the run started (absent from its config.json) and at its
  # default today is no drift; the same field at another value is.
  exp.write_text(exp.read_text().replace('d_ff=128', 'd_ff=64'))
  saved = json.loads((run_dir / 'config.json').read_text())
  cfg = dict(saved)
  cfg['data'] = {k: v for k, v in saved['data'].items() if k != 'accept_changes'}
  cfg['model'] = {k: v for k, v in saved['model'].items() if k != 'd_ff'}
  (run_dir / 'config.json').write_text(json.dumps(cfg))
  md = report.write_report(run_dir).read_text()
  assert 'model.d_ff: ran with None, gives 64 today' in md and 'accept_changes' not in md
  (run_dir / 'config.json').write_text(json.dumps(saved))
  # Continuing the run directory by path keeps the provenance of the first start.
  assert cli.main(['run', str(run_dir)]) == 0
  assert json.loads((run_dir / 'provenance.json').read_text()) == prov


def test_two_seeds_state_their_t_and_the_best_method_by_its_mean(tmp_path):
  """A 2-seed sweep's report gives n = 2's t (12.706) and names the method with the lowest
  mean over its seeds, not the seed with the lowest value."""
  for method, finals in (('a', [3.0, 1.0]), ('b', [1.5, 1.6])):   # a's seed 1 is the lowest
    for k, v in enumerate(finals):
      write_run(tmp_path / method / f'seed{k}', f'seed{k}', steps([4.0, v], val={1: v}),
                summary={'status': 'completed', 'step': 20, 'final_val_loss': v})
  md = report.write_report(tmp_path).read_text()
  assert 'n = 2: t = 12.706' in md and 'n = 3' not in md
  assert 'Best method: `b` (lowest mean final val loss over its 2 seeds, 1.5500' in md
  assert 'Best run' not in md


def test_sweep_jobs_exits_non_zero_naming_the_failed_points(tmp_path, capsys):
  """A point that fails in its process (splash needs T % 128 == 0: tiny's T is 32) makes
  `sweep --jobs` exit 1 and name it; the other point completes."""
  from jaxlab.launch import cli
  args = ['sweep', 'tiny', '--grid', 'model.attention=xla,splash', '--jobs', '2',
          'train.steps=2', 'train.eval_every=0', 'train.checkpoint_every=0',
          f'train.workdir={tmp_path}']
  assert cli.main(args) == 1
  captured = capsys.readouterr()
  assert '1 completed, 1 failed (exit 2)' in captured.out
  assert 'error: 1 point(s) failed: model.attention=splash' in captured.err
