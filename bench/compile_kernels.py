"""Compile the attention kernels' forward and backward for a TPU from this machine (libtpu,
no TPU) at long sequence lengths, and print a table.

  python bench/compile_kernels.py [--chip v5e] [--lengths 1024,8192,32768,131072]
                                        [--kernels pallas,splash,pallas-loop] [--out FILE]

For each kernel and T: jax.grad of sum(attention(q, k, v)) (causal, packed-document
segment ids, B 4, H 8, G 2, K 128, bfloat16 -- the shapes of the issue that found the
VMEM limit) compiled for one chip of the given generation. A row says whether Mosaic and
XLA compiled it, how long that took, the temporaries XLA allocates (HBM), and the FLOPs
XLA's cost model sees for the step (the Pallas kernels' CostEstimate; splash has none).

  pallas       jaxlab's flash kernel as it lowers for TPU: the kv-gridded form (K/V
               blocks streamed through VMEM along the grid)
  pallas-loop  the same kernel forced into its loop form (whole-sequence K/V per head in
               VMEM, the form it had before), to show where that form stops
  splash       JAX's splash attention through jaxlab.kernels.splash

This compiles only; nothing runs, so there are no timings of the kernels themselves.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxlab import aot  # noqa: E402
from jaxlab.aot import check, targets  # noqa: E402
from jaxlab.kernels import flash_attention  # noqa: E402
from jaxlab.kernels.splash import splash_attention  # noqa: E402

fa_mod = importlib.import_module('jaxlab.kernels.flash')
B, H, G, K = 4, 8, 2, 128
CHIPS = {'v5e': 'tpu:v5e:1x1', 'v5p': 'tpu:v5p:2x2x1', 'v6e': 'tpu:v6e:1x1', 'v4': 'tpu:v4:2x2x1'}


def grad_fn(kernel: str):
  fn = splash_attention if kernel == 'splash' else flash_attention

  def loss(q, k, v, ids):
    return fn(q, k, v, causal=True, segment_ids=ids).astype(jnp.float32).sum()
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def compile_one(kernel: str, T: int, mesh) -> dict:
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=s) for shape, dtype in (
      ((B, T, H, K), jnp.bfloat16), ((B, T, G, K), jnp.bfloat16), ((B, T, G, K), jnp.bfloat16),
      ((B, T), jnp.int32))]
  saved = fa_mod.LOWERINGS['tpu']
  if kernel == 'pallas-loop':
    fa_mod.LOWERINGS['tpu'] = fa_mod.Lowering('loop', 'bhtk', (128, 128), interpret=False)
  t0 = time.perf_counter()
  try:
    compiled, seconds = check.compile_for(grad_fn(kernel), args, mesh)
  except Exception as err:   # noqa: BLE001 -- any compile failure is a row of the table
    first = str(err).strip().splitlines()[0]
    return {'ok': False, 'seconds': time.perf_counter() - t0, 'error': first[:160]}
  finally:
    fa_mod.LOWERINGS['tpu'] = saved
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'ok': True, 'seconds': seconds, 'temp': compiled.memory_analysis().temp_size_in_bytes,
          'flops': (cost or {}).get('flops')}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--chip', default='v5e', choices=sorted(CHIPS))
  parser.add_argument('--lengths', default='1024,8192,32768,131072')
  parser.add_argument('--kernels', default='pallas,splash')
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args()
  aot.use_cpu_host()
  devices = targets.devices(targets.parse_target(CHIPS[args.chip]))
  mesh = jax.sharding.Mesh(np.array(devices[:1]), ('x',))
  lines = [f'Forward + backward compiled for one {devices[0].device_kind} (B {B}, H {H}, G {G}, '
           f'K {K}, bfloat16, causal, segment ids); jax {jax.__version__}', '',
           '| kernel | T | compiled | compile s | XLA temp GiB | XLA GFLOP (cost model) | error |',
           '|---|---|---|---|---|---|---|']
  for kernel in args.kernels.split(','):
    for T in (int(t) for t in args.lengths.split(',')):
      r = compile_one(kernel, T, mesh)
      temp = f"{r['temp'] / 2 ** 30:.2f}" if r['ok'] else '-'
      flops = f"{r['flops'] / 1e9:.0f}" if r.get('flops') else '-'
      line = (f"| {kernel} | {T} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.1f} | {temp} | "
              f"{flops} | {r.get('error', '')} |")
      print(line, flush=True)
      lines.append(line)
  text = '\n'.join(lines) + '\n'
  print('\n' + text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
