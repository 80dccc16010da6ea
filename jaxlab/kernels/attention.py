"""Attention: one reference implementation (XLA einsums) and a dispatcher over a table of
backends (BACKENDS: xla | cudnn | pallas | splash | tokamax, plus auto;
the tokamax backend in tokamax_attention.py). Each backend is a function
with the reference's signature and an `unsupported(call) -> reason | None` check, so a
new backend is one entry; `auto` takes the first backend of AUTO[platform] that can run
the call, for the platform the step is traced for (jaxlab.kernels.target: the mesh's
devices, also a TPU topology compiled for from a CPU host).

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

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxlab.config_types import ConfigError
from jaxlab.kernels import splash
from jaxlab.kernels.masks import attention_mask
from jaxlab.kernels.target import target_device
from jaxlab.kernels import tokamax_attention as tk


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


@dataclasses.dataclass(frozen=True)
class Call:
  """What a backend's check sees of a call: static shapes, dtype, mask, target device."""
  q: Any                   # q_BxTxHxK (an array or anything with .shape / .dtype)
  k: Any                   # k_BxSxGxK
  causal: bool
  segment_ids: Any         # None, a BxT array, or a (q_ids, kv_ids) pair
  platform: str            # 'cpu' | 'gpu' | 'tpu' (jaxlab.kernels.target)
  device_kind: str


def pallas_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool = True, segment_ids: Any = None,
                     sm_scale: float | None = None) -> jax.Array:
  """The fused Pallas kernel (jaxlab.kernels.flash_attention) with default blocks."""
  from jaxlab.kernels.flash_attention import flash_attention   # it imports this module
  return flash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                         segment_ids=segment_ids, sm_scale=sm_scale)


def cudnn_unsupported(call: Call) -> str | None:
  """Why cuDNN's fused attention cannot give the reference answer here, or None."""
  if call.platform != 'gpu':
    return f'cuDNN needs a CUDA GPU, the target platform is {call.platform}'
  if call.segment_ids is not None:
    # jax.nn.dot_product_attention's cudnn path takes only per-row lengths (one document
    # per row); a dense mask would not zero queries that see no key, as the reference does.
    return 'segment ids (packed documents) are not supported by the cuDNN path'
  if call.q.dtype not in (jnp.bfloat16, jnp.float16):
    return f'cuDNN attention needs bfloat16 or float16 inputs, got {call.q.dtype}'
  K = call.q.shape[-1]
  if K > 128 or K % 8:
    return f'cuDNN attention needs head_dim <= 128 and a multiple of 8, got {K}'
  T, S = call.q.shape[1], call.k.shape[1]
  if call.causal and T != S:
    return f'causal cross-attention (T={T} != S={S}) is not checked against the reference'
  return None


def cudnn_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                    causal: bool = True, segment_ids: Any = None,
                    sm_scale: float | None = None) -> jax.Array:
  """jax.nn.dot_product_attention(implementation='cudnn'); GQA is native there."""
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, scale=sm_scale,
                                      is_causal=causal, implementation='cudnn')


def pallas_unsupported(call: Call) -> str | None:
  """On a GPU, Triton (the Pallas kernel's lowering there) needs power-of-two block shapes
  >= 16, and the kernel's blocks span the whole head dim."""
  K = call.q.shape[-1]
  if call.platform == 'gpu' and (K < 16 or K & (K - 1)):
    return f'head_dim {K} is not a power of two >= 16 (Triton block shapes)'
  return None


def tokamax_unsupported(call: Call) -> str | None:
  """On a GPU, a fused tokamax kernel (Mosaic GPU, Triton) must take the call: tokamax's
  own XLA fallback is what the 'xla' backend is already. On the CPU its xla
  implementation runs (how the tests check it); no other platform."""
  return tk.unsupported(call.q, call.k, causal=call.causal, segment_ids=call.segment_ids,
                        platform=call.platform, fused_only=call.platform == 'gpu')


