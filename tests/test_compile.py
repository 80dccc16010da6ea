"""`launch.py compile`: runs compiled for TPU topologies from this CPU machine with libtpu
(jaxlab.aot), no TPU. Each compile costs seconds, so the cases are few and tiny: the
`tiny` train step with each attention backend on v5e:2x2 under (data, fsdp, tensor)
meshes, a growth run's phases on a two-host v5p slice, a run that does not fit, and the
attention kernels' forward and backward at T = 32k."""
from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import aot
from jaxlab.aot import report as aot_report
from jaxlab.launch import cli
from jaxlab.launch import compile as compile_lib
from jaxlab.models import flops as metrics
from jaxlab import config as config_lib
from jaxlab.aot import check, gpu, targets
from jaxlab.config.types import ConfigError
from jaxlab.kernels import flash_attention

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='needs libtpu: pip install -e ".[tpu]" (make test does)')
needs_cuda_plugin = pytest.mark.skipif(
    not gpu.available(), reason='needs jax\'s CUDA plugin: pip install -e ".[gpu]" (~5 GB; '
    'not installed by make test)')


def test_accelerator_types_map_to_topologies_like_gcloud():
  # gcloud: v4 / v5p count TensorCores (2 per chip, 4 chips per host); v5e / v6e count
  # chips (one host up to 8 chips, then 4 per host). Layouts as in gcloud's docs and
  # MaxText's accelerator_to_spec_map.
  want = {'tpu:v5p-8': ('v5:2x2x1', 4, 1), 'tpu:v5p-64': ('v5:2x4x4', 32, 8),
          'tpu:v5p-256': ('v5:4x4x8', 128, 32), 'tpu:v4-32': ('v4:2x2x4', 16, 4),
          'tpu:v5e-8': ('v5e:2x4', 8, 1), 'tpu:v5litepod-16': ('v5e:4x4', 16, 4),
          'tpu:v5e-256': ('v5e:16x16', 256, 64), 'tpu:v6e-64': ('v6e:8x8', 64, 16),
          'tpu:v5e:2x2': ('v5e:2x2', 4, 1), 'tpu:v5p:4x4x12': ('v5:4x4x12', 192, 48)}
  for name, (topology, chips, hosts) in want.items():
    t = targets.parse_target(name)
    assert (t.topology_name, t.chips, t.hosts) == (topology, chips, hosts), name
  assert targets.parse_target('tpu:v5p-8', slices=2).chips == 8
  for bad, message in (('tpu:v5p-12', 'counts TensorCores'), ('tpu:v5e-2', 'v5e slices have'),
                       ('tpu:v7-8', "unknown TPU generation 'v7'"), ('tpu', 'tpu:TYPE')):
    with pytest.raises(ConfigError, match=message):
      targets.parse_target(bad)


def _tiny(*overrides):
  return config_lib.load('tiny', ['train.eval_batches=0', *overrides])


def _custom_calls(compiled) -> str:
  return ' '.join(line for line in compiled.as_text().splitlines() if 'custom-call' in line)


# tiny, wide enough that matmuls dominate the FLOPs (for the check against the formula).
WIDER = ('model.d_model=128', 'model.d_ff=512', 'data.seq_len=128', 'train.batch_size=8')


@needs_libtpu
def test_tiny_compiles_for_v5e_and_reports_memory_analysis(tmp_path, capsys):
  # What `launch.py compile tiny --target tpu:v5e:2x2` runs: the table, compile.json, exit
  # 0; xla attention, data-parallel mesh, train and eval steps, the XLA estimate.
  cfg = config_lib.load('tiny', [f'train.workdir={tmp_path}', *WIDER])
  [live], code = compile_lib.compile_and_report(cfg, 'tpu:v5e:2x2')
  out = capsys.readouterr().out
  assert code == 0, out
  assert '| 0 | d128 L2 H2/2 F512 | 4/1/1 | xla |' in out and 'compile-time estimates' in out
  [row] = json.loads((tmp_path / 'tiny' / 'compile.json').read_text())
  for key in ('phase', 'hbm_bytes_per_chip', 'hbm_capacity_bytes', 'fits', 'flops_per_step',
              'estimated_step_seconds', 'estimated_mfu', 'compile_seconds'):
    assert key in row, key
  assert row['fits'] and row['hbm_capacity_bytes'] == int(15.75 * 2 ** 30)
  # The reported memory is the compiled programs' memory_analysis(), field by field.
  for name in ('train', 'eval'):
    m = live['compiled'][name].memory_analysis()
    got = live['memory'][name]
    assert (got['argument'], got['output'], got['alias'], got['temp'], got['code']) == (
        m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
        m.temp_size_in_bytes, m.generated_code_size_in_bytes), name
    assert got == row['memory'][name], name      # compile.json holds the same numbers
  assert row['hbm_bytes_per_chip'] == max(m['peak'] for m in row['memory'].values())
  assert live['memory']['train']['alias'] > 0    # the state is donated
  # XLA's count against jaxlab's formula, which halves causal attention where the XLA
  # einsums compute the whole T x S score matrix: add that half back. Without the loop
  # correction XLA would count one of the two layers (ratio ~0.55); the rest is
  # elementwise work (softmax, norms, SwiGLU, cross-entropy, AdamW): measured 1.07.
  L, T, H, K, B = 2, 128, 2, 64, 8
  full_attention = 6 * L * T * H * K * B * T / 2
  ratio = row['xla_flops_per_step'] / (row['flops_per_step'] + full_attention)
  assert 1.0 <= ratio <= 1.15, ratio
  peak = metrics.peak_flops_per_device('TPU v5 lite')
  assert row['estimated_mfu'] == pytest.approx(
      row['flops_per_step'] / (row['estimated_step_seconds'] * peak * 4))


