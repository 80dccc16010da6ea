"""CPU-only: ring attention over n fake devices against one-device attention at the same
global shape (forward + backward), and the per-device causal block counts of the layouts.

  python bench/bench_ring.py [--T 2048] [--heads 4] [--kv-heads 2] [--head-dim 64]
                                   [--repeats 5]

It sets XLA_FLAGS=--xla_force_host_platform_device_count=8 itself (before jax starts).
The fake devices share this machine's cores, so the ring cannot be faster here: the table
only shows that the path runs end to end at a realistic length and what its
communication and bookkeeping cost on one host. Speed claims need real devices.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_cpu_collective_call_terminate_timeout_seconds=300')

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402

from jaxlab.kernels.reference import reference_attention  # noqa: E402
from jaxlab.kernels.ring_attention import ring_attention  # noqa: E402
from jaxlab.kernels.ring_layout import causal_block_counts, from_layout, to_layout  # noqa: E402
from jaxlab.parallel.mesh import AXES  # noqa: E402
from jaxlab.parallel.rules import activation_rules  # noqa: E402


def fwd_bwd(attend):
  def loss(q, k, v, ct):
    return jnp.sum(attend(q, k, v) * ct)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def measure(fn, args, repeats: int):
  """(compile + first call seconds, median seconds of `repeats` further calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--T', type=int, default=2048)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--kv-heads', type=int, default=2)
  parser.add_argument('--head-dim', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  T, H, G, K = args.T, args.heads, args.kv_heads, args.head_dim
  rng = np.random.default_rng(0)
  inputs = [rng.normal(size=s).astype(np.float32)
            for s in ((1, T, H, K), (1, T, G, K), (1, T, G, K), (1, T, H, K))]
  print(f'# Ring attention vs one device, causal, B=1 T={T} H={H} G={G} K={K}, forward + '
        f'backward, float32, {jax.device_count()} fake CPU devices on {os.cpu_count()} cores '
        '(CPU-only: shows the path works, not its speed)\n')
  print('| attention | devices | first call (compile) s | step ms (median) |')
  print('|---|---|---|---|')
  one = fwd_bwd(lambda q, k, v: reference_attention(q, k, v, causal=True))
  first, step = measure(one, inputs, args.repeats)
  print(f'| one device (XLA reference) | 1 | {first:.2f} | {step * 1e3:.1f} |', flush=True)
  # The ring's code with no mesh (n = 1): the same blocks (two chunks, four blocks, the
  # masked one skipped) on one device, separating blocking from the devices' parallelism.
  blocked = fwd_bwd(lambda q, k, v: ring_attention(q, k, v, causal=True))
  first, step = measure(blocked, inputs, args.repeats)
  print(f'| one device, ring blocks (n=1) | 1 | {first:.2f} | {step * 1e3:.1f} |', flush=True)
  for n in (2, 4, 8):
    if T % (2 * n) or n > jax.device_count():
      continue
    devices = np.asarray(jax.devices()[:n]).reshape(1, 1, n, 1)
    mesh = Mesh(devices, AXES, axis_types=(AxisType.Auto,) * len(AXES))

    def ring(q, k, v, n=n, mesh=mesh):
      with activation_rules(mesh):
        out = ring_attention(*(to_layout(x, n) for x in (q, k, v)), causal=True)
      return from_layout(out, n)
    placed = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec()))
    first, step = measure(fwd_bwd(ring), placed, args.repeats)
    print(f'| ring, zigzag, context={n} | {n} | {first:.2f} | {step * 1e3:.1f} |', flush=True)

  print('\n# Causal (chunk x chunk) blocks each device runs over the ring '
        '(ring_layout.causal_block_counts)\n')
  print('| context | zigzag: per device | contiguous: min .. max |')
  print('|---|---|---|')
  for n in (2, 4, 8, 16):
    zig, con = causal_block_counts(n, 'zigzag'), causal_block_counts(n, 'contiguous')
    print(f'| {n} | {min(zig)} .. {max(zig)} | {min(con)} .. {max(con)} |')


if __name__ == '__main__':
  main()