def tokamax_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                      causal: bool = True, segment_ids: Any = None,
                      sm_scale: float | None = None) -> jax.Array:
  """tokamax.dot_product_attention's kernels for the target platform (tokamax_attention.py)."""
  return tk.tokamax_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                              segment_ids=segment_ids, sm_scale=sm_scale,
                              platform=target_device()[0])


def splash_unsupported(call: Call) -> str | None:
  if call.platform == 'gpu':
    return 'splash is a TPU kernel (on a GPU it would only run interpreted)'
  return splash.unsupported(call.q, call.k, segment_ids=call.segment_ids)


def splash_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool = True, segment_ids: Any = None,
                     sm_scale: float | None = None) -> jax.Array:
  """JAX's TPU splash attention (jaxlab.kernels.splash) with the target chip's blocks."""
  return splash.splash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                 segment_ids=segment_ids, sm_scale=sm_scale)


@dataclasses.dataclass(frozen=True)
class Backend:
  fn: Callable                                 # the reference's signature
  unsupported: Callable[[Call], str | None]    # why it cannot run a call, or None


def _always(call: Call) -> None:
  return None


BACKENDS = {
    'xla': Backend(reference_attention, _always),
    'cudnn': Backend(cudnn_attention, cudnn_unsupported),
    'pallas': Backend(pallas_attention, pallas_unsupported),   # interpret mode off accelerators
    'splash': Backend(splash_attention, splash_unsupported),   # interpret mode off TPU
    'tokamax': Backend(tokamax_attention, tokamax_unsupported),
}
CHOICES = (*BACKENDS, 'auto')
# auto: the first backend of the target platform's list that can run the call.
# GPU: tokamax's fused kernels, cuDNN, then jaxlab's Pallas kernel (Triton, deprecated
# upstream); XLA when none can.
AUTO = {'cpu': ('xla',), 'gpu': ('tokamax', 'cudnn', 'pallas'), 'tpu': ('splash', 'pallas')}
_log = logging.getLogger('jaxlab.kernels')
_logged: set = set()


class AttentionUnsupported(ConfigError):
  """model.attention names a backend that cannot run the model's attention call."""


def choose_implementation(call: Call) -> tuple[str, str]:
  """auto's (choice, reason) from static information only (target, shapes, dtypes)."""
  order = AUTO.get(call.platform, ('pallas',))
  reasons = []
  for name in order:
    why = BACKENDS[name].unsupported(call)
    if why is None:
      if not reasons:
        return name, f'first choice on {call.platform}'
      return name, '; '.join(reasons)
    reasons.append(f'{name}: {why}')
  return 'xla', '; '.join(reasons)


def attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
              causal: bool = True, segment_ids: Any = None, sm_scale: float | None = None,
              implementation: str = 'xla') -> jax.Array:
  """Dispatches to a backend of BACKENDS or 'auto' (resolved at trace time for the target
  device; each distinct choice is logged once at INFO on 'jaxlab.kernels'). A named
  backend that cannot run the call raises AttentionUnsupported with the reason."""
  if implementation not in CHOICES:
    raise ValueError(f'attention implementation {implementation!r} is not known; allowed: '
                     f'{", ".join(map(repr, CHOICES))}')
  call = Call(q_BxTxHxK, k_BxSxGxK, bool(causal), segment_ids, *target_device())
  if implementation == 'auto':
    implementation, reason = choose_implementation(call)
    key = (call.platform, implementation, reason)
    if key not in _logged:
      _logged.add(key)
      _log.info('attention: auto chose %s on %s (%s)', implementation, call.platform, reason)
  else:
    why = BACKENDS[implementation].unsupported(call)
    if why is not None:
      others = ', '.join(repr(c) for c in CHOICES if c != implementation)
      raise AttentionUnsupported(
          f'attention implementation {implementation!r} (model.attention) cannot run this '
          f'call: {why}; use one of {others}')
  return BACKENDS[implementation].fn(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                                     segment_ids=segment_ids, sm_scale=sm_scale)