@needs_libtpu
@pytest.mark.parametrize('attention, mesh, kernel', [
    ('pallas', ('mesh.data=1', 'mesh.fsdp=2', 'mesh.tensor=2', 'model.vocab_size=258'),
     'flash_attention_dkdv'),
    ('splash', ('mesh.data=2', 'mesh.fsdp=2', 'data.seq_len=128'), 'splash_mha_dkv'),
])
def test_fused_attention_compiles_with_mosaic_for_v5e(attention, mesh, kernel):
  cfg = _tiny(f'model.attention={attention}', *mesh)
  [row] = aot.check_run(cfg, targets.parse_target('tpu:v5e:2x2'), log=lambda line: None,
                        estimate=False)
  assert row['fits']
  calls = _custom_calls(row['compiled']['train'])
  assert 'tpu_custom_call' in calls and kernel in calls   # Mosaic kernels, not interpreted


@needs_libtpu
def test_growth_phases_compile_on_a_two_host_slice():
  # G_stack 1 -> 2 layers on v5p-16 (8 chips, 2 hosts) under a (2, 2, 2) mesh: both phases
  # and the growth transition between them.
  cfg = _tiny('growth.method=stack', 'growth.factor=2', 'growth.at_tokens=640', 'mesh.data=2',
              'mesh.fsdp=2', 'mesh.tensor=2', 'model.vocab_size=258')
  target = targets.parse_target('tpu:v5p-16')
  assert target.hosts == 2
  rows = aot.check_run(cfg, target, log=lambda line: None, estimate=False)
  assert [r['model'] for r in rows] == ['d32 L1 H2/2 F64', 'd32 L2 H2/2 F64']
  assert all(r['fits'] for r in rows) and rows[0]['mesh'] == {'data': 2, 'fsdp': 2, 'context': 1,
                                                              'tensor': 2}
  assert 'enter' in rows[1]['memory'] and 'enter' not in rows[0]['memory']


# Too big for one v5e chip: ~13B params of float32 with AdamW, which the compiler refuses
# within a second.
HUGE = ('model.d_model=4096', 'model.n_heads=32', 'model.d_ff=16384', 'model.n_layers=48')


@needs_libtpu
def test_a_run_that_does_not_fit_exits_2_naming_phase_and_remedies(tmp_path, capsys):
  code = cli.main(['compile', 'tiny', *HUGE, f'train.workdir={tmp_path}', '--target',
                   'tpu:v5e:1x1', '--no-estimate'])
  err = capsys.readouterr().err
  assert code == 2
  assert 'phase 0 (d4096 L48 H32/32 F16384) does not fit on tpu:v5e:1x1' in err
  for remedy in ('model.remat=save_dots', 'train.batch_size=2', 'model.dtype=bfloat16'):
    assert remedy in err, remedy
  [row] = json.loads((tmp_path / 'tiny' / 'compile.json').read_text())
  assert row['fits'] is False and row['hbm_bytes_per_chip'] > row['hbm_capacity_bytes']


@needs_libtpu
def test_submit_stops_before_gcloud_when_the_run_does_not_fit(tmp_path, capsys, monkeypatch):
  gcloud = tmp_path / 'gcloud'                     # records any call; none may happen
  gcloud.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
  gcloud.chmod(0o755)
  monkeypatch.setenv('PATH', f'{tmp_path}:/usr/bin:/bin')
  tpu = ['submit', '--target', 'tpu', '--tpu-name', 'my-tpu', '--zone', 'us-east5-a']
  code = cli.main([*tpu, '--accelerator', 'v5litepod-1', 'tiny', *HUGE,
                   f'train.workdir={tmp_path}'])
  out, err = capsys.readouterr()
  assert code == 2 and 'phase 0 (d4096 L48 H32/32 F16384) does not fit on tpu:v5litepod-1' in err
  assert 'nothing was submitted (--skip-compile-check submits anyway)' in err
  assert not (tmp_path / 'calls').exists()
  assert cli.main([*tpu, 'tiny', '--dry-run']) == 2      # no --accelerator: nothing to check
  assert 'pass --accelerator (or $ACCELERATOR_TYPE), e.g. v5p-32, or --skip-compile-check' in (
      capsys.readouterr().err)


