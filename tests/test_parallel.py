"""Scale-out on this CPU: 8 fake devices per process (XLA_FLAGS, in subprocesses), two
processes over jax.distributed (gloo on localhost), checkpoints restored onto other meshes.

Every mesh computes the same math with other reduction orders, so results agree to
float32 rounding: measured drift over these 10 steps is <= 7e-7 relative (loss, grad and
param norms, final params); 1e-5 leaves room and still catches a wrong sharding, which
moves the loss in the first decimals.
"""
import json
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxlab.config import ConfigError, MeshConfig, load
from jaxlab.parallel import mesh_shape, mesh_shapes

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = ROOT / 'tests' / 'multidevice_worker.py'
# tiny, with every sharded dim divisible by 8 (fsdp) and 4 (tensor).
COMMON = ['model.n_heads=4', 'model.vocab_size=264', 'train.batch_size=8', 'train.steps=10',
          'train.log_every=1', 'train.eval_every=5', 'train.checkpoint_every=5',
          'train.keep_checkpoints=10']
# Every axis (data, fsdp, tensor) together, and tensor parallelism at 4; the single-axis
# meshes (8, 1, 1) and (1, 8, 1) add no sharding case these two lack (suite time).
MESHES = {'m222': (2, 2, 2), 'm124': (1, 2, 4)}
GROW = ['model.n_layers=4', 'growth.method=stack', 'growth.factor=2',
        f'growth.at_tokens={4 * 8 * 32}']   # grows at step 4
ADAMP = ['optim.name=adamp', 'optim.lr=3e-2']   # a large lr, so the weights move a lot
RTOL = 1e-5


def mesh_args(data, fsdp, tensor):
  return [f'mesh.data={data}', f'mesh.fsdp={fsdp}', f'mesh.tensor={tensor}']


def env_with(devices: int):
  return xla_env.env(devices if devices > 1 else None)


def worker(*args, devices):
  proc = subprocess.run([sys.executable, str(WORKER), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=900, env=env_with(devices))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def run_all(workdir, runs: dict, devices: int):
  worker('runs', str(workdir), json.dumps([[k, v] for k, v in runs.items()]), devices=devices)


def records(run_dir):
  return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()
          if 'event' not in json.loads(line)]


def final_params(run_dir, step=10):
  """The checkpoint's params, restored onto this (single-device) test process."""
  import jax
  import orbax.checkpoint as ocp
  path = run_dir / 'checkpoints' / str(step) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(meta))
  tree = checkpointer.restore(path, target)
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree['params'])}


def assert_same_curves(ref, other, from_step=0):
  ref = [r for r in records(ref) if r['step'] > from_step]
  other = [r for r in records(other) if r['step'] > from_step]
  assert [r['step'] for r in ref] == [r['step'] for r in other] and ref
  for a, b in zip(ref, other):
    for key in ('loss', 'grad_norm', 'param_norm', 'val_loss', 'proj_fired'):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=RTOL), (a['step'], key)


@pytest.fixture(scope='module')
def single(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one')
  run_all(workdir, {'one': COMMON, 'grow': COMMON + GROW, 'adamp': COMMON + ADAMP}, devices=1)
  return workdir


@pytest.fixture(scope='module')
def eight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eight')
  runs = {name: COMMON + mesh_args(*shape) for name, shape in MESHES.items()}
  runs['grow'] = COMMON + GROW + mesh_args(2, 2, 2)
  runs['adamp'] = COMMON + ADAMP + mesh_args(1, 2, 4)
  runs['pallas'] = COMMON + ['model.attention=pallas'] + mesh_args(2, 2, 2)
  run_all(workdir, runs, devices=8)
  return workdir


def test_mesh_sizes_resolve_and_bad_sizes_are_clear():
  assert mesh_shape(MeshConfig(), 8) == (8, 1, 1, 1)
  assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 1, 2)
  assert mesh_shapes(MeshConfig(data=1, fsdp=-1, dcn_data=2), 8, n_granules=2) == \
      ((1, 4, 1, 1), (2, 1, 1, 1))
  assert mesh_shape(MeshConfig(data=1, fsdp=-1, dcn_data=-1), 8, n_granules=4) == (4, 2, 1, 1)
  with pytest.raises(ConfigError, match=r'mesh.data=3 x mesh.fsdp=2 x mesh.context=1 x '
                     r'mesh.tensor=1 does not tile the 8 available device\(s\); the product '
                     r'must equal 8'):
    mesh_shape(MeshConfig(data=3, fsdp=2), 8)
  with pytest.raises(ConfigError, match=r'mesh.data=-1 x mesh.fsdp=3 .* tile the 8'):
    mesh_shape(MeshConfig(fsdp=3), 8)
  with pytest.raises(ConfigError, match=r'mesh.dcn_data=2 .* does not tile the 3 slices'):
    mesh_shape(MeshConfig(data=-1, dcn_data=2), 6, n_granules=3)
  with pytest.raises(ConfigError, match=r'only one of mesh.data, mesh.fsdp, mesh.tensor may '
                     'be -1'):
    load('tiny', ['mesh.fsdp=-1'])
  with pytest.raises(ConfigError, match=r'mesh.tensor=0 must be >= 1 or -1'):
    load('tiny', ['mesh.tensor=0'])


