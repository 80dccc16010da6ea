"""Attention: one reference implementation (XLA einsums) and a dispatcher
(xla | cudnn | pallas | auto; the Pallas kernel lives in flash_attention.py).

Layouts: q_BxTxHxK, k_BxSxGxK, v_BxSxGxK with H query heads sharing G kv heads
(grouped-query attention; H a multiple of G). Masks:
  causal       query t sees keys s <= t (top-left aligned when T != S, as
               jax.nn.dot_product_attention does).
  segment_ids  a BxT array (self-attention, T == S) or a pair (q_ids_BxT, kv_ids_BxS);
               a query sees only keys with the same id (packed documents).
Softmax runs in float32. A query with no visible key (possible only with separate q/kv ids)
returns zeros, never NaN.
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp


def _segment_pair(segment_ids: Any, T: int, S: int):
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError('segment_ids must be a BxT array or a (q_ids_BxT, kv_ids_BxS) pair, '
                       f'got a sequence of length {len(segment_ids)}')
    q_ids, kv_ids = segment_ids
  else:
    if T != S:
      raise ValueError(f'one segment_ids array needs self-attention (T == S), got T={T}, S={S}; '
                       'pass a (q_ids_BxT, kv_ids_BxS) pair instead')
    q_ids = kv_ids = segment_ids
  if q_ids.shape[-1] != T or kv_ids.shape[-1] != S:
    raise ValueError(f'segment ids of shapes {q_ids.shape}, {kv_ids.shape} do not match '
                     f'T={T}, S={S}')
  return q_ids, kv_ids


def attention_mask(T: int, S: int, *, causal: bool, segment_ids: Any = None):
  """Boolean mask BxTxS (or 1xTxS) of visible keys, or None when nothing is masked."""
  mask_BxTxS = None
  if causal:
    mask_BxTxS = jnp.tril(jnp.ones((T, S), dtype=bool))[None]
  q_ids_BxT, kv_ids_BxS = _segment_pair(segment_ids, T, S)
  if q_ids_BxT is not None:
    same_BxTxS = q_ids_BxT[:, :, None] == kv_ids_BxS[:, None, :]
    mask_BxTxS = same_BxTxS if mask_BxTxS is None else mask_BxTxS & same_BxTxS
  return mask_BxTxS


def reference_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                        causal: bool = True, segment_ids: Any = None,
                        sm_scale: float | None = None) -> jax.Array:
  """Masked softmax attention with einsums; returns BxTxHxK in q's dtype."""
  B, T, H, K = q_BxTxHxK.shape
  S, G = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
  if H % G:
    raise ValueError(f'query heads H={H} must be a multiple of kv heads G={G}')
  if sm_scale is None:
    sm_scale = K ** -0.5
  R = H // G   # query heads per kv head; K/V are shared, never repeated
  q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, R, K)
  logits_BxGxRxTxS = jnp.einsum('btgrk,bsgk->bgrts', q_BxTxGxRxK, k_BxSxGxK,
                                preferred_element_type=jnp.float32)
  logits_BxGxRxTxS = logits_BxGxRxTxS.astype(jnp.float32) * sm_scale
  mask_BxTxS = attention_mask(T, S, causal=causal, segment_ids=segment_ids)
  if mask_BxTxS is None:
    probs_BxGxRxTxS = jax.nn.softmax(logits_BxGxRxTxS, axis=-1)
  else:
    mask_Bx1x1xTxS = mask_BxTxS[:, None, None]
    # A finite fill keeps fully-masked rows NaN-free (uniform before the where below),
    # and the where zeroes them, so such queries output 0.
    logits_BxGxRxTxS = jnp.where(mask_Bx1x1xTxS, logits_BxGxRxTxS,
                                 jnp.finfo(jnp.float32).min)
    probs_BxGxRxTxS = jax.nn.softmax(logits_BxGxRxTxS, axis=-1)
    probs_BxGxRxTxS = jnp.where(mask_Bx1x1xTxS, probs_BxGxRxTxS, 0.0)
  out_BxTxGxRxK = jnp.einsum('bgrts,bsgk->btgrk', probs_BxGxRxTxS.astype(v_BxSxGxK.dtype),
                             v_BxSxGxK)
  return out_BxTxGxRxK.reshape(B, T, H, K).astype(q_BxTxHxK.dtype)


