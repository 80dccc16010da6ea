"""Sections 1 and 2 of bench/device_check.py: every attention backend against the
float32 reference (values and dq / dk / dv), and a reduced bench_attention grid.

Backends are called through jaxlab's dispatcher by name, compiled for the device (Pallas:
Triton on a GPU, interpret mode on the CPU; tokamax: the implementation it picks, shown).
A backend that cannot take a call says why (the dispatcher's reason) instead of running.

Reference: jaxlab.kernels.reference_attention on the inputs upcast to float32, under
jax.default_matmul_precision('highest') (no TF32), differentiated with jax.vjp.
Error = max |backend - reference| / max |reference| over all elements, for out, dq, dk,
dv (inputs standard normal, scale K^-1/2, so logits are O(1)). Tolerance TOL = 2e-2,
about 5 bfloat16 ulps (unit roundoff 2^-8 = 3.9e-3): jaxlab's own XLA path in bfloat16,
run on the CPU at the GPU shapes of section 1, measured at most 3.5e-3 (out 1.41e-2 /
4.0, dv 3.87e-2 / 11.7, dk 1.55e-2 / 7.3, dq 7.8e-3 / 5.0); a fused kernel rounds P to
bfloat16 before the PV product as that path does, so it should land in the same range.
Float32 inputs may run through TF32 dots in the fused kernels (unit roundoff 2^-11),
inside the same bound; the XLA path in float32 measured 1e-7. A wrong mask, scale or
document boundary gives errors of order 1.

FLOPs (bench_attention's convention): forward 4 B H T S K, forward+backward 3.5 x that,
causal half of each.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.kernels import attention, reference_attention
from jaxlab.kernels import tokamax_attention as tk
from jaxlab.kernels.target import target_device

from bench_attention import time_ms   # bench/, beside this file

dispatch = importlib.import_module('jaxlab.kernels.dispatch')   # the module, not the function
BACKENDS = ('pallas', 'cudnn', 'tokamax', 'xla')
TOL = 2e-2   # max |error| / max |reference| (see above)


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  B: int
  T: int
  H: int
  G: int
  K: int
  dtype: str
  causal: bool = True
  packed: bool = False


def inputs(case: Case, seed: int = 0):
  """(q, k, v, dout, segment_ids or None) in the case's dtype; packed rows hold three
  documents of unequal lengths (row 0) and one (row 1 on)."""
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  dt = jnp.dtype(case.dtype)
  q = jax.random.normal(kq, (case.B, case.T, case.H, case.K), jnp.float32).astype(dt)
  k = jax.random.normal(kk, (case.B, case.T, case.G, case.K), jnp.float32).astype(dt)
  v = jax.random.normal(kv, (case.B, case.T, case.G, case.K), jnp.float32).astype(dt)
  do = jax.random.normal(kd, q.shape, jnp.float32).astype(dt)
  seg = None
  if case.packed:
    t = np.arange(case.T)
    row0 = 1 + (t >= case.T // 3) + (t >= case.T // 3 + case.T // 4 + 3)
    seg = jnp.asarray(np.stack([row0] + [np.full(case.T, 7)] * (case.B - 1)), jnp.int32)
  return q, k, v, do, seg


def why_not(name: str, q, k, causal: bool, seg) -> str | None:
  """The dispatcher's reason a backend cannot take the call, or None."""
  call = dispatch.Call(q, k, causal, seg, *target_device())
  return dispatch.BACKENDS[name].unsupported(call)


def label(name: str, q, k, causal: bool, seg) -> str:
  if name == 'tokamax':
    impl, _ = tk.choose(q, k, causal=causal, segment_ids=seg,
                        platform=jax.default_backend())
    return f'tokamax ({impl})'
  if name == 'pallas':
    return 'pallas (' + ('triton' if jax.default_backend() == 'gpu' else
                         'interpret' if jax.default_backend() == 'cpu' else 'mosaic') + ')'
  return name