CLUSTER_VARS = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_JOB_ID',
                'SLURM_PROCID', 'SLURM_NTASKS', 'OMPI_MCA_orte_hnp_uri', 'TPU_WORKER_HOSTNAMES',
                'MEGASCALE_COORDINATOR_ADDRESS', 'TPU_WORKER_ID', 'TPU_ACCELERATOR_TYPE')


@pytest.mark.parametrize('env, expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_PROCID': '0', 'SLURM_NTASKS': '16'}, 'SLURM'),
    ({'SLURM_JOB_ID': '7', 'SLURM_PROCID': '0', 'SLURM_NTASKS': '1'}, None),  # one task
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, 'JAX_COORDINATOR_ADDRESS'),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, 'Cloud TPU'),
    ({'TPU_WORKER_ID': '3'}, 'Cloud TPU'),
    # what JAX's TPU start-up leaves in a CPU host's environment after a compile for a TPU
    ({'TPU_WORKER_ID': 'WARNING: could not determine TPU worker number'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'WARNING: could not determine TPU worker hostnames or IP '
                              'addresses, please set env var `TPU_WORKER_HOSTNAMES`'}, None),
])
def test_cluster_detection_reads_only_the_environment(monkeypatch, env, expected):
  from jaxlab.parallel.mesh import detected_cluster
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  for var, value in env.items():
    monkeypatch.setenv(var, value)
  assert detected_cluster() == expected


def test_distributed_start_up_decisions(monkeypatch):
  from jaxlab.parallel import initialize_distributed
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  # Nothing detected, nothing asked for: single process, jax.distributed untouched.
  assert initialize_distributed(MeshConfig()) is False
  # A detected cluster is ignored when mesh.distributed=off.
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_PROCID', '0')
  monkeypatch.setenv('SLURM_NTASKS', '2')
  assert initialize_distributed(MeshConfig(distributed='off')) is False
  # A coordinator without a process count / id and no cluster to ask is a config error.
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(ConfigError, match=r"mesh.coordinator_address='127.0.0.1:1' needs "
                     'mesh.num_processes and mesh.process_id'):
    initialize_distributed(MeshConfig(coordinator_address='127.0.0.1:1'))


def test_bad_mesh_on_the_command_line_exits_2_before_compiling(tmp_path):
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', 'mesh.data=2', 'mesh.fsdp=2',
                         f'train.workdir={tmp_path}'], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env_with(2))
  assert proc.returncode == 2, proc.stderr
  assert ('error: mesh.data=2 x mesh.fsdp=2 x mesh.context=1 x mesh.tensor=1 does not tile the 2 '
          'available device(s)') in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('name', sorted(MESHES))
def test_every_mesh_trains_like_one_device(single, eight, name):
  assert json.loads((eight / name / 'summary.json').read_text())['n_devices'] == 8
  assert_same_curves(single / 'one', eight / name)
  ref, got = final_params(single / 'one'), final_params(eight / name)
  for key in ref:
    np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=1e-6, err_msg=key)


def test_growth_on_sharded_params_matches_one_device(single, eight):
  assert_same_curves(single / 'grow', eight / 'grow')
  events = [json.loads(line) for line in (eight / 'grow' / 'metrics.jsonl').read_text()
            .splitlines() if 'event' in json.loads(line)]
  assert [e['step'] for e in events] == [4]


def test_pallas_attention_runs_per_shard_and_matches_one_device(single, eight):
  """The Pallas kernel is an opaque call XLA cannot partition: the model runs it under
  shard_map (batch over data x fsdp, heads over tensor) and gets the XLA run's curves."""
  assert_same_curves(single / 'one', eight / 'pallas')


def test_adamp_on_sharded_weights_matches_one_device(single, eight):
  """AdamP's cosines and projections reduce over rows and whole weights that (1,2,4)
  splits over fsdp and tensor: same decisions, same losses as one device."""
  assert_same_curves(single / 'adamp', eight / 'adamp')
  fired = [r['proj_fired'] for r in records(eight / 'adamp')]
  assert max(fired) > 0       # the projection did fire somewhere, so it was exercised