def pallas_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool = True, segment_ids: Any = None,
                     sm_scale: float | None = None) -> jax.Array:
  """The fused Pallas kernel (jaxlab.kernels.flash_attention) with default blocks."""
  from jaxlab.kernels.flash_attention import flash_attention   # it imports this module
  return flash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                         segment_ids=segment_ids, sm_scale=sm_scale)


def cudnn_unsupported(q_BxTxHxK, k_BxSxGxK, *, causal: bool, segment_ids: Any) -> str | None:
  """Why cuDNN's fused attention cannot give the reference answer here, or None."""
  if jax.default_backend() != 'gpu':
    return f'cuDNN needs a CUDA GPU, the default backend is {jax.default_backend()}'
  if segment_ids is not None:
    # jax.nn.dot_product_attention's cudnn path takes only per-row lengths (one document
    # per row); a dense mask would not zero queries that see no key, as the reference does.
    return 'segment ids (packed documents) are not supported by the cuDNN path'
  if q_BxTxHxK.dtype not in (jnp.bfloat16, jnp.float16):
    return f'cuDNN attention needs bfloat16 or float16 inputs, got {q_BxTxHxK.dtype}'
  K = q_BxTxHxK.shape[-1]
  if K > 128 or K % 8:
    return f'cuDNN attention needs head_dim <= 128 and a multiple of 8, got {K}'
  T, S = q_BxTxHxK.shape[1], k_BxSxGxK.shape[1]
  if causal and T != S:
    return f'causal cross-attention (T={T} != S={S}) is not checked against the reference'
  return None


def cudnn_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                    causal: bool = True, segment_ids: Any = None,
                    sm_scale: float | None = None) -> jax.Array:
  """jax.nn.dot_product_attention(implementation='cudnn'); GQA is native there."""
  why = cudnn_unsupported(q_BxTxHxK, k_BxSxGxK, causal=causal, segment_ids=segment_ids)
  if why is not None:
    raise ValueError(f"attention implementation 'cudnn' cannot run this call: {why}; "
                     "use 'pallas', 'xla' or 'auto'")
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, scale=sm_scale,
                                      is_causal=causal, implementation='cudnn')


IMPLEMENTATIONS = {
    'xla': reference_attention,
    'cudnn': cudnn_attention,
    'pallas': pallas_attention,
}
CHOICES = (*IMPLEMENTATIONS, 'auto')
_log = logging.getLogger('jaxlab.kernels')
_logged: set = set()


def choose_implementation(q_BxTxHxK, k_BxSxGxK, *, causal: bool,
                          segment_ids: Any) -> tuple[str, str]:
  """auto's (choice, reason) from static information only (platform, shapes, dtypes)."""
  platform = jax.default_backend()
  if platform == 'cpu':
    return 'xla', 'fused kernels only run interpreted on the CPU'
  if platform == 'gpu':
    why = cudnn_unsupported(q_BxTxHxK, k_BxSxGxK, causal=causal, segment_ids=segment_ids)
    if why is None:
      return 'cudnn', 'cuDNN supports this shape, dtype and mask'
    return 'pallas', why
  return 'pallas', f'fused Pallas kernel on {platform}'


def attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
              causal: bool = True, segment_ids: Any = None, sm_scale: float | None = None,
              implementation: str = 'xla') -> jax.Array:
  """Dispatches to an attention implementation: one of IMPLEMENTATIONS or 'auto' (resolved
  at trace time; each distinct choice is logged once at INFO on 'jaxlab.kernels')."""
  if implementation not in CHOICES:
    raise ValueError(f'attention implementation {implementation!r} is not known; allowed: '
                     f'{", ".join(map(repr, CHOICES))}')
  if implementation == 'auto':
    implementation, reason = choose_implementation(q_BxTxHxK, k_BxSxGxK, causal=causal,
                                                   segment_ids=segment_ids)
    key = (jax.default_backend(), implementation, reason)
    if key not in _logged:
      _logged.add(key)
      _log.info('attention: auto chose %s on %s (%s)', implementation, key[0], reason)
  return IMPLEMENTATIONS[implementation](q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                         segment_ids=segment_ids, sm_scale=sm_scale)
