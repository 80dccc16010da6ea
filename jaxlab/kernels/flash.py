"""Fused (flash) attention in Pallas: online softmax forward, recomputing backward.

Same layouts and masks as jaxlab.kernels.attention.reference_attention: q_BxTxHxK,
k_BxSxGxK, v_BxSxGxK (H a multiple of G), causal (top-left aligned when T != S) and
segment ids (one BxT array or a (q_ids_BxT, kv_ids_BxS) pair). A query with no visible key
returns zeros and gets zero gradients, never NaN. Float32 accumulation; a backward of two
kernels (dq; dk and dv, summed over each kv head's query heads) under jax.custom_vjp; causal
masking skips fully-masked blocks; T and S are padded to whole blocks and padded keys masked.

Lowering follows the platform the computation is compiled for, not the host: the forward
and backward each stage one variant per platform with jax.lax.platform_dependent, and only
the target's is lowered. So the same traced step runs interpreted on a CPU, compiles with
Mosaic for a TPU (also from a CPU host, jaxlab.aot) and with Triton for a GPU. LOWERINGS
says, per platform, which kernel form (flash_kernels.py), layout and default blocks:

  cpu   loop form, interpret mode (what the tests run)
  gpu   loop form, Triton (explicit Triton CompilerParams: jax 0.10's pallas_call would
        otherwise pick Mosaic GPU; Triton is deprecated by JAX in favour of Mosaic GPU, and
        no Mosaic GPU kernel is written here because none could be tested); head_dim is
        zero-padded to a power of two >= 16
  tpu   grid form, Mosaic TPU: K/V blocks stream through VMEM, so T = 128k compiles

The Mosaic TPU form is compiled for v5e / v5p / v6e in tests/test_compile.py and
bench/compile_kernels.py, and run in interpret mode on CPU; the Triton form is
checked to lower, not compiled by ptxas or run.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels import flash_grid, flash_loop
from jaxlab.kernels.flash_kernels import KernelCfg, round_up
from jaxlab.kernels.masks import segment_pair


@dataclasses.dataclass(frozen=True)
class Lowering:
  form: str                  # 'loop' or 'grid' (see flash_kernels.py)
  layout: str                # 'bthk' (inputs as given) or 'bhtk' (heads before tokens)
  blocks: tuple[int, int]    # default (block_q, block_k) before clamping to the lengths
  interpret: bool            # Pallas interpret mode (the only way to run on a CPU)
  pad_head_dim: bool = False  # Triton tiles are powers of two >= 16


LOWERINGS = {
    'cpu': Lowering('loop', 'bthk', (128, 128), interpret=True),
    'gpu': Lowering('loop', 'bthk', (128, 64), interpret=False, pad_head_dim=True),
    # 512 x 512 tiles: MaxText's default splash blocks; a few MiB of VMEM per grid step.
    'tpu': Lowering('grid', 'bhtk', (512, 512), interpret=False),
}
# jax.lax.platform_dependent's platform names -> LOWERINGS rows.
_ROW_OF = {'cpu': 'cpu', 'tpu': 'tpu', 'cuda': 'gpu', 'rocm': 'gpu'}
_MIN_BLOCK = 16          # Triton dots need >= 16 rows; also the smallest default block
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The static arguments of one call, as the user gave them."""
  sm_scale: float
  causal: bool
  block_q: int | None
  block_k: int | None
  interpret: bool | None


def _pick_block(given: int | None, default: int, length: int) -> int:
  cap = max(_MIN_BLOCK, pl.next_power_of_2(length))
  return min(default if given is None else given, cap)


