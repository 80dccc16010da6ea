"""The loop form of the flash-attention kernel (flash_kernels.loop_*): grids and BlockSpecs.

  forward  grid (B, H, T/block_q): one q block against the whole K/V of its kv head h // R
           (R = H // G; the BlockSpec index_map picks the kv head, K/V are never repeated),
           online softmax over k blocks in a loop; writes the output and the logsumexp.
  dq       grid (B, H, T/block_q): recomputes the probabilities from the logsumexp and
           accumulates dq over k blocks; delta = rowsum(dO * O) is precomputed once.
  dk, dv   grid (B, G, S/block_k): one k/v block accumulates over the R query heads of its
           group and over q blocks, so dk/dv come out already summed over the group.

The whole other sequence is one block, so this form suits GPUs (Triton reads it from
HBM) and the CPU interpreter; on TPU that block would have to fit VMEM, which is what the
grid form (flash_grid.py) avoids. Inputs are padded to whole blocks, in cfg.layout.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.flash_kernels import (KernelCfg, cost_estimate, loop_dkdv_kernel,
                                          loop_dq_kernel, loop_fwd_kernel)


def dims(q, k, cfg: KernelCfg):
  """(B, H, G, K, padded T, padded S) of inputs in cfg.layout."""
  if cfg.layout == 'bthk':
    (B, Tp, H, K), (Sp, G) = q.shape, k.shape[1:3]
  else:
    (B, H, Tp, K), (G, Sp) = q.shape, k.shape[1:3]
  return B, H, G, K, Tp, Sp


def _compiler_params(cfg: KernelCfg, K: int, platform: str):
  # On GPU, jax 0.10 lowers pallas_call to Mosaic GPU unless handed Triton parameters (or
  # jax_pallas_use_mosaic_gpu=False); these kernels are written for the Triton lowering.
  if cfg.interpret or platform != 'gpu':
    return None
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=4 if K <= 64 else 8, num_stages=2)


def _seq_spec(cfg: KernelCfg, n: int, K: int, index):
  """Block of n tokens x K of one head; index(*grid ids) -> (batch, token block, head)."""
  if cfg.layout == 'bthk':
    return pl.BlockSpec((None, n, None, K), lambda *g: (lambda b, t, h: (b, t, h, 0))(*index(*g)))
  return pl.BlockSpec((None, None, n, K), lambda *g: (lambda b, t, h: (b, h, t, 0))(*index(*g)))


def _pallas(kernel, name, grid, cfg, K, platform, in_specs, out_specs, out_shape, args,
            kind, arrays):
  B, H = args[0].shape[0], args[0].shape[2 if cfg.layout == 'bthk' else 1]
  cost = cost_estimate(kind, B, H, cfg.seq_q, cfg.seq_k, K, cfg.causal, arrays)
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, interpret=cfg.interpret, cost_estimate=cost,
                        compiler_params=_compiler_params(cfg, K, platform), name=name)(*args)


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


def forward(q, k, v, q_ids, kv_ids, cfg: KernelCfg, platform: str = 'cpu', count: bool = False):
  """Padded inputs -> (o, lse_BxHx1xT float32[, k blocks run per q block])."""
  B, H, G, K, Tp, Sp = dims(q, k, cfg)
  nq = Tp // cfg.block_q
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major_specs(cfg, H, G, K, Sp, has_seg)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((B, H, 1, Tp), jnp.float32)]
  out_specs = [q_spec, row_spec]
  if count:
    _count_out((B, H, nq), out_shape, out_specs)
  kernel = functools.partial(loop_fwd_kernel, cfg=cfg, num_kv=Sp // cfg.block_k,
                             has_seg=has_seg, count=count)
  args = (q, k, v) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_fwd', (B, H, nq), cfg, K, platform,
                 [q_spec, kv_spec, kv_spec, *ids_specs], out_specs, out_shape, args,
                 'fwd', (q, k, v, q))


def dq(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, platform: str = 'cpu',
       count: bool = False):
  B, H, G, K, Tp, Sp = dims(q, k, cfg)
  nq = Tp // cfg.block_q
  has_seg = q_ids is not None
  q_spec, kv_spec, row_spec, ids_specs = _q_major_specs(cfg, H, G, K, Sp, has_seg)
  out_shape, out_specs = [jax.ShapeDtypeStruct(q.shape, q.dtype)], [q_spec]
  if count:
    _count_out((B, H, nq), out_shape, out_specs)
  kernel = functools.partial(loop_dq_kernel, cfg=cfg, num_kv=Sp // cfg.block_k,
                             has_seg=has_seg, count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_dq', (B, H, nq), cfg, K, platform,
                 [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs],
                 out_specs, out_shape, args, 'dq', (q, k, v, do, q))


def dkdv(q, k, v, do, lse, delta, q_ids, kv_ids, cfg: KernelCfg, platform: str = 'cpu',
         count: bool = False):
  B, H, G, K, Tp, Sp = dims(q, k, cfg)
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
  kernel = functools.partial(loop_dkdv_kernel, cfg=cfg, num_q=Tp // cfg.block_q, R=R,
                             has_seg=has_seg, count=count)
  args = (q, k, v, do, lse, delta) + ((q_ids, kv_ids) if has_seg else ())
  return _pallas(kernel, 'flash_attention_dkdv', (B, G, nk), cfg, K, platform,
                 [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, *ids_specs],
                 out_specs, out_shape, args, 'dkdv', (q, k, v, do, k, v))