@functools.lru_cache(maxsize=None)
def _fwd_bwd(name: str, causal: bool):
  def f(q, k, v, do, seg):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, causal=causal, segment_ids=seg,
                                                  implementation=name), q, k, v)
    return (out, *vjp(do))
  return jax.jit(f)


def reference(q, k, v, do, seg, causal: bool):
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  with jax.default_matmul_precision('highest'):
    out, vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, causal=causal,
                                                           segment_ids=seg), *f32[:3])
    return jax.device_get((out, *vjp(f32[3])))


def check(cases, box, log) -> list[list]:
  """Section 1: rows [case, backend, out, dq, dk, dv (relative errors), result]."""
  rows = []
  for case in cases:
    q, k, v, do, seg = inputs(case)
    want = None
    for name in BACKENDS:
      if not box.open():
        rows.append([case.name, name, '', '', '', '', 'skipped: time box'])
        continue
      why = why_not(name, q, k, case.causal, seg)
      if why is not None:
        rows.append([case.name, name, '', '', '', '', f'unsupported: {why[:120]}'])
        continue
      try:
        if want is None:
          want = reference(q, k, v, do, seg, case.causal)
        got = jax.device_get(_fwd_bwd(name, case.causal)(q, k, v, do, seg))
        errs = [float(np.max(np.abs(np.asarray(g, np.float32) - w)) / np.max(np.abs(w)))
                for g, w in zip(got, want)]
        ok = all(e <= TOL for e in errs)
        rows.append([case.name, label(name, q, k, case.causal, seg),
                     *(f'{e:.1e}' for e in errs), 'ok' if ok else 'FAIL'])
      except Exception as err:  # noqa: BLE001 -- a broken backend is a result, not a stop
        rows.append([case.name, name, '', '', '', '', f'FAIL: {short(err)}'])
      log(f'[1] {case.name} / {rows[-1][1]}: {rows[-1][-1]}')
  return rows


def short(err: Exception) -> str:
  return f'{type(err).__name__}: {" ".join(str(err).split())[:150]}'


def bench(grid: dict, box, log, reps: int = 5) -> list[list]:
  """Section 2: rows [T, B, heads, backend, fwd ms, fwd TFLOP/s, f+b ms, f+b TFLOP/s, note]."""
  rows = []
  for T in grid['seqs']:
    B = max(1, grid['tokens'] // T)
    for H, G in grid['heads']:
      case = Case('bench', B, T, H, G, grid['K'], grid['dtype'], causal=True)
      q, k, v, do, _ = inputs(case)
      fwd_flops = 4 * B * H * T * T * grid['K'] * 0.5
      for name in grid.get('backends', BACKENDS):
        row = [T, B, f'{H}:{G}', name, '', '', '', '']
        if not box.open():
          rows.append(row + ['skipped: time box'])
          continue
        why = why_not(name, q, k, True, None)
        if why is not None:
          rows.append(row + [f'unsupported: {why[:100]}'])
          continue
        row[3] = label(name, q, k, True, None)
        try:
          fwd = jax.jit(functools.partial(attention, causal=True, implementation=name))
          ms = time_ms(fwd, (q, k, v), 2, reps)
          row[4:6] = [f'{ms:.3g}', f'{fwd_flops / ms / 1e9:.3g}']
          if box.open():
            fb = _fwd_bwd(name, True)
            ms = time_ms(fb, (q, k, v, do, None), 2, reps)
            row[6:8] = [f'{ms:.3g}', f'{3.5 * fwd_flops / ms / 1e9:.3g}']
          rows.append(row + [''])
        except Exception as err:  # noqa: BLE001 -- e.g. out of memory: report, go on
          rows.append(row + [f'error: {short(err)}'])
        log(f'[2] T{T} {H}:{G} {row[3]}: fwd {row[5] or "-"} f+b {row[7] or "-"} TFLOP/s')
  return rows
