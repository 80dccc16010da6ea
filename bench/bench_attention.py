"""Attention benchmark (GPU) or interpret-mode correctness sweep (CPU).

  python bench/bench_attention.py [--out FILE] [--quick]

GPU: for T in {1k, 2k, 4k, 8k, 16k}, head_dim {64, 128}, causal or not, MHA (16:16 heads)
and GQA 8:1 (16:2 heads), bfloat16, B = 16k tokens // T (at least 1), times
  pallas     jaxlab.kernels.flash_attention (this repository's kernel, Triton lowering)
  xla        jax.nn.dot_product_attention(implementation='xla')
  cudnn      jax.nn.dot_product_attention(implementation='cudnn')
  jax_mha    jax.experimental.pallas.ops.gpu.attention.mha (no GQA: skipped on GQA rows)
forward and forward+backward (jax.vjp with a fixed output cotangent), median of --reps
runs after warmups, each run ended with jax.block_until_ready.

FLOPs (the FlashAttention-2 convention):
  forward          4 * B * H * T * S * K          (QK^T and PV, 2 flops per multiply-add)
  forward+backward 3.5 * forward                   (backward = 2.5 * forward: the recomputed
                                                    QK^T, dV, dP, dQ and dK matmuls)
  causal           half of the above (only the unmasked triangle counts)
TFLOP/s = FLOPs / median time. A failing implementation (unsupported shape, out of memory)
is reported in the notes column instead of stopping the run.

CPU: a small correctness sweep of the kernel in interpret mode, both of its forms (loop:
what GPUs and the CPU run; grid: what TPUs run, K/V streamed through the grid): the max
abs error of out, dq, dk, dv against jaxlab.kernels.reference_attention over a few shapes
(T, S not multiples of the block, GQA, causal, packed segment ids), float32 and bfloat16.
--quick runs fewer shapes (a few minutes).

The markdown table is printed and written to --out (default bench_attention.md).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jaxlab.kernels import flash_attention, reference_attention  # noqa: E402

fa_mod = importlib.import_module('jaxlab.kernels.flash')
# The CPU's lowering row replaced by each kernel form, in interpret mode.
FORMS = {'loop': fa_mod.LOWERINGS['cpu'],
         'grid': fa_mod.Lowering('grid', 'bhtk', (128, 128), interpret=True)}

TOKENS = 16 * 1024
N_HEADS = 16


def _inputs(B, T, S, H, G, K, dtype, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(kq, (B, T, H, K), dtype), jax.random.normal(kk, (B, S, G, K), dtype),
          jax.random.normal(kv, (B, S, G, K), dtype), jax.random.normal(kd, (B, T, H, K), dtype))


def _impls(causal: bool, mha: bool):
  """name -> f(q, k, v) or a string saying why it is skipped."""
  out = {
      'pallas': lambda q, k, v: flash_attention(q, k, v, causal=causal),
      'xla': lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                          implementation='xla'),
      'cudnn': lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                            implementation='cudnn'),
  }
  try:
    from jax.experimental.pallas.ops.gpu import attention as jax_attention
  except ImportError as err:
    out['jax_mha'] = f'not importable: {err}'
  else:
    if mha:
      out['jax_mha'] = lambda q, k, v: jax_attention.mha(
          q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=causal)
    else:
      out['jax_mha'] = 'no GQA support (needs as many kv heads as query heads)'
  return out


def time_ms(fn, args, warmup: int, reps: int) -> float:
  """Median wall milliseconds of fn(*args) over reps calls, after warmup untimed ones (the
  first compiles). Shared with device_attention.py."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def _short(err: Exception) -> str:
  text = ' '.join(str(err).split())
  return f'{type(err).__name__}: {text[:90]}'


