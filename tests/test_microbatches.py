"""train.microbatches (gradient accumulation, jaxlab/train/step.py): the split step's update
equals the unsplit batch's, across a growth event and under muP, and a batch the
microbatches cannot split is a config error before anything compiles."""
from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab import growth
from jaxlab.launch import cli
from jaxlab.parallel import make_mesh
from jaxlab.train.program import build_program, layer_gate_fn
from jaxlab.train.runnable import resolve
from jaxlab.train.step import make_train_step

STEPS = 3
CASES = {
    'plain': ['train.batch_size=8', 'train.microbatches=4'],
    # muP with SGDP and the weight stats; phase 0 trains step 0 on 1 layer, phase 1 steps
    # 1-2 on 2, the new layer ramped in (growth's per-layer gate goes into every microbatch).
    # SGD-like: its update is linear in the gradient. Adam's g / (|g| + eps) turns the
    # rounding of an entry with |g| ~ eps into a step of up to lr (measured with AdamP here:
    # one entry off by 3.5e-5, 1.0e-6 relative over the params), a property of Adam, not
    # of the split.
    'growth+mup': ['model.parametrization=mup', 'model.base_d_model=16', 'optim.name=sgdp',
                   'optim.warmup_steps=0', 'train.weight_stats=true', 'growth.method=random',
                   'growth.factor=2', 'growth.ramp_steps=2', 'growth.at_tokens=128',
                   'train.microbatches=2'],
}


def _batches(rows: int, length: int):
  """STEPS batches of random tokens with packed documents, padding and a row with no
  target at all, so the microbatches hold different numbers of targets (a mean taken
  per microbatch, not over the whole batch, would weight them wrongly)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 257, (STEPS, rows, length + 1), dtype=np.int32)
  segments = np.ones_like(tokens)
  segments[:, :, length // 3:] = 2
  segments[:, 0, length - 6:] = 0
  segments[:, 1] = 0
  return [{'tokens': t, 'segment_ids': s} for t, s in zip(tokens, segments)]


def _train_both(overrides):
  """{1: ..., M: ...}: (params after STEPS steps, each step's metrics) of the program's
  microbatched train step (train.microbatches=M) and of the unsplit step built from the
  same program's parts, from the same initial state and through the same growth."""
  cfg = resolve(config_lib.load('tiny', overrides))
  mesh, phases, m = make_mesh(cfg.mesh), growth.phases(cfg), cfg.train.microbatches
  program, states, logged = None, {}, {1: [], m: []}
  for step, batch in enumerate(_batches(cfg.train.batch_size, cfg.data.seq_len)):
    k = max(i for i, p in enumerate(phases) if p.start_step <= step)
    if program is None or program.phase != k:
      program = build_program(cfg, mesh, k, phases)
      steps = {m: program.train_step, 1: make_train_step(
          program.model, program.tx, program.lr_schedule, program.shardings,
          program.batch_sharding, layer_gate_fn(cfg, phases, k), cfg.train.weight_stats)}
      if not states:
        first = program.init_state()
        states = {1: jax.tree.map(jnp.copy, first), m: first}
      else:
        states = {n: program.enter(s) for n, s in states.items()}
      # the program's step really splits: its batch as m microbatches of rows / m
      split = f'i32[{m},{cfg.train.batch_size // m},{cfg.data.seq_len + 1}]'
      assert split in str(program.train_step.trace(states[m], batch).jaxpr)
    for n in (1, m):
      states[n], metrics = steps[n](states[n], batch)
      logged[n].append(jax.device_get(metrics))
  return {n: (states[n].params, logged[n]) for n in (1, m)}


def _relative(a, b) -> float:
  diff = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(a))
  return (diff / norm) ** 0.5


@pytest.mark.parametrize('case', CASES)
def test_microbatched_update_equals_the_unsplit_batch(case):
  (params_1, logged_1), (params_m, logged_m) = _train_both(CASES[case]).values()
  # Measured: 7e-8 (plain) and 2e-9 (growth+mup): the sums run in another order. A mean
  # per microbatch instead of the whole batch's is off by 1.5e-2 and 2e-3.
  assert _relative(params_1, params_m) < 1e-6
  for one, many in zip(logged_1, logged_m):
    assert set(one) == set(many)
    for key in one:   # loss (the whole batch's mean), grad_norm, weight stats, ...
      assert many[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize('overrides, message', [
    (['train.microbatches=3'], 'train.batch_size=4 must be divisible by train.microbatches=3'),
    (['train.microbatches=2', 'mesh.data=4'],
     'train.batch_size=4 must be divisible by train.microbatches=2 x the data-parallel size 4 '
     '(data x fsdp axes of the mesh) = 8'),
    (['train.microbatches=0'], 'train.microbatches=0 must be >= 1'),
])
def test_a_batch_the_microbatches_cannot_split_exits_2(overrides, message, tmp_path, capsys):
  assert cli.main(['run', 'tiny', *overrides, f'train.workdir={tmp_path}']) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'tiny').exists()


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                    reason='needs libtpu: pip install -e ".[tpu]" (make test does)')
def test_compile_checks_the_split_on_the_targets_mesh(tmp_path, capsys):
  """mesh.data=-1 is only known with the devices: 4 chips of a v5e:2x2 take 1 row each."""
  assert cli.main(['compile', 'tiny', 'train.microbatches=2', f'train.workdir={tmp_path}',
                   '--target', 'tpu:v5e:2x2', '--no-estimate']) == 2
  err = capsys.readouterr().err
  assert ('train.batch_size=4 must be divisible by train.microbatches=2 x the data-parallel '
          'size 4 (data x fsdp axes of the mesh) = 8') in err, err


def test_a_run_resumes_with_other_microbatches(tmp_path):
  """Like the mesh, train.microbatches changes the update only at float32 rounding: a run
  that ran out of memory goes on from its checkpoint with more microbatches."""
  from jaxlab.config.types import ConfigError
  from jaxlab.rundir.directory import RunDir
  run_dir = RunDir(tmp_path)
  run_dir.write_config(config_lib.load('tiny', []))
  changes = run_dir.check_config(config_lib.load('tiny', ['train.microbatches=2']), True, False)
  assert changes.changes == {'train.microbatches': (1, 2)}
  with pytest.raises(ConfigError, match='train.batch_size: 4 -> 8'):   # the batch is not free
    run_dir.check_config(config_lib.load('tiny', ['train.batch_size=8']), True, False)
