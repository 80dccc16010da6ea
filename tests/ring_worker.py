"""Ring attention on 8 fake CPU devices, for tests/test_ring_attention.py (the caller sets
XLA_FLAGS=--xla_force_host_platform_device_count=8):

  python tests/ring_worker.py   -> one JSON object on stdout's last line:
    cases   per mesh / mask / block case: max |ring - reference| / max |reference| of the
            output and of dq, dk, dv (a random cotangent), plus what the case covers
    blocks  per layout: how many blocks each device ran (counted as they run, by a block
            function that reports to the host) next to ring_layout.causal_block_counts
    train   per mesh: the tiny model's losses over 20 train steps

Everything runs in this one process to pay the start-up and the imports once.
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxlab.kernels.reference import reference_attention
from jaxlab.kernels.ring_attention import XLA_BLOCKS, BlockAttention, ring_attention
from jaxlab.kernels.ring_blocks import PALLAS_BLOCKS
from jaxlab.kernels.ring_layout import causal_block_counts, from_layout, to_layout
from jaxlab.parallel.mesh import AXES
from jaxlab.parallel.rules import activation_rules

# (name, (data, fsdp, context, tensor), T, H, G, causal, segments, ragged, block)
CASES = [
    ('ctx2_data4_gqa_seg_ragged', (4, 1, 2, 1), 32, 4, 2, True, True, True, 'xla'),
    ('ctx8_gqa_seg_ragged', (1, 1, 8, 1), 64, 4, 2, True, True, True, 'xla'),
    ('ctx4_tensor2_gqa_seg_ragged', (1, 1, 4, 2), 32, 4, 2, True, True, True, 'xla'),
    ('ctx2_data2_tensor2_noncausal_ragged', (2, 1, 2, 2), 16, 4, 4, False, True, True, 'xla'),
    # The flash kernel's block (jaxlab.kernels.ring_blocks), interpreted: ~10 s of CPU per
    # case, nearly all compiling its 48 kernel instances (4 blocks x 2 kinds x fwd / dq /
    # dkdv, loop body and last step). Splash's block is checked per block and compiled for
    # a TPU in test_ring_attention.py; in a ring (chunks of 256 tokens) it matched too
    # (errors <= 4.1e-7), at the same cost.
    ('pallas_ctx2_data4_gqa_seg_ragged', (4, 1, 2, 1), 32, 4, 2, True, True, True, 'pallas'),
    ('pallas_ctx4_tensor2_gqa_seg', (1, 1, 4, 2), 32, 4, 2, True, True, False, 'pallas'),
]
BLOCKS = {'xla': XLA_BLOCKS, 'pallas': PALLAS_BLOCKS}
B, K = 4, 8   # B: a multiple of data x fsdp in every case


def make_mesh(shape):
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def segment_ids(T: int, n: int, ragged: bool, rng, B: int = B) -> np.ndarray:
  """Documents of random lengths (ids 1, 2, ...) that cross device boundaries; a ragged
  row ends in padding (id 0) instead of a full last document."""
  rows = []
  for _ in range(B):
    lengths = []
    while sum(lengths) < T:
      lengths.append(int(rng.integers(3, T // 2)))
    ids = np.repeat(np.arange(1, len(lengths) + 1), lengths)[:T]
    if ragged:
      ids[T - T // 5:] = 0
    rows.append(ids)
  ids = np.stack(rows).astype(np.int32)
  # The property the case is about: some document is split between devices.
  owner = np.repeat(np.arange(n), T // n)   # natural order: contiguous shards
  assert any(len(set(owner[ids[b] == d])) > 1 for b in range(B) for d in set(ids[b]) - {0})
  return ids


def run_case(name, shape, T, H, G, causal, segments, ragged, block, rng):
  n = shape[2]
  mesh = make_mesh(shape)
  rep = NamedSharding(mesh, PartitionSpec())
  inputs = [rng.normal(size=s).astype(np.float32)
            for s in ((B, T, H, K), (B, T, G, K), (B, T, G, K), (B, T, H, K))]
  ids_np = segment_ids(T, n, ragged, rng) if segments else None
  ids = jax.device_put(ids_np, rep)

  def reference(q, k, v):   # on one device (numpy inputs: the default device)
    return reference_attention(q, k, v, causal=causal, segment_ids=ids_np)

  def ring(q, k, v):
    with activation_rules(mesh):
      out = ring_attention(*(to_layout(x, n) for x in (q, k, v)), causal=causal,
                           segment_ids=None if ids is None else to_layout(ids, n),
                           block=BLOCKS[block])
    return from_layout(out, n)

  def value_and_grads(f, q, k, v, ct):
    out, vjp = jax.vjp(f, q, k, v)
    return (out,) + vjp(ct)
  # (arguments, not closed-over constants: jit compiles for the devices they live on)
  want = jax.jit(lambda *a: value_and_grads(reference, *a))(*inputs)
  got = jax.jit(lambda *a: value_and_grads(ring, *a))(*jax.device_put(inputs, rep))
  errs = {key: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
          for key, a, b in zip(('out', 'dq', 'dk', 'dv'), want, got)}
  return {'name': name, 'context': n, 'mesh': shape, 'causal': causal, 'gqa': H != G,
          'segments': segments, 'ragged': ragged, 'block': block, 'errors': errs}


def counted_blocks(layout: str, n: int = 4, T: int = 16):
  """Runs one causal forward whose block function reports (device) to the host each time
  it runs: skipped blocks never call it."""
  mesh = make_mesh((1, 1, n, 8 // n))
  calls = []

  def forward(*args):
    jax.debug.callback(lambda i: calls.append(int(i)), jax.lax.axis_index('context'))
    return XLA_BLOCKS.forward(*args)
  block = BlockAttention('counted', forward, XLA_BLOCKS.backward)
  x = jax.device_put(jnp.ones((1, T, 8 // n, K)), NamedSharding(mesh, PartitionSpec()))

  def f(x):
    with activation_rules(mesh):
      return ring_attention(x, x, x, causal=True, layout=layout, block=block)
  jax.block_until_ready(jax.jit(f)(x))
  jax.effects_barrier()
  ran = [0] * n
  for i in calls:
    ran[i] += 1
  # each block runs once per tensor-axis device holding the same context index
  return {'ran': [r // (8 // n) for r in ran], 'expected': causal_block_counts(n, layout)}


def train_losses(steps: int = 20):
  """The tiny model's train step (jaxlab.train.program, as a run builds it) for `steps`
  steps on the same packed batches (documents of random lengths, padded tails), on one
  device (mesh.context=1) and on mesh.context=4 x mesh.data=2, from the same initial state:
  the losses. A direct loop rather than jaxlab.train.train: the same model, step and
  shardings without the data pipeline, eval and checkpoint compiles (~40 s of CPU here)."""
  from jaxlab import config as config_lib
  from jaxlab.parallel import make_mesh as make_run_mesh
  from jaxlab.train.program import build_program
  rng = np.random.default_rng(1)
  overrides = ['train.batch_size=8', f'train.steps={steps}']
  one = config_lib.load('tiny', overrides + ['mesh.data=1'])
  four = config_lib.load('tiny', overrides + ['mesh.data=2', 'mesh.context=4'])
  rows, T = one.train.batch_size, one.data.seq_len + 1
  batches = []
  for _ in range(steps):   # a 16-token alphabet: learnable within 20 steps
    ids = segment_ids(T - 1, 4, ragged=True, rng=rng, B=rows)
    batches.append({'tokens': rng.integers(1, 17, (rows, T)).astype(np.int32),
                    'segment_ids': np.concatenate([ids, ids[:, -1:]], axis=1)})
  programs = {'ctx1': build_program(one, make_run_mesh(one.mesh, jax.devices()[:1])),
              'ctx4': build_program(four, make_run_mesh(four.mesh))}
  start = jax.device_get(programs['ctx1'].init_state())   # host copy: steps donate state
  out = {}
  for name, program in programs.items():
    state, losses = jax.device_put(start, program.shardings), []
    for batch in batches:
      state, metrics = program.train_step(state, jax.device_put(batch, program.batch_sharding))
      losses.append(float(metrics['loss']))
    out[name] = losses
  return out


def timed(label, fn, *args):
  """fn(*args), with its wall and CPU seconds on stderr (the test's cost, part by part)."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn(*args)
  print(f'{label}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s '
        'CPU', file=sys.stderr, flush=True)
  return out


def main():
  rng = np.random.default_rng(0)
  result = {'cases': [timed(case[0], run_case, *case, rng) for case in CASES],
            'blocks': {layout: timed(layout, counted_blocks, layout)
                       for layout in ('zigzag', 'contiguous')},
            'train': timed('train', train_losses)}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
