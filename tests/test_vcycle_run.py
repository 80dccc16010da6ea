"""V-cycles (coalesce, train the coarse model, interpolate back) inside a run, end to end
through the CLI on the tiny experiment, resumed from inside a coarse phase."""
from cli_runs import TOKENS_PER_STEP, copy_keeping, events_of, launch, layer_count, trajectory


def test_vcycle_in_a_run_resumes_inside_the_coarse_phase(tmp_path):
  vc = ['model.d_model=64', 'model.n_heads=4', 'model.d_ff=128', 'model.n_layers=4',
        'growth.method=vcycle', 'growth.factor=2', f'growth.at_tokens={4 * TOKENS_PER_STEP}',
        f'growth.small_tokens={8 * TOKENS_PER_STEP}', 'train.keep_checkpoints=10',
        'train.log_every=1']
  proc = launch('run', 'tiny', *vc, workdir=tmp_path / 'a')
  assert proc.returncode == 0, proc.stderr
  run_dir = tmp_path / 'a' / 'tiny'
  assert [(e['event'], e['step'], e['to']) for e in events_of(run_dir)] == [
      ('coalesce', 4, 'd32 L2 H2/2 F64'), ('interpolate', 12, 'd64 L4 H4/4 F128')]
  assert layer_count(run_dir, 10) == 2 and layer_count(run_dir, 15) == 4
  # Resume from step 10: inside the coarse phase, the big model is stashed in the state.
  copy = tmp_path / 'b' / 'tiny'
  copy_keeping(run_dir, copy, 10)
  proc = launch('run', 'tiny', *vc, workdir=tmp_path / 'b')
  assert proc.returncode == 0, proc.stderr
  assert trajectory(copy) == trajectory(run_dir)



def test_two_level_vcycle_stashes_every_finer_level(tmp_path):
  vc = ['model.d_model=64', 'model.n_heads=4', 'model.d_ff=128', 'model.n_layers=4',
        'growth.method=vcycle', 'growth.factor=2', 'growth.levels=2',
        f'growth.at_tokens={2 * TOKENS_PER_STEP}', f'growth.small_tokens={4 * TOKENS_PER_STEP}',
        'train.keep_checkpoints=10', 'train.log_every=1']
  proc = launch('run', 'tiny', *vc, workdir=tmp_path / 'a')
  assert proc.returncode == 0, proc.stderr
  run_dir = tmp_path / 'a' / 'tiny'
  assert [(e['event'], e['step'], e['to']) for e in events_of(run_dir)] == [
      ('coalesce', 2, 'd32 L2 H2/2 F64'), ('coalesce', 4, 'd16 L1 H1/1 F32'),
      ('interpolate', 8, 'd32 L2 H2/2 F64'), ('interpolate', 10, 'd64 L4 H4/4 F128')]
  # Step 5 is on the coarsest level: the state stashes levels 0 and 1.
  copy = tmp_path / 'b' / 'tiny'
  copy_keeping(run_dir, copy, 5)
  proc = launch('run', 'tiny', *vc, workdir=tmp_path / 'b')
  assert proc.returncode == 0, proc.stderr
  assert trajectory(copy) == trajectory(run_dir)
