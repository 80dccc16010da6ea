"""Fused (flash) attention in Pallas: online softmax forward, recomputing backward.

Same layouts and masks as jaxlab.kernels.attention.reference_attention: q_BxTxHxK,
k_BxSxGxK, v_BxSxGxK (H a multiple of G), causal (top-left aligned when T != S) and
segment ids (one BxT array or a (q_ids_BxT, kv_ids_BxS) pair). A query with no visible key
returns zeros and gets zero gradients, never NaN.

Kernels (all `pl.pallas_call` with a grid and BlockSpecs, float32 accumulation):
  forward  grid (B, H, T/block_q): one q block against the K/V of its kv head h // R
           (R = H // G; the BlockSpec index_map picks the kv head, K/V are never repeated),
           online softmax over k blocks; writes the output and the logsumexp (float32).
  dq       grid (B, H, T/block_q): recomputes the probabilities from the logsumexp and
           accumulates dq over k blocks; delta = rowsum(dO * O) is precomputed once.
  dk, dv   grid (B, G, S/block_k): one k/v block accumulates over the R query heads of its
           group and over q blocks, so dk/dv come out already summed over the group.
Causal masking bounds the inner loops (k blocks up to the diagonal for q blocks; q blocks
from the diagonal for k blocks), so fully-masked blocks are never executed. T and S are
padded up to the block sizes, padded keys are masked, and the padding is sliced off.

Lowerings: interpret mode (the default on CPU; what the tests run), Triton on GPU (chosen
explicitly with Triton CompilerParams: jax 0.10's pallas_call would otherwise pick Mosaic
GPU; Triton is the GPU fallback path, deprecated by JAX in favour of Mosaic GPU, and no
Mosaic GPU kernel is written here because none could be tested) and Mosaic TPU (q/k/v
transposed to B x H x T x K first, see LAYOUTS; whole-sequence K/V blocks must fit VMEM,
so very long sequences need a kv-gridded TPU kernel). Only interpret mode has been run;
the Triton and Mosaic TPU paths are checked to lower (jax.export for 'cuda' and 'tpu' from
a CPU machine), not compiled by ptxas/libtpu or run.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.masks import segment_pair
from jaxlab.kernels.flash_kernels import (KernelCfg, dkdv_kernel, dq_kernel, fwd_kernel,
                                          round_up)

# (block_q, block_k) per backend before clamping to the sequence lengths.
DEFAULT_BLOCKS = {'gpu': (128, 64), 'tpu': (128, 128), 'cpu': (128, 128)}
_MIN_BLOCK = 16          # Triton dots need >= 16 rows; also the smallest default block
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Kernel-side layout per backend: Mosaic TPU tiles the last two dims of a block, so the
# heads go before the tokens there; elsewhere the kernels read q_BxTxHxK as given.
LAYOUTS = {'tpu': 'bhtk'}


def _pick_block(given: int | None, default: int, length: int) -> int:
  cap = max(_MIN_BLOCK, pl.next_power_of_2(length))
  return min(default if given is None else given, cap)


def _validate(q, k, v, block_q, block_k):
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


def _compiler_params(cfg: KernelCfg, K: int):
  # On GPU, jax 0.10 lowers pallas_call to Mosaic GPU unless handed Triton parameters (or
  # jax_pallas_use_mosaic_gpu=False); these kernels are written for the Triton lowering.
  if cfg.interpret or jax.default_backend() != 'gpu':
    return None
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=4 if K <= 64 else 8, num_stages=2)


def _dims(q, k, cfg: KernelCfg):
  """(B, H, G, K, padded T, padded S) of inputs in cfg.layout."""
  if cfg.layout == 'bthk':
    (B, Tp, H, K), (Sp, G) = q.shape, k.shape[1:3]
  else:
    (B, H, Tp, K), (G, Sp) = q.shape, k.shape[1:3]
  return B, H, G, K, Tp, Sp


def _seq_spec(cfg: KernelCfg, n: int, K: int, index):
  """Block of n tokens x K of one head; index(*grid ids) -> (batch, token block, head)."""
  if cfg.layout == 'bthk':
    return pl.BlockSpec((None, n, None, K), lambda *g: (lambda b, t, h: (b, t, h, 0))(*index(*g)))
  return pl.BlockSpec((None, None, n, K), lambda *g: (lambda b, t, h: (b, h, t, 0))(*index(*g)))


def _pallas(kernel, name, grid, cfg, K, in_specs, out_specs, out_shape, args):
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, interpret=cfg.interpret,
                        compiler_params=_compiler_params(cfg, K), name=name)(*args)


def _count_out(shape, out_shape, out_specs):
  out_shape.append(jax.ShapeDtypeStruct(shape, jnp.int32))
  out_specs.append(pl.BlockSpec((None, None, 1), lambda b, h, i: (b, h, i)))


def _q_major_specs(cfg: KernelCfg, H, G, K, Sp, has_seg):
  """Specs shared by the forward and dq kernels (grid B x H x q blocks)."""
  R, bq = H // G, cfg.block_q
  q_spec = _seq_spec(cfg, bq, K, lambda b, h, i: (b, i, h))
  kv_spec = _seq_spec(cfg, Sp, K, lambda b, h, i: (b, 0, h // R))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, h, i: (b, h, 0, i))
  ids = [pl.BlockSpec((None, 1, bq), lambda b, h, i: (b, 0, i)),
         pl.BlockSpec((None, Sp, 1), lambda b, h, i: (b, 0, 0))] if has_seg else []
  return q_spec, kv_spec, row_spec, ids


def _forward_call(q, k, v, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  """Padded inputs -> (o, lse_BxHx1xT float32[, k blocks run per q block])."""
  B, H, G, K, Tp, Sp = _dims(q, k, cfg)
  nq = Tp // cfg.block_q
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major_specs(cfg, H, G, K, Sp, has_seg)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((B, H, 1, Tp), jnp.float32)]
  out_specs = [q_spec, row_spec]
  if count:
    _count_out((B, H, nq), out_shape, out_specs)
  kernel = functools.partial(fwd_kernel, cfg=cfg, num_kv=Sp // cfg.block_k, has_seg=has_seg,
                             count=count)
  args = (q, k, v) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_fwd', (B, H, nq), cfg, K,
                 [q_spec, kv_spec, kv_spec, *ids_specs], out_specs, out_shape, args)


def _dq_call(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  B, H, G, K, Tp, Sp = _dims(q, k, cfg)
  nq = Tp // cfg.block_q
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major_specs(cfg, H, G, K, Sp, has_seg)
  out_shape, out_specs = [jax.ShapeDtypeStruct(q.shape, q.dtype)], [q_spec]
  if count:
    _count_out((B, H, nq), out_shape, out_specs)
  kernel = functools.partial(dq_kernel, cfg=cfg, num_kv=Sp // cfg.block_k, has_seg=has_seg,
                             count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_dq', (B, H, nq), cfg, K,
                 [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs],
                 out_specs, out_shape, args)


def _dkdv_call(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  B, H, G, K, Tp, Sp = _dims(q, k, cfg)
  R, bk, nk = H // G, cfg.block_k, Sp // cfg.block_k
  has_seg = q_ids is not None
  # All R query heads of kv head g: heads g*R .. g*R+R-1 are block g of size R.
  if cfg.layout == 'bthk':
    q_spec = pl.BlockSpec((None, Tp, R, K), lambda b, g, j: (b, 0, g, 0))
  else:
    q_spec = pl.BlockSpec((None, R, Tp, K), lambda b, g, j: (b, g, 0, 0))
  kv_spec = _seq_spec(cfg, bk, K, lambda b, g, j: (b, j, g))
  row_spec = pl.BlockSpec((None, R, 1, Tp), lambda b, g, j: (b, g, 0, 0))
  ids_specs = [pl.BlockSpec((None, 1, Tp), lambda b, g, j: (b, 0, 0)),
               pl.BlockSpec((None, bk, 1), lambda b, g, j: (b, j, 0))] if has_seg else []
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  out_specs = [kv_spec, kv_spec]
  if count:
    _count_out((B, G, nk), out_shape, out_specs)
  kernel = functools.partial(dkdv_kernel, cfg=cfg, num_q=Tp // cfg.block_q, R=R,
                             has_seg=has_seg, count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_dkdv', (B, G, nk), cfg, K,
                 [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs],
                 out_specs, out_shape, args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, cfg: KernelCfg):
  return _forward_call(q, k, v, q_ids, kv_ids, cfg)[0]


def _flash_fwd(q, k, v, q_ids, kv_ids, cfg: KernelCfg):
  o, lse = _forward_call(q, k, v, q_ids, kv_ids, cfg)
  return o, (q, k, v, q_ids, kv_ids, o, lse)


def _flash_bwd(cfg: KernelCfg, res, do):
  q, k, v, q_ids, kv_ids, o, lse = res
  spec = 'bthk,bthk->bht' if cfg.layout == 'bthk' else 'bhtk,bhtk->bht'
  delta_BxHx1xT = jnp.einsum(spec, do.astype(jnp.float32), o.astype(jnp.float32))[:, :, None]
  dq = _dq_call(q, k, v, do, lse, delta_BxHx1xT, q_ids, kv_ids, cfg)[0]
  dk, dv = _dkdv_call(q, k, v, do, lse, delta_BxHx1xT, q_ids, kv_ids, cfg)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _prepare(q, k, v, causal, segment_ids, sm_scale, block_q, block_k, interpret):
  """Validates, picks blocks, pads: (q, k, v, q_ids, kv_ids) padded and the static KernelCfg."""
  _validate(q, k, v, block_q, block_k)
  B, T, H, K = q.shape
  S = k.shape[1]
  q_ids, kv_ids = segment_pair(segment_ids, T, S)
  if q_ids is not None and (q_ids.shape != (B, T) or kv_ids.shape != (B, S)):
    raise ValueError(f'flash_attention: segment ids of shapes {q_ids.shape}, '
                     f'{kv_ids.shape} must be ({B}, {T}) and ({B}, {S})')
  if sm_scale is not None and not isinstance(sm_scale, (int, float)):
    raise ValueError(f'flash_attention: sm_scale={sm_scale!r} must be a Python number (it is '
                     'compiled into the kernel) or None for head_dim ** -0.5')
  backend = jax.default_backend()
  dq_, dk_ = DEFAULT_BLOCKS.get(backend, DEFAULT_BLOCKS['gpu'])
  interpret = backend == 'cpu' if interpret is None else bool(interpret)
  cfg = KernelCfg(sm_scale=float(K ** -0.5 if sm_scale is None else sm_scale), causal=bool(causal),
             block_q=_pick_block(block_q, dq_, T), block_k=_pick_block(block_k, dk_, S),
             seq_q=T, seq_k=S, interpret=interpret, layout=LAYOUTS.get(backend, 'bthk'))
  Tp, Sp, Kp = round_up(T, cfg.block_q), round_up(S, cfg.block_k), K
  if backend == 'gpu' and not interpret:   # Triton tiles are powers of two, >= 16
    for name, b in (('block_q', cfg.block_q), ('block_k', cfg.block_k)):
      if b < _MIN_BLOCK or b & (b - 1):
        raise ValueError(f'flash_attention: {name}={b} must be a power of two >= '
                         f'{_MIN_BLOCK} for the Triton GPU lowering')
    Kp = max(_MIN_BLOCK, pl.next_power_of_2(K))  # zero columns change no logit
  if backend == 'tpu' and not interpret:   # Mosaic tiles rows of 128 lanes
    for name, b, n in (('block_q', cfg.block_q, Tp), ('block_k', cfg.block_k, Sp)):
      if b % 128 and b != n:
        raise ValueError(f'flash_attention: {name}={b} must be a multiple of 128 (or cover '
                         'the whole sequence) for the Mosaic TPU lowering')
  pad_t = ((0, 0), (0, Tp - T), (0, 0), (0, Kp - K))
  pad_s = ((0, 0), (0, Sp - S), (0, 0), (0, Kp - K))
  q, k, v = jnp.pad(q, pad_t), jnp.pad(k, pad_s), jnp.pad(v, pad_s)
  if cfg.layout == 'bhtk':
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  if q_ids is not None:   # queries as rows (B x 1 x T), keys as columns (B x S x 1)
    q_ids = jnp.pad(jnp.asarray(q_ids, jnp.int32), ((0, 0), (0, Tp - T)))[:, None, :]
    kv_ids = jnp.pad(jnp.asarray(kv_ids, jnp.int32), ((0, 0), (0, Sp - S)))[:, :, None]
  return q, k, v, q_ids, kv_ids, cfg


def flash_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                    causal: bool = False, segment_ids: Any = None,
                    sm_scale: float | None = None, block_q: int | None = None,
                    block_k: int | None = None, interpret: bool | None = None) -> jax.Array:
  """Fused attention, same answer as reference_attention; returns BxTxHxK in q's dtype.

  block_q / block_k: tile sizes (default per backend, see DEFAULT_BLOCKS), clamped to the
  next power of two >= the sequence length (at least 16); the Triton lowering needs powers
  of two >= 16 (and gets head_dim zero-padded to one). interpret: None -> interpret mode
  exactly when the default backend is the CPU.
  """
  q, k, v, q_ids, kv_ids, cfg = _prepare(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal, segment_ids,
                                         sm_scale, block_q, block_k, interpret)
  o = _flash(q, k, v, q_ids, kv_ids, cfg)
  if cfg.layout == 'bhtk':
    o = jnp.swapaxes(o, 1, 2)
  return o[:, :cfg.seq_q, :, :q_BxTxHxK.shape[-1]]
