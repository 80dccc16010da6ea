"""Fused per-block attention for ring attention (jaxlab.kernels.ring_attention): the
`BlockAttention` of each backend that can give a block's (out, lse) and take the whole
row's lse and delta = rowsum(dO * O) in its backward. Which backend's block a ring uses
(model.attention, auto) is jaxlab.kernels.dispatch's table and chooser.

  xla     ring_attention.XLA_BLOCKS, the einsum reference.
  pallas  jaxlab's flash kernel (flash.py): its forward kernel returns (o, lse),
          its dq and dk/dv kernels take (lse, delta). Same per-platform lowering as the
          flash backend: interpret mode on a CPU, the Mosaic grid form on a TPU, Triton on
          a GPU; padding and layout by flash.py's own helpers.
  splash  JAX's TPU splash kernel (splash.py's kernel object, with save_residuals=True for
          the lse), and splash's dq and dk/dv kernels, which take logsumexp and di (delta)
          -- private functions of jax 0.10 (`_splash_attention_bwd_dq` / `_dkv`), pinned
          with jax; this module's tests fail if a release moves them. q is pre-scaled
          (splash has no scale argument), so dq is scaled back. Interpret mode off TPU.
  none    cudnn and tokamax (dispatch.BACKENDS says why); `auto` never picks them for the ring.

Conventions a block keeps (ring_attention.BlockAttention): float32 results; a query row
with no visible key in the block (segment ids: its document is not in this key chunk)
gets out 0 and lse -inf. Neither kernel says so itself (the flash kernel gives lse 0,
splash a mean of V and lse near its mask value), so the rows that see a key are read off
the ids (one fused compare-and-reduce over the block, only when there are ids). In the
backward a row whose final lse is -inf (no key anywhere) gets lse +inf: probabilities 0.

bfloat16: each kernel writes its block's output and dq / dk / dv in the input dtype, so a
bfloat16 ring rounds every block's partial result once before the float32 merge (the XLA
block keeps them float32).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sak

from jaxlab.kernels import flash as fa
from jaxlab.kernels import splash
from jaxlab.kernels.masks import attention_mask
from jaxlab.kernels.ring_attention import BlockAttention

F32 = jnp.float32


# ------------------------------------------------------------------ shared conventions

def _seen_BxT(q_ids, kv_ids, causal: bool, T: int, S: int):
  """Rows that see at least one key of the block (BxT bool), or None when all do (no ids:
  a causal mask is top-left aligned, so key 0 is always visible)."""
  if q_ids is None:
    return None
  return jnp.any(attention_mask(T, S, causal=causal, segment_ids=(q_ids, kv_ids)), axis=-1)


def _blank_empty_rows(o_BxTxHxK, lse_BxHxT, seen_BxT):
  """The block convention: float32 out; rows without a visible key: out 0, lse -inf."""
  o_BxTxHxK = o_BxTxHxK.astype(F32)
  if seen_BxT is None:
    return o_BxTxHxK, lse_BxHxT
  return (jnp.where(seen_BxT[:, :, None, None], o_BxTxHxK, 0.0),
          jnp.where(seen_BxT[:, None, :], lse_BxHxT, -jnp.inf))


def _kernel_lse(lse_BxHxT):
  """The row's final lse for a kernel computing p = exp(s - lse): -inf (no key anywhere)
  becomes +inf, so p = 0 instead of inf."""
  return jnp.where(jnp.isneginf(lse_BxHxT), jnp.inf, lse_BxHxT).astype(F32)


# ------------------------------------------------------------------ pallas

def _pallas_spec(causal: bool, sm_scale: float):
  return fa._Spec(sm_scale=float(sm_scale), causal=bool(causal), block_q=None, block_k=None,
                  interpret=None)


def _pallas_forward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, causal, sm_scale):
  o, lse_BxHxT = fa._per_platform(fa._forward_on, _pallas_spec(causal, sm_scale), q_BxTxHxK,
                                  k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids)
  seen = _seen_BxT(q_ids, kv_ids, causal, q_BxTxHxK.shape[1], k_BxSxGxK.shape[1])
  return _blank_empty_rows(o, lse_BxHxT, seen)


def _pallas_backward(q, k, v, q_ids, kv_ids, do_BxTxHxK, lse_BxHxT, delta_BxHxT, causal,
                     sm_scale):
  grads = fa._per_platform(fa.backward_from_rows_on, _pallas_spec(causal, sm_scale), q, k, v,
                           q_ids, kv_ids, do_BxTxHxK, _kernel_lse(lse_BxHxT),
                           delta_BxHxT.astype(F32))
  return tuple(g.astype(F32) for g in grads)


PALLAS_BLOCKS = BlockAttention('pallas', _pallas_forward, _pallas_backward)


# ------------------------------------------------------------------ splash

def _heads_first(x_BxTxHxK):
  return jnp.swapaxes(x_BxTxHxK, 1, 2)


@functools.lru_cache(maxsize=64)
def _splash_kernels(T: int, H: int, causal: bool, block: int, interpret: bool):
  """splash.py's kernel object, and the same with its lse saved."""
  kernel = splash._kernel(T, H, causal, block, interpret)
  with_lse = sak.SplashAttentionKernel(kernel.fwd_mask_info, kernel.dq_mask_info,
                                       kernel.dkv_mask_info,
                                       **dict(kernel.kwargs, save_residuals=True))
  return kernel, with_lse