def gpu_rows(quick: bool, warmup: int, reps: int):
  seqs = [1024, 4096] if quick else [1024, 2048, 4096, 8192, 16384]
  for T in seqs:
    for K in (64, 128):
      for causal in (False, True):
        for G in (N_HEADS, N_HEADS // 8):
          B = max(1, TOKENS // T)
          q, k, v, do = _inputs(B, T, T, N_HEADS, G, K, jnp.bfloat16)
          fwd_flops = 4 * B * N_HEADS * T * T * K * (0.5 if causal else 1.0)
          for name, f in _impls(causal, G == N_HEADS).items():
            row = dict(T=T, B=B, K=K, heads=f'{N_HEADS}:{G}', causal=causal, impl=name,
                       fwd_ms=None, fwd_tflops=None, fb_ms=None, fb_tflops=None, note='')
            if isinstance(f, str):
              row['note'] = f
              yield row
              continue
            fwd = jax.jit(f)
            fb = jax.jit(lambda q, k, v, do, f=f: jax.vjp(f, q, k, v)[1](do))
            try:
              row['fwd_ms'] = time_ms(fwd, (q, k, v), warmup, reps)
              row['fwd_tflops'] = fwd_flops / row['fwd_ms'] / 1e9
              row['fb_ms'] = time_ms(fb, (q, k, v, do), warmup, reps)
              row['fb_tflops'] = 3.5 * fwd_flops / row['fb_ms'] / 1e9
            except Exception as err:  # noqa: BLE001 -- report and go on to the next one
              row['note'] = _short(err)
            yield row


def _fmt(x, spec):
  return '-' if x is None else format(x, spec)


def gpu_table(rows) -> str:
  lines = ['| T | B | K | heads | causal | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | '
           'fwd+bwd TFLOP/s | note |', '|' + '---|' * 11]
  print('\n'.join(lines), flush=True)
  for r in rows:
    lines.append(f"| {r['T']} | {r['B']} | {r['K']} | {r['heads']} | {r['causal']} | "
                 f"{r['impl']} | {_fmt(r['fwd_ms'], '.3f')} | {_fmt(r['fwd_tflops'], '.1f')} | "
                 f"{_fmt(r['fb_ms'], '.3f')} | {_fmt(r['fb_tflops'], '.1f')} | {r['note']} |")
    print(lines[-1], flush=True)
  return '\n'.join(lines)


CPU_SHAPES = [  # (B, T, S, H, G, K, causal, packed, block_q, block_k)
    (2, 20, 20, 4, 2, 64, True, False, 8, 8),
    (2, 20, 20, 4, 1, 64, False, True, 8, 16),
    (1, 12, 28, 4, 2, 64, True, False, 8, 16),
    (2, 33, 33, 4, 4, 128, True, True, 16, 16),
    (2, 28, 12, 8, 2, 32, True, False, 16, 8),
]


def _out_and_grads(f, q, k, v, do):
  """(out, dq, dk, dv) for the output cotangent do, jitted."""
  def run(q, k, v, do):
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(do))
  return jax.jit(run)(q, k, v, do)


def cpu_rows(quick: bool):
  shapes = CPU_SHAPES[:2] if quick else CPU_SHAPES
  dtypes = (jnp.float32, jnp.bfloat16)
  for B, T, S, H, G, K, causal, packed, bq, bk in shapes:
    seg = None
    if packed:   # two documents in row 0 (one at the end is padding id 0), one in the others
      seg = jnp.ones((B, T), jnp.int32).at[0, T // 2:].set(2).at[0, T - 3:].set(0)
    for dtype, form in itertools.product(dtypes, FORMS):
      q, k, v, do = _inputs(B, T, S, H, G, K, dtype)
      flash = functools.partial(flash_attention, causal=causal, segment_ids=seg, block_q=bq,
                                block_k=bk, interpret=True)
      ref = functools.partial(reference_attention, causal=causal, segment_ids=seg)
      saved, fa_mod.LOWERINGS['cpu'] = fa_mod.LOWERINGS['cpu'], FORMS[form]
      try:
        got, want = (_out_and_grads(f, q, k, v, do) for f in (flash, ref))
      finally:
        fa_mod.LOWERINGS['cpu'] = saved
      errs = [float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
              for a, b in zip(got, want)]
      yield dict(shape=f'B{B} T{T} S{S} H{H} G{G} K{K}', causal=causal, packed=packed,
                 blocks=f'{bq}x{bk}', dtype=jnp.dtype(dtype).name, form=form, errs=errs)


def cpu_table(rows) -> str:
  lines = ['| shape | causal | segments | blocks | dtype | form | out | dq | dk | dv |',
           '|' + '---|' * 10]
  print('\n'.join(lines), flush=True)
  for r in rows:
    errs = ' | '.join(f'{e:.1e}' for e in r['errs'])
    lines.append(f"| {r['shape']} | {r['causal']} | {r['packed']} | {r['blocks']} | "
                 f"{r['dtype']} | {r['form']} | {errs} |")
    print(lines[-1], flush=True)
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='bench_attention.md', help='markdown file to write')
  parser.add_argument('--quick', action='store_true', help='fewer shapes')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--reps', type=int, default=10)
  args = parser.parse_args(argv)
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  if backend == 'gpu':
    title = (f'Attention on {device} (bfloat16, {TOKENS} tokens per batch, median of '
             f'{args.reps}); TFLOP/s: forward 4*B*H*T*S*K, forward+backward 3.5x that, '
             'causal halved')
    print(title, flush=True)
    table = gpu_table(gpu_rows(args.quick, args.warmup, args.reps))
  else:
    title = (f'No GPU ({backend}, {device}): flash_attention in interpret mode vs '
             'reference_attention, max abs error')
    print(title, flush=True)
    table = cpu_table(cpu_rows(args.quick))
  pathlib.Path(args.out).write_text(f'{title}\n\n{table}\n')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
