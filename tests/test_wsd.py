"""optim.schedule=wsd (warmup-stable-decay; jaxlab/optim/build.py) and changing train.steps
of a run that has checkpoints (jaxlab/train/length.py): the schedule's values against
hand-computed ones, the config errors, the rule that picks the checkpoint, and end to end
through the CLI on the tiny experiment: a WSD run extended from 200 to 300 steps equals a
300-step run from the start, bit for bit."""
import contextlib
import dataclasses
import io
import json
import math
import shutil
import subprocess
import sys

import pytest

from cli_runs import ROOT, lines, trajectory
from jaxlab import config as config_lib
from jaxlab.config import ConfigError
from jaxlab.config.types import OptimConfig
from jaxlab.launch import cli
from jaxlab.optim.build import decay_start, make_schedule
from jaxlab.rundir.directory import RunDir
from jaxlab.train import length

WSD = ['optim.schedule=wsd', 'train.checkpoint_every=50']   # tiny: lr 1e-2, warmup 2


# ----------------------------------------------------------------------- the schedule

def _values(cfg: OptimConfig, total: int, counts) -> list[float]:
  schedule = make_schedule(cfg, total)
  return [float(schedule(c)) for c in counts]


# lr 0.5, warmup 10, 100 steps, decay_fraction 0.2 -> the decay takes counts 80..100, from
# 0.5 to end = 0.5 x 0.1 = 0.05. At count 85 a quarter of it is done (x = 0.25), at 90 half.
COUNTS = [0, 5, 10, 79, 80, 85, 90, 100, 150]
RISE = [0.0, 0.25, 0.5, 0.5, 0.5]                       # warmup 0 -> 0.5, then flat to 80
EXPECTED = {
    # end + (lr - end) (1 - x)
    'linear': RISE + [0.05 + 0.45 * 0.75, 0.05 + 0.45 * 0.5, 0.05, 0.05],
    # end + (lr - end) (1 + cos(pi x)) / 2: cos(pi / 4) = 0.70710678, cos(pi / 2) = 0
    'cosine': RISE + [0.05 + 0.225 * 1.70710678, 0.05 + 0.225, 0.05, 0.05],
    # end + (lr - end) (1 - sqrt(x)): sqrt(0.25) = 0.5, sqrt(0.5) = 0.70710678
    '1-sqrt': RISE + [0.05 + 0.45 * 0.5, 0.05 + 0.45 * 0.29289322, 0.05, 0.05],
}


@pytest.mark.parametrize('shape', ['linear', 'cosine', '1-sqrt'])
def test_wsd_warms_up_holds_then_decays_in_its_shape(shape):
  cfg = OptimConfig(lr=0.5, warmup_steps=10, final_lr_fraction=0.1, schedule='wsd',
                    decay_fraction=0.2, decay_shape=shape)
  assert decay_start(cfg, 100) == 80
  assert _values(cfg, 100, COUNTS) == pytest.approx(EXPECTED[shape], rel=1e-6, abs=1e-7)
  # the lr leaves the plateau right after the decay start, never before
  after = _values(cfg, 100, [80, 81])
  assert after[0] == 0.5 and after[1] < 0.5


def test_wsd_decay_start_rounds_and_never_cuts_the_warmup():
  cfg = OptimConfig(lr=1.0, warmup_steps=2, schedule='wsd', decay_fraction=0.2)
  assert [decay_start(cfg, t) for t in (200, 300, 7, 2)] == [160, 240, 6, 1]
  assert decay_start(dataclasses.replace(cfg, decay_fraction=0.001), 100) == 99   # >= 1 step
  assert decay_start(dataclasses.replace(cfg, warmup_steps=90), 100) == 90        # not in it
  whole = dataclasses.replace(cfg, warmup_steps=0, decay_fraction=1.0, decay_shape='linear',
                              final_lr_fraction=0.0)
  assert _values(whole, 10, [0, 5, 10]) == pytest.approx([1.0, 0.5, 0.0])