@needs_libtpu
def test_bad_targets_exit_2_before_compiling(tmp_path, capsys):
  assert cli.main(['compile', 'tiny', '--target', 'gpu:a100x8']) == 2
  assert "--target 'gpu:a100x8' is not valid: expected gpu:MODELxN" in capsys.readouterr().err
  assert cli.main(['compile', 'tiny', '--target', 'tpu:v5e-8', '--slices', '2']) == 2
  assert 'set mesh.dcn_data' in capsys.readouterr().err


def _kernel_grad(fn, mesh, T, H=8, G=2, K=128):
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=s) for shape, dtype in (
      ((1, T, H, K), jnp.bfloat16), ((1, T, G, K), jnp.bfloat16), ((1, T, G, K), jnp.bfloat16),
      ((1, T), jnp.int32))]

  def loss(q, k, v, ids):
    return fn(q, k, v, causal=True, segment_ids=ids).astype(jnp.float32).sum()
  compiled, _ = check.compile_for(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), args, mesh)
  return compiled


@needs_libtpu
def test_flash_kernel_compiles_forward_and_backward_at_32k():
  # It used to run out of scoped VMEM here (whole-sequence K/V per head); splash at 32k and
  # both at 128k are in bench/compile_kernels.py (tens of seconds each).
  devices = targets.devices(targets.parse_target('tpu:v5e:1x1'))
  mesh = jax.sharding.Mesh(np.array(devices), ('x',))
  compiled = _kernel_grad(flash_attention, mesh, 32 * 1024)
  assert _custom_calls(compiled).count('tpu_custom_call') >= 3   # forward, dq, dk/dv


@needs_cuda_plugin
def test_tiny_compiles_for_eight_h100s_without_a_gpu():
  # jax[cuda12]'s plugin compiles against a GPU description (jaxlab/aot/gpu.py); the Pallas
  # kernel goes through Triton and ptxas for sm_90. No cost analysis on GPU: no estimate.
  cfg = _tiny('model.attention=pallas', 'train.batch_size=8')
  target = targets.parse_target('gpu:h100x8')
  assert (target.chips, target.hosts) == (8, 1)
  [row] = aot.check_run(cfg, target, log=lambda line: None)
  assert row['fits'] and row['mesh'] == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert row['hbm_capacity_bytes'] == int(84942979072 * 0.75)   # JAX's default preallocation
  assert '__gpu$xla.gpu.triton' in _custom_calls(row['compiled']['train'])
  assert row['estimated_step_seconds'] is None and 'no cost analysis' in row['estimate_note']


def test_estimate_is_withheld_when_xla_adds_loops(monkeypatch):
  """XLA's cost analysis counts a while loop's body once: the 0/1-layer extrapolation holds
  only when neither program has one (the 1-layer Llama-2-7B step on v5p-64 has 22, and the
  extrapolation read 176% MFU). Costs stubbed: (flops, seconds, splash, while loops)."""
  from jaxlab.parallel import make_mesh
  cfg = config_lib.load('tiny', [])
  mesh = make_mesh(cfg.mesh)
  monkeypatch.setattr(check, 'compile_for', lambda fn, args, mesh: (None, 0.5))
  costs = iter([(1e9, 0.01, False, 0), (3e9, 0.03, False, 0),
                (1e9, 0.01, False, 0), (3e9, 0.03, False, 22)])
  monkeypatch.setattr(check, '_cost', lambda compiled: next(costs))
  est = check.estimate_step(cfg, mesh, cfg.model, {})      # no loops: cost(0) + L x delta
  L = cfg.model.n_layers
  assert est['xla_flops_per_device'] == pytest.approx(1e9 + L * 2e9)
  assert est['seconds'] == pytest.approx(0.01 + L * 0.02) and est['note'] is None
  est = check.estimate_step(cfg, mesh, cfg.model, {})
  assert est['seconds'] is None and est['xla_flops_per_device'] is None
  assert 'while loops into the 0- and 1-layer steps (0 and 22' in est['note']


@needs_libtpu
def test_population_compiles_and_counts_every_member():
  """`launch.py compile --population 4`: the one step trains four members: XLA counts four
  times one run's FLOPs (the vmapped step adds no work of its own beyond 1%), the state
  needs more HBM than one run's, and member-steps/s per chip is K over the estimated step
  time. (No eval step, and one run's estimate alone: five compiles in all.)"""
  cfg = config_lib.load('tiny', [*WIDER, 'train.eval_batches=0'])
  target = targets.parse_target('tpu:v5e:1x1')
  [four] = aot.check_run(cfg, target, log=lambda line: None, population=4)
  mesh = check.target_mesh(cfg, target)
  one = check.estimate_step(cfg, mesh, cfg.model, {})
  assert four['population'] == 4
  assert four['xla_flops_per_step'] == pytest.approx(4 * one['xla_flops_per_device'], rel=0.01)
  state = four['memory']['train']['argument']
  assert state > 4 * 4 * 2 * (128 * 512 * 3)   # four members' fp32 MLP kernels, at least
  assert four['member_steps_per_second_per_chip'] == pytest.approx(
      4 / four['estimated_step_seconds'])
  assert 'a population of 4' in aot_report.table([four])
