"""Ring attention over the 'context' mesh axis (jaxlab/kernels/ring_attention.py), its
load-balanced layout (ring_layout.py), its fused per-block kernels (ring_blocks.py) and the
model on a context mesh.

The multi-device checks run in ONE subprocess with 8 fake CPU devices
(tests/ring_worker.py): every mesh / mask case (with the XLA block, and with the Pallas
flash block at context 2 and 4), the blocks each device ran, and the tiny model trained 20
steps at mesh.context=4 and at mesh.context=1.

Tolerance 1e-5 relative (the issue's bound), as max |ring - reference| / max |reference|
per tensor: the ring computes the reference's float32 math in another order (a softmax
per key block merged by log-sum-exp; gradients block by block from the final
log-sum-exp). Measured worst case over all cases: 5.1e-7 (outputs and dq / dk / dv; the
Pallas-block cases 3.1e-7); a wrong mask, a missed or doubled block, or a mis-rotated
dK/dV moves results by 1e-2 or more. Losses: context 4 against one device differ by <=
2.5e-7 relative over 20 steps (same math, other reduction orders), while tokens attended
in the zigzag order with natural-order positions and mask (a broken permutation) move the
tiny model's initial loss on these batches from 6.061 to 6.105 (measured on one device).

The fused blocks one at a time (one device, interpret mode): Pallas and splash against
the XLA block, forward (out, lse) and backward from a row's final lse and delta, with
query rows that see no key in the block (out 0, lse -inf). Splash's real (Mosaic) kernels
inside the ring are lowered for a TPU topology from this CPU (libtpu).
"""
import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxlab.config import ConfigError, MeshConfig, load
from jaxlab.kernels.ring_layout import causal_block_counts, order
from jaxlab.parallel import mesh_shape

import xla_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
RTOL = 1e-5
# XLA:CPU aborts a collective whose fake devices do not all arrive within 40 s. On this
# shared 2-core machine (load ~19) one context-mesh run died that way once, with ring
# ppermutes and a context all-gather in flight on different fake devices; the longer
# limit tells a starved device from a hang (see the README's long-context section).
TIMEOUT_FLAG = '--xla_cpu_collective_call_terminate_timeout_seconds=300'