def test_cosine_linear_and_constant_keep_their_values():
  base = OptimConfig(lr=1.0, warmup_steps=10, final_lr_fraction=0.1)
  counts = [0, 5, 10, 55, 100]
  # after the warmup the decay spans counts 10..100; at 55 it is half done
  assert _values(base, 100, counts) == pytest.approx([0, 0.5, 1, 0.55, 0.1], abs=1e-6)
  linear = dataclasses.replace(base, schedule='linear')
  assert _values(linear, 100, counts) == pytest.approx([0, 0.5, 1, 0.55, 0.1], abs=1e-6)
  constant = dataclasses.replace(base, schedule='constant')
  assert _values(constant, 100, counts) == pytest.approx([0, 0.5, 1, 1, 1], abs=1e-6)
  assert _values(dataclasses.replace(base, warmup_steps=0), 100, [0, 50]) == pytest.approx(
      [1.0, 0.1 + 0.9 * 0.5], abs=1e-6)


@pytest.mark.parametrize('override, message', [
    ('optim.decay_fraction=0', 'optim.decay_fraction=0.0 must be in (0, 1]'),
    ('optim.decay_fraction=1.5', 'optim.decay_fraction=1.5 must be in (0, 1]'),
    ('optim.decay_shape=sqrt', "optim.decay_shape='sqrt' is not allowed: expected one of "
                               "'linear', 'cosine', '1-sqrt'; did you mean '1-sqrt'?"),
    ('optim.schedule=wds', "optim.schedule='wds' is not allowed: expected one of 'cosine', "
                           "'linear', 'constant', 'wsd'"),
])
def test_bad_wsd_values_are_one_line_errors(override, message):
  with pytest.raises(ConfigError) as err:
    config_lib.load('tiny', ['optim.schedule=wsd', override])
  assert message in str(err.value) and '\n' not in str(err.value)


# ------------------------------------------------------------- the rule (no training)

def _cfg(*overrides):
  return config_lib.load('tiny', ['train.checkpoint_every=50', *overrides])


def test_wsd_goes_on_from_the_latest_checkpoint_before_the_earlier_decay_start():
  new = length.plan(_cfg('optim.schedule=wsd', 'train.steps=300'), 200, [100, 150, 200], 'd')
  assert (new.last, new.restore_at) == (160, 150)
  assert new.why == 'under optim.schedule=wsd the lr decay of the 200-step run begins at step 160'
  # lowering 300 -> 200: the 200-step run's decay (step 160) comes first
  assert length.plan(_cfg('optim.schedule=wsd', 'train.steps=200'), 300,
                     [150, 200, 250, 300], 'd').restore_at == 150
  # a run stopped before its decay goes on from its newest checkpoint
  assert length.plan(_cfg('optim.schedule=wsd', 'train.steps=300'), 200, [50, 100],
                     'd').restore_at == 100


def test_wsd_without_a_checkpoint_before_the_decay_is_refused_naming_checkpoint_every():
  with pytest.raises(ConfigError) as err:
    length.plan(_cfg('optim.schedule=wsd', 'train.steps=300'), 200, [180, 200], 'run/tiny')
  text = str(err.value)
  assert '\n' not in text and text.startswith(
      'run/tiny cannot go on with train.steps=300 (it was 200): under optim.schedule=wsd the '
      'lr decay of the 200-step run begins at step 160, and no checkpoint is left at or '
      'before step 160 (it has steps 180, 200; train.checkpoint_every=50')
  assert 'keep a checkpoint from before its lr decay begins' in text


def test_constant_goes_on_from_any_checkpoint_before_the_new_end():
  cfg = _cfg('optim.schedule=constant', 'train.steps=300')
  assert length.plan(cfg, 200, [100, 150, 200], 'd').restore_at == 200
  lower = _cfg('optim.schedule=constant', 'train.steps=200')
  assert length.plan(lower, 300, [100, 200, 300], 'd').restore_at == 100   # one step trains