def _on_platform(run, *args):
  """run(interpret, *args): the real kernel when lowered for a TPU, interpreted elsewhere."""
  return jax.lax.platform_dependent(*args, tpu=functools.partial(run, False),
                                    default=functools.partial(run, True))


def _segments(q_ids_T, kv_ids_S):
  return None if q_ids_T is None else sa.SegmentIds(q=q_ids_T, kv=kv_ids_S)


def _splash_forward(device_kind, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, causal,
                    sm_scale):
  (_, T, H, _), S = q_BxTxHxK.shape, k_BxSxGxK.shape[1]
  block = splash.block_for(T, device_kind)
  qs_BxTxHxK = (q_BxTxHxK.astype(F32) * sm_scale).astype(q_BxTxHxK.dtype)

  def run(interpret, q_BxHxTxK, k_BxGxSxK, v_BxGxSxK, q_ids, kv_ids):
    _, kernel = _splash_kernels(T, H, bool(causal), block, interpret)

    def row(q_HxTxK, k_GxSxK, v_GxSxK, q_ids_T, kv_ids_S):
      o_HxTxK, (lse_HxT,) = kernel(q_HxTxK, k_GxSxK, v_GxSxK,
                                   segment_ids=_segments(q_ids_T, kv_ids_S))
      return o_HxTxK, lse_HxT
    return jax.vmap(row)(q_BxHxTxK, k_BxGxSxK, v_BxGxSxK, q_ids, kv_ids)
  o_BxHxTxK, lse_BxHxT = _on_platform(run, *map(_heads_first, (qs_BxTxHxK, k_BxSxGxK, v_BxSxGxK)),
                                      *_int_ids(q_ids, kv_ids))
  seen = _seen_BxT(q_ids, kv_ids, causal, T, S)
  return _blank_empty_rows(_heads_first(o_BxHxTxK), lse_BxHxT.astype(F32), seen)


def _int_ids(q_ids, kv_ids):
  if q_ids is None:
    return None, None
  return q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32)


def _splash_row_grads(kernel, q_HxTxK, k_GxSxK, v_GxSxK, q_ids_T, kv_ids_S, do_HxTxK,
                      lse_HxT, delta_HxT):
  """splash's own dk/dv and dq kernels (what its custom_vjp runs), with the given lse and
  di = delta, and the mask infos of the kernel object."""
  kw = kernel.kwargs
  sizes = kw['block_sizes']
  common = dict(is_mqa=kw['is_mqa'], mask_value=kw['mask_value'],
                attn_logits_soft_cap=kw['attn_logits_soft_cap'], q_layout=sizes.q_layout,
                k_layout=sizes.k_layout, v_layout=sizes.v_layout,
                mask_function=kw['mask_function'], interpret=kw['interpret'])
  args = (q_HxTxK, k_GxSxK, v_GxSxK, _segments(q_ids_T, kv_ids_S), None, lse_HxT, do_HxTxK,
          delta_HxT)
  _, dk_GxSxK, dv_GxSxK = sak._splash_attention_bwd_dkv(
      *args, bq=sizes.block_q_dkv, bkv=sizes.block_kv_dkv,
      bkv_compute=sizes.block_kv_dkv_compute, mask_info=kernel.dkv_mask_info,
      use_fused_bwd_kernel=False, **common)
  dq_HxTxK = sak._splash_attention_bwd_dq(*args, bq=sizes.block_q_dq, bkv=sizes.block_kv_dq,
                                          mask_info=kernel.dq_mask_info, **common)
  return dq_HxTxK, dk_GxSxK, dv_GxSxK


def _splash_backward(device_kind, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, do_BxTxHxK,
                     lse_BxHxT, delta_BxHxT, causal, sm_scale):
  _, T, H, _ = q_BxTxHxK.shape
  block = splash.block_for(T, device_kind)
  qs_BxTxHxK = (q_BxTxHxK.astype(F32) * sm_scale).astype(q_BxTxHxK.dtype)

  def run(interpret, *args):
    kernel, _ = _splash_kernels(T, H, bool(causal), block, interpret)
    return jax.vmap(functools.partial(_splash_row_grads, kernel))(*args)
  ids = _int_ids(q_ids, kv_ids)
  dq, dk, dv = _on_platform(run, *map(_heads_first, (qs_BxTxHxK, k_BxSxGxK, v_BxSxGxK)), *ids,
                            _heads_first(do_BxTxHxK), _kernel_lse(lse_BxHxT),
                            delta_BxHxT.astype(F32))
  # q was scaled before the kernel: d(q * scale) / dq = scale.
  return (_heads_first(dq).astype(F32) * sm_scale, _heads_first(dk).astype(F32),
          _heads_first(dv).astype(F32))


@functools.lru_cache(maxsize=16)
def splash_blocks(device_kind: str) -> BlockAttention:
  """The splash block for a chip (its block size, splash.BLOCKS); one object per chip, so
  the ring's static configuration hashes the same from step to step."""
  return BlockAttention('splash', functools.partial(_splash_forward, device_kind),
                        functools.partial(_splash_backward, device_kind))
