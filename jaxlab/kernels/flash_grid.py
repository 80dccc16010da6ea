"""The grid form of the flash-attention kernel (flash_kernels.grid_*), for Mosaic TPU:
K/V blocks (Q/dO blocks for dk/dv) stream through VMEM along the innermost grid axes, so
VMEM holds a few blocks whatever the sequence length (the loop form holds a whole
sequence per head and runs out of scoped VMEM near T = 32k).

  forward  grid (B, H, T/block_q, S/block_k); scratch: acc (K x block_q), max and sum rows.
  dq       grid (B, H, T/block_q, S/block_k); scratch: dq (block_q x K).
  dk, dv   grid (B, G, S/block_k, R, T/block_q): the R query heads of kv head g and every
           q block; scratch: dk, dv (block_k x K). K/V are never repeated (GQA).

Layout B x H x T x K (heads before tokens: Mosaic tiles the last two dims of a block, which
must be multiples of 8 x 128 or the whole dim). Under causal masking a block above the
diagonal is skipped and its index_map repeats the last visible block, so no copy is made.
The axes before the streamed ones are "parallel" (megacore chips split them).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxlab.kernels.flash_kernels import (KernelCfg, cost_estimate, grid_dkdv_kernel,
                                          grid_dq_kernel, grid_fwd_kernel, kv_block_hi,
                                          q_block_lo)


def _dims(q, k):
  (B, H, Tp, K), (G, Sp) = q.shape, k.shape[1:3]
  return B, H, G, K, Tp, Sp


def _params(n_parallel: int, n_arbitrary: int):
  return pltpu.CompilerParams(
      dimension_semantics=('parallel',) * n_parallel + ('arbitrary',) * n_arbitrary)


def _block(n: int, K: int, index):
  """n tokens x K of one head of a B x H x T x K array; index(*grid) -> (b, h, t block)."""
  return pl.BlockSpec((None, None, n, K), lambda *g: (*index(*g), 0))


def _call(kernel, name, grid, cfg, n_par, in_specs, out_specs, out_shape, scratch, cost, args):
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, scratch_shapes=scratch, interpret=cfg.interpret,
                        compiler_params=_params(n_par, len(grid) - n_par),
                        cost_estimate=cost, name=name)(*args)


def _count_out(shape, index, out_shape, out_specs):
  out_shape.append(jax.ShapeDtypeStruct(shape, jnp.int32))
  out_specs.append(pl.BlockSpec((None, None, 1), index))


def _q_major(cfg: KernelCfg, H, G, K, Sp, has_seg):
  """Specs of the forward and dq kernels, grid (b, h, i, j): k block j of q block i,
  clamped to the last block the causal mask leaves visible."""
  R, bq, bk, nk = H // G, cfg.block_q, cfg.block_k, Sp // cfg.block_k

  def kv_index(i, j):
    return jnp.minimum(j, kv_block_hi(i, cfg, nk) - 1) if cfg.causal else j
  q_spec = _block(bq, K, lambda b, h, i, j: (b, h, i))
  kv_spec = _block(bk, K, lambda b, h, i, j: (b, h // R, kv_index(i, j)))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, h, i, j: (b, h, 0, i))
  ids = [pl.BlockSpec((None, 1, bq), lambda b, h, i, j: (b, 0, i)),
         pl.BlockSpec((None, bk, 1), lambda b, h, i, j: (b, kv_index(i, j), 0))] if has_seg else []
  return q_spec, kv_spec, row_spec, ids


def _cost(kind, q, k, cfg, arrays):
  B, H, _, K, _, _ = _dims(q, k)
  return cost_estimate(kind, B, H, cfg.seq_q, cfg.seq_k, K, cfg.causal, arrays)


def forward(q, k, v, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  """Padded B x H x T x K inputs -> (o, lse_BxHx1xT float32[, k blocks run per q block])."""
  B, H, G, K, Tp, Sp = _dims(q, k)
  nq, nk = Tp // cfg.block_q, Sp // cfg.block_k
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major(cfg, H, G, K, Sp, has_seg)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((B, H, 1, Tp), jnp.float32)]
  out_specs = [q_spec, row_spec]
  if count:
    _count_out((B, H, nq), lambda b, h, i, j: (b, h, i), out_shape, out_specs)
  scratch = [pltpu.VMEM((K, cfg.block_q), jnp.float32), pltpu.VMEM((1, cfg.block_q), jnp.float32),
             pltpu.VMEM((1, cfg.block_q), jnp.float32)]
  kernel = functools.partial(grid_fwd_kernel, cfg=cfg, num_kv=nk, has_seg=has_seg, count=count)
  args = (q, k, v) + ((q_ids, kv_ids) if has_seg else ())
  return _call(kernel, 'flash_attention_fwd', (B, H, nq, nk), cfg, 3,
               [q_spec, kv_spec, kv_spec, *ids_specs], out_specs, out_shape, scratch,
               _cost('fwd', q, k, cfg, (q, k, v, q)), args)


def dq(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  B, H, G, K, Tp, Sp = _dims(q, k)
  nq, nk = Tp // cfg.block_q, Sp // cfg.block_k
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major(cfg, H, G, K, Sp, has_seg)
  out_shape, out_specs = [jax.ShapeDtypeStruct(q.shape, q.dtype)], [q_spec]
  if count:
    _count_out((B, H, nq), lambda b, h, i, j: (b, h, i), out_shape, out_specs)
  kernel = functools.partial(grid_dq_kernel, cfg=cfg, num_kv=nk, has_seg=has_seg, count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _call(kernel, 'flash_attention_dq', (B, H, nq, nk), cfg, 3,
               [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs], out_specs,
               out_shape, [pltpu.VMEM((cfg.block_q, K), jnp.float32)],
               _cost('dq', q, k, cfg, (q, k, v, do, q)), args)


def dkdv(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, count: bool = False):
  B, H, G, K, Tp, Sp = _dims(q, k)
  R, bq, bk = H // G, cfg.block_q, cfg.block_k
  nq, nk = Tp // bq, Sp // bk
  has_seg = q_ids is not None

  def q_index(j, i):               # q blocks before the diagonal repeat the first visible one
    return jnp.maximum(i, q_block_lo(j, cfg)) if cfg.causal else i
  q_spec = _block(bq, K, lambda b, g, j, r, i: (b, g * R + r, q_index(j, i)))
  kv_spec = _block(bk, K, lambda b, g, j, r, i: (b, g, j))
  row_spec = pl.BlockSpec((None, None, 1, bq),
                          lambda b, g, j, r, i: (b, g * R + r, 0, q_index(j, i)))
  ids_specs = [pl.BlockSpec((None, 1, bq), lambda b, g, j, r, i: (b, 0, q_index(j, i))),
               pl.BlockSpec((None, bk, 1), lambda b, g, j, r, i: (b, j, 0))] if has_seg else []
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  out_specs = [kv_spec, kv_spec]
  if count:
    _count_out((B, G, nk), lambda b, g, j, r, i: (b, g, j), out_shape, out_specs)
  kernel = functools.partial(grid_dkdv_kernel, cfg=cfg, num_q=nq, R=R, has_seg=has_seg,
                             count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _call(kernel, 'flash_attention_dkdv', (B, G, nk, R, nq), cfg, 3,
               [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs], out_specs,
               out_shape, [pltpu.VMEM((bk, K), jnp.float32), pltpu.VMEM((bk, K), jnp.float32)],
               _cost('dkdv', q, k, cfg, (q, k, v, do, k, v)), args)