@pytest.mark.parametrize('overrides, reason', [
    (['optim.schedule=cosine'], 'under optim.schedule=cosine the lr of every step after the '
                                'warmup depends on train.steps'),
    (['optim.schedule=linear'], 'under optim.schedule=linear'),
    (['optim.schedule=constant', 'optim.warmup_steps=250'],
     'optim.warmup_steps=250 does not fit in 200 steps'),
])
def test_schedules_whose_past_moves_with_the_length_are_refused(overrides, reason):
  with pytest.raises(ConfigError, match='cannot go on with train.steps=300') as err:
    length.plan(_cfg(*overrides, 'train.steps=300'), 200, [100, 150, 200], 'd')
  assert reason in str(err.value)


def test_a_growth_plan_is_refused():
  cfg = _cfg('optim.schedule=constant', 'train.steps=300')
  cfg = dataclasses.replace(cfg, growth=dataclasses.replace(cfg.growth, method='stack'))
  with pytest.raises(ConfigError, match='growth.method=stack'):
    length.plan(cfg, 200, [100, 150, 200], 'd')


def test_the_guard_takes_a_steps_change_only_through_the_rule(tmp_path):
  run_dir = RunDir(tmp_path)
  run_dir.write_config(_cfg('optim.schedule=wsd', 'train.steps=200'))
  longer = _cfg('optim.schedule=wsd', 'train.steps=300')
  rule = lambda old: length.plan(longer, old, [100, 150, 200], tmp_path)
  changes = run_dir.check_config(longer, True, False, new_length=rule)
  assert changes.changes == {'train.steps': (200, 300)} and changes.new_length.restore_at == 150
  with pytest.raises(ConfigError, match='another config'):          # no rule: refused as before
    run_dir.check_config(longer, True, False)
  with pytest.raises(ConfigError, match=r'model.d_model: 32 -> 64; train.steps: 200 -> 300'):
    run_dir.check_config(_cfg('optim.schedule=wsd', 'train.steps=300', 'model.d_model=64'),
                         True, False, new_length=rule)


# ------------------------------------------------------------------ through the CLI

def _start(workdir, *args):
  return subprocess.Popen([sys.executable, 'launch.py', 'run', 'tiny', *args,
                           f'train.workdir={workdir}'], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc) -> subprocess.CompletedProcess:
  out, err = proc.communicate(timeout=900)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _refused(workdir, *args) -> subprocess.CompletedProcess:
  """`launch.py run tiny ...` in this process, for a command that exits before anything
  compiles (a subprocess would spend its few seconds importing jax)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(['run', 'tiny', *args, f'train.workdir={workdir}'])
  return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _copy_as(src, dst, schedule):
  """A copy of a run directory whose config.json says another schedule (the guard reads
  only config.json and the checkpoint list)."""
  shutil.copytree(src, dst)
  data = json.loads((dst / 'config.json').read_text())
  data['optim']['schedule'] = schedule
  (dst / 'config.json').write_text(json.dumps(data, indent=2))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{name: (finished process, run directory)}. a200: 200 WSD steps; extended: the same
  directory at train.steps=300; fresh: 300 WSD steps from the start; cosine / constant:
  copies of fresh's directory said to be cosine / constant runs, continued at
  train.steps=400 / 310; bad: a bad optim.decay_fraction. Two or three at a time."""
  root = tmp_path_factory.mktemp('wsd')
  dirs = {k: root / k / 'tiny' for k in ('a', 'fresh', 'cosine', 'constant', 'bad')}
  a = _start(root / 'a', *WSD, 'train.steps=200')
  fresh = _start(root / 'fresh', *WSD, 'train.steps=300')
  out = {'bad': (_refused(root / 'bad', 'optim.schedule=wsd', 'optim.decay_fraction=-0.1'),
                 dirs['bad'])}
  out['a200'] = (_finish(a), dirs['a'])
  assert out['a200'][0].returncode == 0, out['a200'][0].stderr
  out['a200_lines'] = lines(dirs['a'])
  extended = _start(root / 'a', *WSD, 'train.steps=300')
  out['fresh'] = (_finish(fresh), dirs['fresh'])
  assert out['fresh'][0].returncode == 0, out['fresh'][0].stderr
  for name in ('cosine', 'constant'):
    _copy_as(dirs['fresh'], dirs[name], name)
  constant = _start(root / 'constant', 'optim.schedule=constant', 'train.checkpoint_every=50',
                    'train.steps=310')
  out['cosine'] = (_refused(root / 'cosine', 'optim.schedule=cosine',
                            'train.checkpoint_every=50', 'train.steps=400'), dirs['cosine'])
  for name, proc in (('extended', extended), ('constant', constant)):
    out[name] = (_finish(proc), dirs['a' if name == 'extended' else name])
  return out


