"""jaxlab.launch.gpu_flags: which runs get MaxText's GPU flags, and that `launch.py run` applies
them before anything starts JAX. (That every flag parses in this jaxlib is checked by
tests/test_submit.py::test_slurm_xla_flags_are_known_to_this_jaxlib.)"""
import pytest

from jaxlab.launch import cli, gpu_flags


def test_set_on_a_gpu_unless_the_user_set_xla_flags():
  env = {}
  line = gpu_flags.apply(env, gpu=True)
  assert env['XLA_FLAGS'] == gpu_flags.flags_string() and env['CUDA_DEVICE_MAX_CONNECTIONS'] == '1'
  assert gpu_flags.flags_string() in line
  mine = {'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=false'}
  assert 'kept as is' in gpu_flags.apply(mine, gpu=True)
  assert mine == {'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=false'}
  cpu = {}
  assert gpu_flags.apply(cpu, gpu=False) == '' and cpu == {}


def test_the_set_is_maxtexts():
  flags = dict(f[2:].split('=', 1) for f in gpu_flags.XLA_FLAGS)
  assert flags['xla_gpu_enable_latency_hiding_scheduler'] == 'true'
  assert flags['xla_gpu_enable_triton_gemm'] == 'false'
  assert int(flags['xla_gpu_all_gather_combine_threshold_bytes']) == 128 * 2**20
  assert int(flags['xla_gpu_reduce_scatter_combine_threshold_bytes']) == 64 * 2**20
  assert all(flags[f'xla_gpu_enable_pipelined_{c}'] == 'true'
             for c in ('all_gather', 'reduce_scatter', 'all_reduce'))


@pytest.mark.parametrize('platforms,gpu', [('cpu', False), ('cuda,cpu', True), ('gpu', True),
                                           ('tpu', False)])
def test_jax_platforms_decides(platforms, gpu):
  assert gpu_flags.gpu_expected({'JAX_PLATFORMS': platforms}) is gpu


def test_run_applies_the_flags_before_loading_the_experiment(monkeypatch, capsys):
  calls = []

  def load(*args):
    calls.append('load')
    raise cli.ConfigError('stop here')
  monkeypatch.setattr(gpu_flags, 'apply_and_log', lambda: calls.append('flags'))
  monkeypatch.setattr(cli.config_lib, 'load', load)
  assert cli.main(['run', 'tiny']) == 2
  assert calls == ['flags', 'load']
