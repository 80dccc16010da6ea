"""Attention: one reference implementation (XLA einsums) and a dispatcher
(xla | cudnn | pallas | tokamax | auto; the Pallas kernel lives in flash_attention.py,
the tokamax backend in tokamax_attention.py).

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

from jaxlab.kernels.masks import attention_mask
from jaxlab.kernels.tokamax_attention import tokamax_attention
from jaxlab.kernels.tokamax_attention import unsupported as tokamax_unsupported


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
  # The R query heads of kv head g, at all T positions, are Q = R * T rows of one matrix
  # per (batch, kv head): one matmul against that head's keys. (A 5-D 'btgrk,bsgk->bgrts'
  # einsum made XLA's CPU dots copy the TxS probabilities into a second layout, forward
  # and backward: this form's fwd + bwd is 1.45-1.5x faster at B 8, T 256, K 64.)
  q_BxGxQxK = q_BxTxHxK.reshape(B, T, G, R, K).transpose(0, 2, 3, 1, 4).reshape(B, G, R * T, K)
  logits_BxGxQxS = jnp.einsum('bgqk,bsgk->bgqs', q_BxGxQxK, k_BxSxGxK,
                              preferred_element_type=jnp.float32)
  logits_BxGxQxS = logits_BxGxQxS.astype(jnp.float32) * sm_scale
  mask_BxTxS = attention_mask(T, S, causal=causal, segment_ids=segment_ids)
  if mask_BxTxS is None:
    probs_BxGxQxS = jax.nn.softmax(logits_BxGxQxS, axis=-1)
  else:
    Bm = mask_BxTxS.shape[0]   # 1 for a causal mask alone
    mask_Bx1xQxS = jnp.broadcast_to(mask_BxTxS[:, None, None],
                                    (Bm, 1, R, T, S)).reshape(Bm, 1, R * T, S)
    # A finite fill keeps fully-masked rows NaN-free (uniform before the where below),
    # and the where zeroes them, so such queries output 0. Only separate (q, kv) ids can
    # mask a whole row: with one id array a query sees itself (and causal top-left
    # aligned keeps key 0), and exp(finfo.min - max) is exactly 0 for masked keys, so
    # the second where (a pass over B*H*T*S, and another in the backward) is skipped.
    logits_BxGxQxS = jnp.where(mask_Bx1xQxS, logits_BxGxQxS, jnp.finfo(jnp.float32).min)
    probs_BxGxQxS = jax.nn.softmax(logits_BxGxQxS, axis=-1)
    if isinstance(segment_ids, (tuple, list)):
      probs_BxGxQxS = jnp.where(mask_Bx1xQxS, probs_BxGxQxS, 0.0)
  out_BxGxQxK = jnp.einsum('bgqs,bsgk->bgqk', probs_BxGxQxS.astype(v_BxSxGxK.dtype), v_BxSxGxK)
  out_BxTxHxK = out_BxGxQxK.reshape(B, G, R, T, K).transpose(0, 3, 1, 2, 4).reshape(B, T, H, K)
  return out_BxTxHxK.astype(q_BxTxHxK.dtype)


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


def pallas_gpu_unsupported(q_BxTxHxK) -> str | None:
  """Why jaxlab's Pallas kernel cannot run on a GPU, or None: its blocks span the whole
  head dim, and Triton (its GPU lowering) needs power-of-two block shapes >= 16."""
  K = q_BxTxHxK.shape[-1]
  if K < 16 or K & (K - 1):
    return f'head_dim {K} is not a power of two >= 16 (Triton block shapes)'
  return None


IMPLEMENTATIONS = {
    'xla': reference_attention,
    'cudnn': cudnn_attention,
    'pallas': pallas_attention,
    'tokamax': tokamax_attention,
}
CHOICES = (*IMPLEMENTATIONS, 'auto')
_log = logging.getLogger('jaxlab.kernels')
_logged: set = set()


def choose_implementation(q_BxTxHxK, k_BxSxGxK, *, causal: bool,
                          segment_ids: Any) -> tuple[str, str]:
  """auto's (choice, reason) from static information only (platform, shapes, dtypes).
  GPU: tokamax where one of its fused kernels takes the call, else cuDNN, else jaxlab's
  Pallas kernel (its Triton lowering is deprecated upstream), else XLA's reference."""
  platform = jax.default_backend()
  if platform == 'cpu':
    return 'xla', 'fused kernels only run interpreted on the CPU'
  if platform == 'gpu':
    why_tokamax = tokamax_unsupported(q_BxTxHxK, k_BxSxGxK, causal=causal,
                                      segment_ids=segment_ids, platform=platform,
                                      fused_only=True)
    if why_tokamax is None:
      return 'tokamax', 'a fused tokamax kernel takes this call'
    why = cudnn_unsupported(q_BxTxHxK, k_BxSxGxK, causal=causal, segment_ids=segment_ids)
    if why is None:
      return 'cudnn', f'tokamax: {why_tokamax}; cuDNN supports this shape, dtype and mask'
    why_pallas = pallas_gpu_unsupported(q_BxTxHxK)
    if why_pallas is None:
      return 'pallas', f'tokamax: {why_tokamax}; cudnn: {why}'
    return 'xla', f'tokamax: {why_tokamax}; cudnn: {why}; pallas: {why_pallas}'
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