def test_bad_decay_fraction_exits_2_with_one_line_before_any_compile(runs):
  proc, run_dir = runs['bad']
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      'error: optim.decay_fraction=-0.1 must be in (0, 1]: the share of train.steps that '
      'optim.schedule=wsd spends decaying, at the end (e.g. 0.2)']
  assert not run_dir.exists()


def test_wsd_run_extended_from_200_to_300_equals_a_300_step_run_bit_for_bit(runs):
  (proc, run_dir), fresh_dir = runs['extended'], runs['fresh'][1]
  assert proc.returncode == 0, proc.stderr
  extended, fresh = trajectory(run_dir), trajectory(fresh_dir)
  assert [r['step'] for r in fresh] == list(range(2, 301, 2))
  assert extended == fresh
  assert (f'resuming {run_dir} from step 150 with train.steps 200 -> 300: under '
          'optim.schedule=wsd the lr decay of the 200-step run begins at step 160') in proc.stdout
  # the 200-step run had decayed from step 160 on: going on from its newest checkpoint
  # (200) would have differed from the fresh run
  old = {r['step']: r for r in runs['a200_lines'] if 'event' not in r}
  assert old[160]['lr'] == fresh[79]['lr'] == pytest.approx(1e-2)
  assert old[200]['lr'] < 2e-3 < fresh[99]['lr']
  assert old[200]['loss'] != fresh[99]['loss']
  assert fresh[119]['lr'] == pytest.approx(1e-2) and fresh[-1]['lr'] < 2e-3   # decay at 240
  # the old length's end is kept, not restored; the history names the change and its step
  assert sorted(p.name for p in (run_dir / 'checkpoints_superseded').iterdir()) == ['200']
  assert sorted(int(p.name) for p in (run_dir / 'checkpoints').iterdir()) == [200, 250, 300]
  (backup,) = run_dir.glob('metrics.jsonl.bak-*')   # the 200-step run's records, all kept
  assert [json.loads(l) for l in backup.read_text().splitlines()] == runs['a200_lines']
  config = json.loads((run_dir / 'config.json').read_text())
  assert config['train']['steps'] == 300
  assert config['history'] == [{'step': 150, 'changes': {'train.steps': [200, 300]}}]
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert summary['step'] == 300 and summary['status'] == 'completed'


def test_cosine_extension_is_refused_with_its_reason(runs):
  proc, run_dir = runs['cosine']
  assert proc.returncode == 2, proc.stderr
  (line,) = [l for l in proc.stderr.splitlines() if l.strip()]
  assert line.startswith(f'error: {run_dir} cannot go on with train.steps=400 (it was 300): '
                         'under optim.schedule=cosine the lr of every step after the warmup '
                         'depends on train.steps. To continue that run, rerun it')
  assert json.loads((run_dir / 'config.json').read_text())['train']['steps'] == 300


def test_constant_extension_goes_on_from_the_newest_checkpoint(runs):
  proc, run_dir = runs['constant']
  assert proc.returncode == 0, proc.stderr
  assert (f'resuming {run_dir} from step 300 with train.steps 300 -> 310: under '
          'optim.schedule=constant the lr does not depend on train.steps') in proc.stdout
  recs = trajectory(run_dir)
  assert recs[:150] == trajectory(runs['fresh'][1])
  assert [r['step'] for r in recs[150:]] == [302, 304, 306, 308, 310]
  assert all(r['lr'] == pytest.approx(1e-2, rel=1e-6) for r in recs[150:])
  assert all(math.isfinite(r['loss']) for r in recs)
  assert not (run_dir / 'checkpoints_superseded').exists()
  (entry,) = json.loads((run_dir / 'config.json').read_text())['history']   # the copy's
  assert entry['step'] == 300 and entry['changes']['train.steps'] == [300, 310]   # workdir too