def _validate(q, k, v, block_q, block_k, sm_scale):
  for name, x in (('q_BxTxHxK', q), ('k_BxSxGxK', k), ('v_BxSxGxK', v)):
    if x.ndim != 4:
      raise ValueError(f'flash_attention: {name} must have rank 4, got shape {x.shape}')
    if x.dtype not in _DTYPES:
      raise ValueError(f'flash_attention: {name} has dtype {x.dtype}; allowed: float32, '
                       'bfloat16, float16')
  if k.shape != v.shape:
    raise ValueError(f'flash_attention: k_BxSxGxK {k.shape} and v_BxSxGxK {v.shape} must '
                     'have the same shape')
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f'flash_attention: q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype} '
                     'must be equal')
  (B, _, H, K), (Bk, _, G, Kk) = q.shape, k.shape
  if B != Bk:
    raise ValueError(f'flash_attention: batch of q ({B}) and k/v ({Bk}) must be equal')
  if K != Kk:
    raise ValueError(f'flash_attention: head_dim K of q ({K}) and k/v ({Kk}) must be equal')
  if H % G:
    raise ValueError(f'flash_attention: query heads H={H} must be a multiple of kv heads '
                     f'G={G}')
  for name, b in (('block_q', block_q), ('block_k', block_k)):
    if b is not None and (not isinstance(b, int) or b <= 0):
      raise ValueError(f'flash_attention: {name}={b!r} must be a positive int or None')
  if sm_scale is not None and not isinstance(sm_scale, (int, float)):
    raise ValueError(f'flash_attention: sm_scale={sm_scale!r} must be a Python number (it is '
                     'compiled into the kernel) or None for head_dim ** -0.5')


# ------------------------------------------------------------------ one platform's variant

def _setup(row: str, spec: _Spec, q, k, v, q_ids, kv_ids):
  """Pads (and transposes) unpadded inputs for LOWERINGS[row]: (cfg, q, k, v, ids, Kp)."""
  low = LOWERINGS[row]
  (B, T, H, K), S = q.shape, k.shape[1]
  cfg = KernelCfg(sm_scale=spec.sm_scale, causal=spec.causal,
                  block_q=_pick_block(spec.block_q, low.blocks[0], T),
                  block_k=_pick_block(spec.block_k, low.blocks[1], S), seq_q=T, seq_k=S,
                  interpret=low.interpret if spec.interpret is None else spec.interpret,
                  layout='bhtk' if low.form == 'grid' else low.layout)
  Tp, Sp = round_up(T, cfg.block_q), round_up(S, cfg.block_k)
  Kp = max(_MIN_BLOCK, pl.next_power_of_2(K)) if low.pad_head_dim else K  # zero columns
  q, k, v = (_to_layout(x, n, Kp, cfg) for x, n in ((q, Tp), (k, Sp), (v, Sp)))
  ids = (None, None)
  if q_ids is not None:   # queries as rows (B x 1 x T), keys as columns (B x S x 1)
    ids = (jnp.pad(q_ids.astype(jnp.int32), ((0, 0), (0, Tp - T)))[:, None, :],
           jnp.pad(kv_ids.astype(jnp.int32), ((0, 0), (0, Sp - S)))[:, :, None])
  return cfg, q, k, v, ids, Kp


def _to_layout(x_BxNxHxK, n: int, Kp: int, cfg: KernelCfg):
  B, N, H, K = x_BxNxHxK.shape
  x = jnp.pad(x_BxNxHxK, ((0, 0), (0, n - N), (0, 0), (0, Kp - K)))
  return jnp.swapaxes(x, 1, 2) if cfg.layout == 'bhtk' else x


def _from_layout(x, N: int, K: int, cfg: KernelCfg):
  if cfg.layout == 'bhtk':
    x = jnp.swapaxes(x, 1, 2)
  return x[:, :N, :, :K]


def _rows(x_BxHxT, Tp: int):
  """B x H x T float32 row statistics -> the kernels' padded B x H x 1 x Tp."""
  T = x_BxHxT.shape[-1]
  return jnp.pad(x_BxHxT, ((0, 0), (0, 0), (0, Tp - T)))[:, :, None, :]


def _forward_on(row: str, spec: _Spec, q, k, v, q_ids, kv_ids):
  """(o_BxTxHxK, lse_BxHxT float32) with LOWERINGS[row]'s kernels."""
  cfg, qp, kp, vp, (qi, ki), _ = _setup(row, spec, q, k, v, q_ids, kv_ids)
  if LOWERINGS[row].form == 'grid':
    o, lse = flash_grid.forward(qp, kp, vp, qi, ki, cfg)
  else:
    o, lse = flash_loop.forward(qp, kp, vp, qi, ki, cfg, platform=row)
  return _from_layout(o, q.shape[1], q.shape[3], cfg), lse[:, :, 0, :q.shape[1]]


