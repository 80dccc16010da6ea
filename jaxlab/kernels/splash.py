"""Splash attention, the TPU attention kernel JAX ships
(jax.experimental.pallas.ops.tpu.splash_attention; what MaxText runs on TPU), behind
jaxlab's attention interface: q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal, segment ids.

  GQA       make_splash_mha with G kv heads: each query head reads kv head h // (H / G);
            K/V are never repeated.
  masks     a lazy CausalMask per query head (fully masked blocks are skipped) and
            SegmentIds for packed documents; the kernel runs per batch row (vmap).
  scale     splash has no scale argument: q is multiplied by sm_scale (in float32) first.
  blocks    every forward and backward block the same size: the target chip's entry of
            BLOCKS, or the largest multiple of 128 below it that divides T.
  lowering  Mosaic on TPU; interpret mode on any other platform (jax.lax.platform_dependent,
            so a CPU host compiling for a TPU gets the real kernel), which is how the tests
            check it against the reference.

It cannot pad (T must be a multiple of 128), and it runs self-attention only: unsupported()
says why a call is refused, and the dispatcher's `auto` then picks the Pallas kernel.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from jaxlab.kernels.target import target_device

LANES = 128
# Block (q and kv, forward and backward) per chip, by device_kind: MaxText's default
# (sa_block_* = 512 in its base.yml). Its tuned v5p / v6e recipes use 2048, but with the
# default scoped-VMEM limit that does not compile (CompileTimeScopedVmemOom for v5p at
# T = 4k and v6e at 32k, bench/compile_kernels.py); it needs a raised limit
# (LIBTPU_INIT_ARGS=--xla_tpu_scoped_vmem_limit_kib=...), which jaxlab does not set.
BLOCKS = {'TPU v4': 512, 'TPU v5 lite': 512, 'TPU v5': 512, 'TPU v6 lite': 512}
DEFAULT_BLOCK = 512


def unsupported(q_BxTxHxK, k_BxSxGxK, *, segment_ids: Any) -> str | None:
  """Why splash cannot give the reference's answer for this call, or None."""
  (_, T, H, _), (_, S, G, _) = q_BxTxHxK.shape, k_BxSxGxK.shape
  if T != S:
    return f'cross-attention (T={T} != S={S}) is not supported by splash here'
  if isinstance(segment_ids, (tuple, list)):
    return 'separate query / key segment ids are not supported by splash here'
  if T % LANES:
    return f'the sequence length T={T} must be a multiple of {LANES} (splash does not pad)'
  if H % G:
    return f'query heads H={H} must be a multiple of kv heads G={G}'
  if q_BxTxHxK.dtype not in (jnp.bfloat16, jnp.float32):
    return f'splash needs bfloat16 or float32 inputs, got {q_BxTxHxK.dtype}'
  return None


def block_for(T: int, device_kind: str) -> int:
  """The target chip's block, or the largest multiple of 128 below it that divides T."""
  b = min(BLOCKS.get(device_kind, DEFAULT_BLOCK), T)
  b -= b % LANES
  while T % b:
    b -= LANES
  return b


@functools.lru_cache(maxsize=64)
def _kernel(T: int, H: int, causal: bool, block: int, interpret: bool):
  """Splash's kernel object (its mask is preprocessed in numpy: cached per shape). Built
  eagerly even when first asked for under a trace: its mask infos are arrays, and made
  under a trace they would be that trace's values, leaked by the cache into the next."""
  head = sa.CausalMask((T, T)) if causal else sa.FullMask((T, T))
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha_single_device(mask=sa.MultiHeadMask([head] * H),
                                            block_sizes=sizes, interpret=interpret)


def _run(interpret: bool, causal: bool, block: int, q_BxHxTxK, k_BxGxTxK, v_BxGxTxK, ids_BxT):
  _, H, T, _ = q_BxHxTxK.shape
  kernel = _kernel(T, H, causal, block, interpret)

  def row(q_HxTxK, k_GxTxK, v_GxTxK, ids_T):
    seg = None if ids_T is None else sa.SegmentIds(q=ids_T, kv=ids_T)
    return kernel(q_HxTxK, k_GxTxK, v_GxTxK, segment_ids=seg)
  return jax.vmap(row)(q_BxHxTxK, k_BxGxTxK, v_BxGxTxK, ids_BxT)


def splash_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool = True, segment_ids: Any = None,
                     sm_scale: float | None = None, block: int | None = None,
                     interpret: bool | None = None) -> jax.Array:
  """Splash attention with the reference's semantics; returns BxTxHxK in q's dtype.
  interpret: None -> the real kernel when lowered for a TPU, interpret mode elsewhere."""
  why = unsupported(q_BxTxHxK, k_BxSxGxK, segment_ids=segment_ids)
  if why is not None:
    raise ValueError(f'splash_attention: {why}')
  T, K = q_BxTxHxK.shape[1], q_BxTxHxK.shape[3]
  if block is None:
    block = block_for(T, target_device()[1])
  elif block % LANES or T % block:
    raise ValueError(f'splash_attention: block={block} must be a multiple of {LANES} that '
                     f'divides T={T}')
  scale = K ** -0.5 if sm_scale is None else sm_scale
  q_BxTxHxK = (q_BxTxHxK.astype(jnp.float32) * scale).astype(q_BxTxHxK.dtype)
  args = [jnp.swapaxes(x, 1, 2) for x in (q_BxTxHxK, k_BxSxGxK, v_BxSxGxK)]
  args.append(None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32))
  if interpret is None:
    out_BxHxTxK = jax.lax.platform_dependent(
        *args, tpu=functools.partial(_run, False, bool(causal), block),
        default=functools.partial(_run, True, bool(causal), block))
  else:
    out_BxHxTxK = _run(bool(interpret), bool(causal), block, *args)
  return jnp.swapaxes(out_BxHxTxK, 1, 2).astype(q_BxTxHxK.dtype)
