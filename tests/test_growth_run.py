"""Growth as an event inside a run, growth from a checkpoint, end to end through the
CLI on the tiny experiment (d_model 32, 2 -> 4 layers, 20 steps); V-cycles in
tests/test_vcycle_run.py."""
import json
import shutil

import pytest

from cli_runs import (TOKENS_PER_STEP, copy_keeping, events_of, launch, layer_count, refused,
                      steps_of, trajectory)

GROW = ['model.n_layers=4', 'growth.method=stack', 'growth.factor=2',
        f'growth.at_tokens={8 * TOKENS_PER_STEP}', 'train.log_every=1',
        'train.keep_checkpoints=10']


@pytest.fixture(scope='module')
def grown(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('grown')
  proc = launch('run', 'tiny', *GROW, workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  assert 'growth at step 8' in proc.stdout
  return workdir / 'tiny'


def test_growth_inside_a_run_keeps_counters_and_saves_the_big_model(grown):
  from jaxlab.config import ModelConfig
  from jaxlab.models.flops import flops_per_token
  from jaxlab.optim import non_embedding_params
  recs = steps_of(grown)
  assert [r['step'] for r in recs] == list(range(1, 21))
  small = flops_per_token(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), 32)
  big = flops_per_token(ModelConfig(d_model=32, n_layers=4, n_heads=2, d_ff=64), 32)
  assert big > small
  for prev, r in zip([{'tokens': 0, 'flops': 0.0}] + recs, recs):
    assert r['tokens'] - prev['tokens'] == TOKENS_PER_STEP
    per_token = small if r['step'] <= 8 else big     # the small model's FLOPs are counted
    assert r['flops'] - prev['flops'] == pytest.approx(TOKENS_PER_STEP * per_token, rel=1e-12)
  (event,) = events_of(grown)
  assert event['event'] == 'grow' and event['step'] == 8
  assert event['tokens'] == 8 * TOKENS_PER_STEP and event['flops'] == recs[7]['flops']
  assert (event['from'], event['to']) == ('d32 L2 H2/2 F64', 'd32 L4 H2/2 F64')
  ckpts = sorted(int(p.name) for p in (grown / 'checkpoints').iterdir())
  assert 8 in ckpts                                   # a checkpoint right after growth
  assert layer_count(grown, 5) == 2 and layer_count(grown, 8) == 4 and layer_count(grown, 20) == 4
  summary = json.loads((grown / 'summary.json').read_text())
  assert summary['flops_per_token'] == big and summary['flops'] == recs[-1]['flops']
  # N both ways, of the grown (final) model: all parameters, and without the embedding and
  # head (vocab x d each, untied), as launch.py fit reads them.
  target = ModelConfig(d_model=32, n_layers=4, n_heads=2, d_ff=64)
  assert summary['n_params_non_embedding'] == non_embedding_params(target)
  assert summary['n_params'] - summary['n_params_non_embedding'] == 2 * target.vocab_size * 32
  # optimizer=reset restarts the lr warmup (2 steps): lr at step 9 (first big step) is 0.
  assert recs[8]['lr'] == 0.0 and recs[9]['lr'] > 0


@pytest.mark.parametrize('keep', [[5], [8], [10]], ids=['before', 'at', 'after'])
def test_resume_before_at_and_after_growth_reproduces_the_run(grown, tmp_path, keep):
  run_dir = tmp_path / 'tiny'
  copy_keeping(grown, run_dir, keep[0])
  proc = launch('run', 'tiny', *GROW, workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert f'from step {keep[0]}' in proc.stdout
  assert ('growth at step 8' in proc.stdout) == (keep[0] < 8)   # grows again at the same point
  assert trajectory(run_dir) == trajectory(grown)
  assert len(events_of(run_dir)) == 1


def test_zero_growth_in_a_run_keeps_the_val_loss(tmp_path):
  proc = launch('run', 'tiny', *GROW, 'growth.method=zero', workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  (event,) = events_of(tmp_path / 'tiny')
  # G_zero's new blocks are the identity: same function, so the same val loss up to
  # float32 summation order in the deeper scan (~1e-7 relative).
  assert event['val_loss_after'] == pytest.approx(event['val_loss_before'], rel=1e-6)


def test_random_growth_ramps_new_layers_in_from_the_identity(tmp_path):
  proc = launch('run', 'tiny', *GROW, 'growth.method=random', 'growth.ramp_steps=4',
                workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  (event,) = events_of(tmp_path / 'tiny')
  # The gate of the new (random) layers is 0 at the growth step: the model is the old one.
  assert event['val_loss_after'] == pytest.approx(event['val_loss_before'], rel=1e-6)


def test_ramp_gate_values():
  import jax.numpy as jnp
  from jaxlab.config import load
  from jaxlab.growth import phases
  from jaxlab.train.program import layer_gate_fn
  cfg = load('tiny', GROW + ['growth.method=random', 'growth.ramp_steps=4'])
  gate = layer_gate_fn(cfg, phases(cfg), 1)
  # stack map 2 -> 4 layers: [0, 1, 0, 1]; layers 2 and 3 are new.
  assert gate(jnp.asarray(8)).tolist() == [1, 1, 0, 0]
  assert gate(jnp.asarray(9)).tolist() == [1, 1, 0.25, 0.25]
  assert gate(jnp.asarray(12)).tolist() == [1, 1, 1, 1]
  assert gate(jnp.asarray(30)).tolist() == [1, 1, 1, 1]
  assert layer_gate_fn(load('tiny', GROW), phases(load('tiny', GROW)), 1)(jnp.asarray(9)) is None


def test_grown_optimizer_state_continues_the_schedule(grown, tmp_path):
  proc = launch('run', 'tiny', *GROW, 'growth.optimizer=grow', workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr
  with_grow, with_reset = steps_of(tmp_path / 'tiny'), steps_of(grown)
  assert with_grow[:8] == [dict(r, time=with_grow[i]['time'], input_wait=with_grow[i]['input_wait'],
                                tokens_per_sec=with_grow[i]['tokens_per_sec'])
                           for i, r in enumerate(with_reset[:8])]
  from jaxlab.config import OptimConfig
  from jaxlab.optim import make_schedule
  schedule = make_schedule(OptimConfig(lr=1e-2, warmup_steps=2), 20)   # tiny's optimizer
  assert [r['lr'] for r in with_grow] == pytest.approx([float(schedule(s)) for s in range(20)])
  # Step 9 is the first update after growth; its effect shows in step 10's loss.
  assert with_grow[9]['loss'] != with_reset[9]['loss']


def test_grow_from_checkpoint_equals_growing_in_the_run(grown, tmp_path):
  # The small model alone, with `grown`'s schedule (20 steps) and a checkpoint at step 8,
  # where `grown` grows inside its run.
  src = ['run', 'tiny', 'train.log_every=1', 'train.keep_checkpoints=10',
         'train.checkpoint_every=8', f'train.workdir={tmp_path}']
  proc = launch(*src)
  assert proc.returncode == 0, proc.stderr
  out = tmp_path / 'big'
  proc = launch('grow', '--from', str(tmp_path / 'tiny'), '--step', '8', '--method', 'stack',
                '--factor', '2', '--out', str(out), 'train.log_every=1',
                'train.keep_checkpoints=10')
  assert proc.returncode == 0, proc.stderr
  assert layer_count(out, 8) == 4
  proc = launch('run', str(out))
  assert proc.returncode == 0, proc.stderr
  assert 'resuming' in proc.stdout and 'from step 8' in proc.stdout
  expected = trajectory(grown)
  # The only difference: growing inside a run evaluates the small model right before it
  # grows (step 8); the source run evaluates on tiny's schedule only (steps 10 and 20).
  assert 'val_loss' in expected[7] and 'val_loss' not in trajectory(out)[7]
  del expected[7]['val_loss']
  assert trajectory(out) == expected
  assert [e['event'] for e in events_of(out)] == ['grow']


def test_growth_config_errors_are_clear():
  proc = refused('run', 'tiny', 'model.n_layers=4', 'growth.method=stack', 'growth.timing=auto')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'fitted rule' in proc.stderr and 'growth.at_tokens' in proc.stderr
  proc = refused('run', 'tiny', 'growth.method=stack', 'growth.at_tokens=999999')
  assert proc.returncode == 2 and 'growth.at_tokens=999999 must be in (0, 2560)' in proc.stderr
  proc = refused('run', 'tiny', 'growth.method=stakc')
  assert proc.returncode == 2 and "did you mean 'stack'" in proc.stderr


def test_report_with_a_baseline_tabulates_the_compute_saved(grown, tmp_path):
  study = tmp_path / 'study'
  shutil.copytree(grown, study / 'stack')
  shutil.copytree(grown, study / 'scratch')
  proc = launch('report', str(study), '--baseline', 'scratch')
  assert proc.returncode == 0, proc.stderr
  text = (study / 'report.md').read_text()
  assert "FLOPs to reach the baseline's final val loss" in text
  assert (study / 'val_loss_vs_flops.png').read_bytes()[:4] == b'\x89PNG'
  import csv
  rows = {r['run']: r for r in csv.DictReader(open(study / 'savings.csv'))}
  assert float(rows['stack']['saving']) == 0.0          # the same run: nothing saved
  assert float(rows['stack']['growth_at_flops']) == events_of(grown)[0]['flops']
  proc = launch('report', str(study), '--baseline', 'nope')
  assert proc.returncode == 2 and "baseline run 'nope' not found" in proc.stderr