def _backward_on(row: str, spec: _Spec, q, k, v, q_ids, kv_ids, o, lse, do):
  delta_BxHxT = jnp.einsum('bthk,bthk->bht', do.astype(jnp.float32), o.astype(jnp.float32))
  return backward_from_rows_on(row, spec, q, k, v, q_ids, kv_ids, do, lse, delta_BxHxT)


def backward_from_rows_on(row: str, spec: _Spec, q, k, v, q_ids, kv_ids, do, lse_BxHxT,
                          delta_BxHxT):
  """dq, dk, dv from the rows' lse and delta = rowsum(dO * O), whichever rows they are of
  (this call's own, or a whole ring row's: jaxlab.kernels.ring_blocks)."""
  cfg, qp, kp, vp, (qi, ki), Kp = _setup(row, spec, q, k, v, q_ids, kv_ids)
  T, S, K = q.shape[1], k.shape[1], q.shape[3]
  Tp = round_up(T, cfg.block_q)
  dop = _to_layout(do, Tp, Kp, cfg)
  args = (qp, kp, vp, dop, _rows(lse_BxHxT, Tp), _rows(delta_BxHxT, Tp), qi, ki, cfg)
  if LOWERINGS[row].form == 'grid':
    dq, (dk, dv) = flash_grid.dq(*args)[0], flash_grid.dkdv(*args)
  else:
    dq, (dk, dv) = flash_loop.dq(*args, platform=row)[0], flash_loop.dkdv(*args, platform=row)
  return _from_layout(dq, T, K, cfg), _from_layout(dk, S, K, cfg), _from_layout(dv, S, K, cfg)


def _per_platform(fn, spec: _Spec, *args):
  """fn(row, spec, *args) for the platform the computation is lowered for."""
  branches = {row: functools.partial(fn, row, spec) for row in set(_ROW_OF.values())}
  return jax.lax.platform_dependent(*args, **{p: branches[r] for p, r in _ROW_OF.items()})


# ------------------------------------------------------------------ custom_vjp

@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, spec: _Spec):
  return _per_platform(_forward_on, spec, q, k, v, q_ids, kv_ids)[0]


def _flash_fwd(q, k, v, q_ids, kv_ids, spec: _Spec):
  o, lse = _per_platform(_forward_on, spec, q, k, v, q_ids, kv_ids)
  return o, (q, k, v, q_ids, kv_ids, o, lse)


def _flash_bwd(spec: _Spec, res, do):
  q, k, v, q_ids, kv_ids, o, lse = res
  dq, dk, dv = _per_platform(_backward_on, spec, q, k, v, q_ids, kv_ids, o, lse, do)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                    causal: bool = False, segment_ids: Any = None,
                    sm_scale: float | None = None, block_q: int | None = None,
                    block_k: int | None = None, interpret: bool | None = None) -> jax.Array:
  """Fused attention, same answer as reference_attention; returns BxTxHxK in q's dtype.

  block_q / block_k: tile sizes (default per platform, see LOWERINGS), clamped to the next
  power of two >= the sequence length (at least 16). Mosaic TPU needs multiples of 128 (or
  the whole padded length); Triton needs powers of two. interpret: None -> interpret mode
  exactly when the computation is lowered for a CPU; True / False force it everywhere.
  """
  _validate(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, block_q, block_k, sm_scale)
  (B, T, _, K), S = q_BxTxHxK.shape, k_BxSxGxK.shape[1]
  q_ids, kv_ids = segment_pair(segment_ids, T, S)
  if q_ids is not None and (q_ids.shape != (B, T) or kv_ids.shape != (B, S)):
    raise ValueError(f'flash_attention: segment ids of shapes {q_ids.shape}, '
                     f'{kv_ids.shape} must be ({B}, {T}) and ({B}, {S})')
  spec = _Spec(sm_scale=float(K ** -0.5 if sm_scale is None else sm_scale),
               causal=bool(causal), block_q=block_q, block_k=block_k,
               interpret=None if interpret is None else bool(interpret))
  if q_ids is not None:
    q_ids, kv_ids = jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32)
  return _flash(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, spec)
