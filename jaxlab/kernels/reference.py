"""The one attention reference: masked softmax attention with XLA einsums. Every fused
backend (jaxlab.kernels.dispatch) is tested against it.

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

from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.kernels.masks import attention_mask


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