def test_params_state_and_activations_are_sharded_by_the_rules():
  configs = [COMMON + mesh_args(1, 8, 1), COMMON + mesh_args(8, 1, 1),
             COMMON + mesh_args(1, 2, 4)]
  fsdp, dp, tp = json.loads(worker('shards', json.dumps(configs), devices=8))
  # FSDP: every param has an 'embed' dim, split 8 ways; so are their Adam moments: each
  # device holds an eighth of the state (only the scalar counters are replicated).
  assert all('fsdp' in spec for spec in fsdp['specs'].values()), fsdp['specs']
  assert max(fsdp['per_device']) == min(fsdp['per_device'])
  assert fsdp['total'] / 8 <= fsdp['per_device'][0] <= fsdp['total'] / 8 + 64
  # Pure data parallelism (the same logical specs, fsdp and tensor axes of size 1)
  # replicates everything: each device holds the whole state.
  assert all(b == dp['total'] for b in dp['per_device'])
  # Tensor parallelism: heads and mlp over 'tensor', in params and in activations.
  assert tp['specs']["['layers']['attn']['wq']"] == [None, 'fsdp', 'tensor', None]
  assert tp['specs']["['layers']['mlp']['w_up']"] == [None, 'fsdp', 'tensor']
  # The model's activation constraints reach the compiled step: batch over data x fsdp,
  # the sequence over context (size 1 here), heads / mlp / vocab over tensor, the residual
  # stream replicated over tensor.
  assert set(tp['constraints']) == {'[{"data", "fsdp"}, {"context"}, {"tensor"}, {}]',
                                    '[{"data", "fsdp"}, {"context"}, {"tensor"}]',
                                    '[{"data", "fsdp"}, {"context"}, {}]'}


def copy_keeping(src_run, workdir, step):
  """src_run copied into workdir with only checkpoint `step` and no summary."""
  dest = workdir / src_run.name
  shutil.copytree(src_run, dest)
  for ckpt in (dest / 'checkpoints').iterdir():
    if int(ckpt.name) != step:
      shutil.rmtree(ckpt)
  (dest / 'summary.json').unlink()
  return dest


def test_checkpoint_from_222_resumes_on_142_and_on_one_device(eight, tmp_path):
  src = eight / 'm222'
  other = copy_keeping(src, tmp_path / 'other', 5)
  run_all(tmp_path / 'other', {'m222': COMMON + mesh_args(1, 4, 2)}, devices=8)
  assert_same_curves(src, other, from_step=5)
  laptop = copy_keeping(src, tmp_path / 'laptop', 5)
  run_all(tmp_path / 'laptop', {'m222': COMMON}, devices=1)
  assert json.loads((laptop / 'summary.json').read_text())['n_devices'] == 1
  assert_same_curves(src, laptop, from_step=5)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_together_and_agree(tmp_path):
  """Two processes x 2 devices, a hybrid mesh (fsdp within a process, data across the
  two): both see the same global loss; only process 0 writes metrics; each writes its
  own checkpoint shards; and a single process can pick the checkpoint up."""
  port = free_port()
  args = ['launch.py', 'run', 'tiny', 'train.steps=6', 'train.batch_size=8',
          'train.log_every=1', 'train.eval_every=3', 'train.checkpoint_every=3',
          'train.keep_checkpoints=5', 'mesh.data=1', 'mesh.fsdp=2', 'mesh.dcn_data=2',
          f'mesh.coordinator_address=127.0.0.1:{port}', 'mesh.num_processes=2',
          f'train.workdir={tmp_path}']
  procs = [subprocess.Popen([sys.executable, *args, f'mesh.process_id={i}'], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with(2)) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  done = [next(line for line in out.splitlines() if line.startswith('done:')) for out, _ in outs]
  assert done[0] == done[1]
  assert 'process 1 of 2' in outs[1][1]
  run_dir = tmp_path / 'tiny'
  steps = [r['step'] for r in records(run_dir)]
  assert steps == [1, 2, 3, 4, 5, 6]   # one writer: no line twice
  final = records(run_dir)[-1]
  assert f"final loss {final['loss']:.4f}" in done[0]
  ckpt = run_dir / 'checkpoints' / '6'
  assert {p.name for p in (ckpt / 'state').glob('ocdbt.process_*')} == \
      {'ocdbt.process_0', 'ocdbt.process_1'}
  assert {p.name for p in (ckpt / 'data').glob('process_*.json')} == \
      {'process_0-of-2.json', 'process_1-of-2.json'}
  # Debug on one process what ran on two: the state restores; the data split cannot.
  laptop = copy_keeping(run_dir, tmp_path / 'laptop', 3)
  proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', *args[3:9],
                         f'train.workdir={tmp_path / "laptop"}'], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=env_with(1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'written by 2 process(es), this run has 1' in proc.stderr
  assert f'resuming {laptop} from step 3' in proc.stdout
  assert [r['step'] for r in records(laptop)] == [1, 2, 3, 4, 5, 6]