@pytest.fixture(scope='module')
def eight():
  env = xla_env.env(8, TIMEOUT_FLAG)
  proc = subprocess.run([sys.executable, str(ROOT / 'tests' / 'ring_worker.py')], cwd=ROOT,
                        capture_output=True, text=True, timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_ring_matches_reference_values_and_gradients(eight):
  cases = eight['cases']
  for case in cases:
    for key, err in case['errors'].items():
      assert err <= RTOL, (case['name'], key, err)
  # What the cases cover (the list): context 2, 4, 8; with data and tensor axes;
  # causal on and off; segment ids across shards; GQA; ragged (padded) tails.
  assert {c['context'] for c in cases} == {2, 4, 8}
  assert any(c['mesh'][0] > 1 for c in cases) and any(c['mesh'][3] > 1 for c in cases)
  for flag in ('segments', 'gqa', 'ragged'):
    assert any(c[flag] and c['causal'] for c in cases), flag
  assert any(not c['causal'] for c in cases)
  # The flash kernel's block (interpret mode) in the ring: causal, GQA, segment ids across
  # shards, at context 2 and 4.
  fused = [c for c in cases if c['block'] == 'pallas']
  assert {c['context'] for c in fused} == {2, 4}
  assert all(c['causal'] and c['gqa'] and c['segments'] for c in fused)


def test_masked_blocks_are_skipped_and_zigzag_balances_them(eight):
  blocks = eight['blocks']
  # Counted as the block function ran, per device: skipped blocks never ran.
  assert blocks['zigzag']['ran'] == blocks['zigzag']['expected'] == [9, 9, 9, 9]
  assert blocks['contiguous']['ran'] == blocks['contiguous']['expected'] == [3, 7, 11, 15]


def test_model_trains_the_same_on_a_context_mesh(eight):
  one, four = eight['train']['ctx1'], eight['train']['ctx4']
  assert len(one) == 20 and one[-1] < one[0] - 1   # it trains
  np.testing.assert_allclose(four, one, rtol=RTOL)


def _blocks_from_mask(n: int, layout: str) -> list[int]:
  """Per device, the (chunk x chunk) blocks with any visible (query, key) pair, read off the
  token-level causal mask through the layout's token order: independent of the chunk /
  block_kind arithmetic the ring and causal_block_counts use."""
  T = 2 * n * 3
  c = T // (2 * n)
  pos = order(T, n, layout)                         # global position of each layout slot
  visible = pos[:, None] >= pos[None, :]            # causal, in layout order
  blocks = visible.reshape(2 * n, c, 2 * n, c).any(axis=(1, 3))   # by local chunk slots
  return [int(blocks[2 * i:2 * i + 2].sum()) for i in range(n)]


@pytest.mark.parametrize('n', [2, 4, 8, 16])
def test_causal_block_counts(n):
  zigzag = causal_block_counts(n, 'zigzag')
  assert max(zigzag) - min(zigzag) <= 1 and zigzag == [2 * n + 1] * n
  assert zigzag == _blocks_from_mask(n, 'zigzag')
  contiguous = causal_block_counts(n, 'contiguous')
  assert contiguous == _blocks_from_mask(n, 'contiguous') == [4 * i + 3 for i in range(n)]
  assert causal_block_counts(n, 'zigzag', causal=False) == [4 * n] * n


def test_zigzag_order():
  assert order(16, 4).tolist() == [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9]
  assert sorted(order(48, 8).tolist()) == list(range(48))
  with pytest.raises(ValueError, match='T=12 is not a multiple of 8'):
    order(12, 4)


def test_context_axis_in_the_mesh_and_its_checks():
  assert mesh_shape(MeshConfig(context=4), 8) == (2, 1, 4, 1)
  assert mesh_shape(MeshConfig(data=1, context=2, tensor=4), 8) == (1, 1, 2, 4)
  with pytest.raises(ConfigError, match=r'data.seq_len=32 must be a multiple of 64 under '
                     r'mesh.context=8 x mesh.dcn_context=4'):
    load('tiny', ['mesh.context=8', 'mesh.dcn_context=4'])
  with pytest.raises(ConfigError, match=r'mesh.context=-1 must be >= 1'):
    load('tiny', ['mesh.context=-1'])
  from jaxlab.train.runnable import resolve   # the rule needs the kernels' table
  with pytest.raises(ConfigError, match=r"model.attention='cudnn' with mesh.context > 1: ring "
                     r'attention has no cudnn block \(cuDNN.s fused attention'):
    resolve(load('tiny', ['mesh.context=2', 'model.attention=cudnn']))
  for fused in ('pallas', 'splash'):
    cfg = resolve(load('tiny', ['mesh.context=2', f'model.attention={fused}']))
    assert cfg.model.attention == fused


def test_model_uses_the_ring_on_a_context_mesh():
  """Traced on an abstract mesh (no devices): context 2 puts ring attention (its
  ppermutes) into the model; context 1 leaves the plain reference."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jaxlab.models import Transformer
  from jaxlab.parallel import DEFAULT_RULES
  from jaxlab.parallel.mesh import AXES
  cfg = load('tiny', []).model
  tokens = jnp.zeros((2, 16), jnp.int32)
  params = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), tokens)['params']
  for context in (1, 2):
    mesh = jax.sharding.AbstractMesh((1, 1, context, 1), AXES)

    def forward(p, t):
      with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        return Transformer(cfg).apply({'params': p}, t)
    jaxpr = str(jax.make_jaxpr(forward)(params, tokens))
    assert ('ppermute' in jaxpr) == (context == 2)
    assert 'pallas_call' not in jaxpr                 # model.attention=xla: XLA blocks
  # model.attention=pallas on a context mesh: the ring runs the flash kernel's blocks.
  pallas = dataclasses.replace(cfg, attention='pallas')
  mesh = jax.sharding.AbstractMesh((1, 1, 2, 1), AXES)

  def forward(p, t):
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
      return Transformer(pallas).apply({'params': p}, t)
  jaxpr = str(jax.make_jaxpr(forward)(params, tokens))
  assert 'ppermute' in jaxpr and 'pallas_call' in jaxpr


def _block_inputs(seed=0):
  """A block's inputs (B 2, T = S = 128, GQA 4:2), query / key ids under which rows of
  batch 0 (id 9) see no key, and a row's final statistics: this block's lse merged with
  another block's (absent, -inf, for some of the unseen rows: no key anywhere), random
  delta."""
  import jax
  import jax.numpy as jnp
  from jaxlab.kernels.ring_attention import XLA_BLOCKS
  kq, kk, kv, kd, kl, ke = jax.random.split(jax.random.key(seed), 6)
  B, T, H, G, K = 2, 128, 4, 2, 16
  q, do = jax.random.normal(kq, (B, T, H, K)), jax.random.normal(kd, (B, T, H, K))
  k, v = jax.random.normal(kk, (B, T, G, K)), jax.random.normal(kv, (B, T, G, K))
  q_ids = jnp.array([[1] * 40 + [2] * 50 + [9] * 38, [3] * T], jnp.int32)
  kv_ids = jnp.array([[1] * 60 + [2] * 68, [3] * 100 + [4] * 28], jnp.int32)
  other_BxHxT = jax.random.normal(kl, (B, H, T)).at[0, :, 100:].set(-jnp.inf)
  _, lse_BxHxT = XLA_BLOCKS.forward(q, k, v, q_ids, kv_ids, True, 0.3)
  stats = (jnp.logaddexp(lse_BxHxT, other_BxHxT), jax.random.normal(ke, (B, H, T)))
  return (q, k, v, q_ids, kv_ids), do, stats


@pytest.mark.parametrize('name', ['pallas', 'splash'])
def test_fused_block_matches_the_xla_block(name):
  """One block, one device, interpret mode: (out, lse) and dq / dk / dv from the row's
  final lse and delta, causal (a diagonal block) and not, against XLA_BLOCKS. Measured
  worst relative errors: pallas 4.5e-7, splash 6.8e-7 (float32, reduction order only)."""
  import jax
  import jax.numpy as jnp
  from jaxlab.kernels import ring_blocks
  from jaxlab.kernels.ring_attention import XLA_BLOCKS
  fused = ring_blocks.PALLAS_BLOCKS if name == 'pallas' else ring_blocks.splash_blocks('cpu')
  args, do, (lse_row, delta) = _block_inputs()

  def run(block):
    def both(args, do, lse_row, delta):
      out = []
      for causal in (True, False):
        o, lse = block.forward(*args, causal, 0.3)
        out.append((o, lse, *block.backward(*args, do, lse_row, delta, causal, 0.3)))
      return out
    return jax.jit(both)(args, do, lse_row, delta)
  for causal, got, want in zip((True, False), run(fused), run(XLA_BLOCKS)):
    got, want = list(got), list(want)
    assert all(x.dtype == jnp.float32 for x in got)
    unseen = jnp.isneginf(want[1])                 # rows of id 9: no key in this block
    assert bool(unseen.any()) and bool(jnp.all(jnp.isneginf(got[1]) == unseen))
    assert bool(jnp.all(jnp.where(jnp.swapaxes(unseen, 1, 2)[..., None], got[0], 0.0) == 0))
    got[1], want[1] = (jnp.where(unseen, 0.0, x) for x in (got[1], want[1]))
    for label, a, b in zip(('out', 'lse', 'dq', 'dk', 'dv'), got, want):
      err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
      assert err <= RTOL, (name, causal, label, err)


def test_auto_and_named_ring_blocks_per_platform():
  """The dispatch table's choice of a ring block for model.attention from the chunks'
  shapes and the platform traced for (no kernel runs): auto's order per platform (the
  dense order less the backends without a block, each skipped with its reason), and
  refusals naming why."""
  import jax
  import jax.numpy as jnp
  from jaxlab.kernels import dispatch, ring_blocks
  from jaxlab.kernels.dispatch import AttentionUnsupported
  q = jax.ShapeDtypeStruct((2, 1024, 4, 128), jnp.bfloat16)   # chunks of 256 at n = 2
  k = jax.ShapeDtypeStruct((2, 1024, 2, 128), jnp.bfloat16)
  call = dispatch.chunk_call(q, k, n=2, segment_ids=jax.ShapeDtypeStruct((2, 1024), jnp.int32))
  assert call.q.shape == (2, 256, 4, 128) and call.segment_ids.shape == (2, 256)
  on = lambda platform, c=call: dataclasses.replace(c, platform=platform)  # noqa: E731
  assert dispatch.choose(on('tpu'), ring=True) == ('splash', 'first choice on tpu')
  name, reason = dispatch.choose(on('gpu'), ring=True)
  assert name == 'pallas' and 'tokamax: tokamax' in reason and 'cudnn: cuDNN' in reason
  assert dispatch.choose(on('cpu'), ring=True)[0] == 'xla'
  short = dispatch.chunk_call(q, k, n=8)        # chunks of 64: splash needs 128
  name, reason = dispatch.choose(on('tpu', short), ring=True)
  assert name == 'pallas' and 'multiple of 128' in reason
  # On this CPU: a named block is what it says (interpreted), refusals name the reason.
  assert dispatch.ring_block('pallas', q, k, n=2) is ring_blocks.PALLAS_BLOCKS
  assert dispatch.ring_block('splash', q, k, n=2).name == 'splash'
  for name, why in (('cudnn', 'returns no log-sum-exp'),
                    ('tokamax', 'returns no log-sum-exp; its internal ops'),
                    ('splash', 'T=64 must be a multiple of 128')):
    with pytest.raises(AttentionUnsupported, match=f"'{name}' .model.attention. cannot run "
                       f"ring attention's blocks .mesh.context=.*{why}"):
      dispatch.ring_block(name, q, k, n=8 if name == 'splash' else 2)


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='needs libtpu: pip install -e ".[tpu]" (make test does)')


@needs_libtpu
def test_splash_blocks_lower_in_the_ring_for_a_tpu():
  """The ring's forward and backward with model.attention=splash, lowered for v5p-8 (2 x 2
  chips: data 2, context 2) from this CPU: splash's Mosaic kernels (forward with its lse,
  dq and dk/dv), not interpreted, inside the ring's loop with its collective permutes.
  ~4 s of CPU; compiling it too (libtpu accepts the kernels) takes ~5 s more, and was
  checked by hand, as was the tiny model's whole train step at mesh.context=2 with
  model.attention=splash and =pallas (jaxlab.aot.check_run, ~11 s each)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from jaxlab.aot import targets
  from jaxlab.kernels.ring_attention import ring_attention
  from jaxlab.kernels.dispatch import ring_block
  from jaxlab.parallel.mesh import AXES
  from jaxlab.parallel.rules import activation_rules
  mesh = Mesh(np.array(targets.devices(targets.parse_target('tpu:v5p-8'))).reshape(2, 1, 2, 1),
              AXES)
  B, T, H, G, K = 2, 512, 4, 2, 128

  def spec(shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))

  def step(q, k, v, ids, do):
    def attend(q, k, v):
      block = ring_block('splash', q, k, n=2, segment_ids=ids)
      return ring_attention(q, k, v, causal=True, segment_ids=ids, block=block)
    with activation_rules(mesh):
      out, vjp = jax.vjp(attend, q, k, v)
      return (out, *vjp(do))
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):   # Mosaic reads the chip here
    text = jax.jit(step).lower(spec((B, T, H, K)), spec((B, T, G, K)), spec((B, T, G, K)),
                               spec((B, T), jnp.int32), spec((B, T, H, K))).as_text()
  assert 'tpu_custom_call' in text and 'collective_permute' in text
  for kernel in ('splash_mha_fwd_segmented_residuals', 'splash_mha_dq_segmented',
                 'splash_mha_dkv_segmented'):
    assert kernel in text, kernel
