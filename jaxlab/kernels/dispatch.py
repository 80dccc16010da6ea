"""Attention dispatch: the one table of backends and the one chooser.

BACKENDS maps model.attention's names (xla | cudnn | pallas | splash | tokamax) to a
`Backend`: its dense function (the reference's signature), `unsupported(call) -> reason |
None` (static shapes, dtypes, mask and target only), and ring attention's per-block kernel
for the call's chip -- or, for a backend without one, the reason it has none. AUTO gives,
per platform, the order `auto` tries; under mesh.context > 1 the same order less the
backends without a block. `choose` is the one chooser for both.

The model makes one call, `attend`: ring attention over the 'context' mesh axis when the
sequence is split (each block by the chosen backend's kernel), else the XLA reference
(which XLA partitions itself) or a fused kernel run per shard (batch and heads split).
"What runs on a v5e with mesh.context=2 and auto?" is `choose(call, ring=True)` on a
Call for platform 'tpu': the table below answers it.

The platform is the one the step is traced for (jaxlab.kernels.target: the mesh's
devices, also a TPU topology compiled for from a CPU host). Each distinct auto choice is
logged once at INFO on 'jaxlab.kernels'.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxlab.config.types import ConfigError
from jaxlab.kernels import splash
from jaxlab.kernels import tokamax_attention as tk
from jaxlab.kernels.flash import flash_attention
from jaxlab.kernels.reference import reference_attention
from jaxlab.kernels.ring_attention import (IDS_NAMES, KV_NAMES, QKV_NAMES, XLA_BLOCKS,
                                           BlockAttention, context_size, ring_attention)
from jaxlab.kernels.ring_blocks import PALLAS_BLOCKS, splash_blocks
from jaxlab.kernels.target import target_device
from jaxlab.parallel.rules import shard_map_logical


@dataclasses.dataclass(frozen=True)
class Call:
  """What a backend's check sees of a call: static shapes, dtype, mask, target device."""
  q: Any                   # q_BxTxHxK (an array or anything with .shape / .dtype)
  k: Any                   # k_BxSxGxK
  causal: bool
  segment_ids: Any         # None, a BxT array, or a (q_ids, kv_ids) pair
  platform: str            # 'cpu' | 'gpu' | 'tpu' (jaxlab.kernels.target)
  device_kind: str


# ------------------------------------------------------------------ the backends

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


def pallas_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
                     causal: bool = True, segment_ids: Any = None,
                     sm_scale: float | None = None) -> jax.Array:
  """The fused Pallas kernel (jaxlab.kernels.flash) with default blocks."""
  return flash_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                         segment_ids=segment_ids, sm_scale=sm_scale)


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


def _always(call: Call) -> None:
  return None


@dataclasses.dataclass(frozen=True)
class Backend:
  dense: Callable                              # the reference's signature
  unsupported: Callable[[Call], str | None]    # why it cannot run a call (or a ring chunk)
  block: Callable[[Call], BlockAttention] | None = None   # ring attention's per-block kernel
  no_block: str = ''                           # why there is none (block is None)


BACKENDS = {
    'xla': Backend(reference_attention, _always, lambda call: XLA_BLOCKS),
    'cudnn': Backend(cudnn_attention, cudnn_unsupported, no_block=(
        "cuDNN's fused attention (jax.nn.dot_product_attention) returns no log-sum-exp and "
        "its backward cannot take the whole row's")),
    # interpret mode off accelerators
    'pallas': Backend(pallas_attention, pallas_unsupported, lambda call: PALLAS_BLOCKS),
    # interpret mode off TPU; one block object per chip (its block size)
    'splash': Backend(splash_attention, splash_unsupported,
                      lambda call: splash_blocks(call.device_kind)),
    'tokamax': Backend(tokamax_attention, tokamax_unsupported, no_block=(
        "tokamax's public function returns no log-sum-exp; its internal ops could give one "
        "and take the whole row's output in their backward, but each implementation keeps "
        "its own softmax statistics (the Triton kernel's may omit the max or be in base 2, "
        "by its config), and its fused kernels run only on a GPU, where this block is not "
        "yet written or tested")),
}
CHOICES = (*BACKENDS, 'auto')
# auto: the first backend of the target platform's list that can run the call (under
# mesh.context > 1: that has a block and can run the chunks); XLA when none can.
# GPU: tokamax's fused kernels, cuDNN, then jaxlab's Pallas kernel (Triton, deprecated
# upstream).
AUTO = {'cpu': ('xla',), 'gpu': ('tokamax', 'cudnn', 'pallas'), 'tpu': ('splash', 'pallas')}
_log = logging.getLogger('jaxlab.kernels')
_logged: set = set()


class AttentionUnsupported(ConfigError):
  """model.attention names a backend that cannot run the model's attention call."""


# ------------------------------------------------------------------ the chooser

def unsupported(name: str, call: Call, ring: bool = False) -> str | None:
  """Why backend `name` cannot run `call` (with ring=True: the blocks of a ring, `call`
  being one chunk: `chunk_call`), or None."""
  backend = BACKENDS[name]
  if ring and backend.block is None:
    return backend.no_block
  return backend.unsupported(call)


def choose(call: Call, ring: bool = False) -> tuple[str, str]:
  """auto's (backend, reason) from static information only (target, shapes, dtypes)."""
  reasons = []
  for name in AUTO.get(call.platform, ('pallas',)):
    why = unsupported(name, call, ring)
    if why is None:
      return name, '; '.join(reasons) or f'first choice on {call.platform}'
    reasons.append(f'{name}: {why}')
  return 'xla', '; '.join(reasons)


def _resolve(implementation: str, call: Call, ring: bool, where: str) -> str:
  """model.attention -> the backend that runs `call`: auto's choice (logged once), or the
  named backend when it can (AttentionUnsupported with the reason when it cannot)."""
  if implementation not in CHOICES:
    raise ValueError(f'attention implementation {implementation!r} is not known; allowed: '
                     f'{", ".join(map(repr, CHOICES))}')
  if implementation == 'auto':
    name, reason = choose(call, ring)
    key = (call.platform, name, reason, ring)
    if key not in _logged:
      _logged.add(key)
      _log.info('%s: auto chose %s on %s (%s)', 'ring attention' if ring else 'attention',
                name, call.platform, reason)
    return name
  why = unsupported(implementation, call, ring)
  if why is not None:
    others = ', '.join(repr(c) for c in CHOICES if c != implementation and
                       not (ring and c in BACKENDS and BACKENDS[c].block is None))
    raise AttentionUnsupported(f'attention implementation {implementation!r} '
                               f'(model.attention) cannot run {where}: {why}; use one of {others}')
  return implementation


def check_ring_choice(implementation: str) -> None:
  """A config check (jaxlab.train.runnable.resolve): under mesh.context > 1, model.attention must
  name a backend with a ring block (or auto, which picks one)."""
  backend = BACKENDS.get(implementation)
  if backend is not None and backend.block is None:
    raise AttentionUnsupported(
        f'model.attention={implementation!r} with mesh.context > 1: ring attention has no '
        f'{implementation} block ({backend.no_block}); use model.attention=pallas, splash '
        '(TPU), xla or auto')


# ------------------------------------------------------------------ entry points

def attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, *,
              causal: bool = True, segment_ids: Any = None, sm_scale: float | None = None,
              implementation: str = 'xla') -> jax.Array:
  """Dense attention by backend `implementation` (a name of BACKENDS or 'auto'), resolved
  at trace time for the target device. A named backend that cannot run the call raises
  AttentionUnsupported with the reason."""
  call = Call(q_BxTxHxK, k_BxSxGxK, bool(causal), segment_ids, *target_device())
  name = _resolve(implementation, call, False, 'this call')
  return BACKENDS[name].dense(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                              segment_ids=segment_ids, sm_scale=sm_scale)


def chunk_call(q_BxTxHxK, k_BxTxGxK, *, n: int, causal: bool = True,
               segment_ids: Any = None) -> Call:
  """What a block of a ring over n devices sees: one chunk (T / 2n tokens) of queries
  against one of keys, for the platform traced for."""
  (B, T, H, K), G = q_BxTxHxK.shape, k_BxTxGxK.shape[2]
  c = T // (2 * n)
  ids = None if segment_ids is None else jax.ShapeDtypeStruct((B, c), jnp.int32)
  return Call(jax.ShapeDtypeStruct((B, c, H, K), q_BxTxHxK.dtype),
              jax.ShapeDtypeStruct((B, c, G, K), k_BxTxGxK.dtype), bool(causal), ids,
              *target_device())


def ring_block(implementation: str, q_BxTxHxK, k_BxTxGxK, *, n: int, causal: bool = True,
               segment_ids: Any = None) -> BlockAttention:
  """The BlockAttention for model.attention=`implementation` in a ring over n devices
  (global q / k, resolved for the platform traced for)."""
  call = chunk_call(q_BxTxHxK, k_BxTxGxK, n=n, causal=causal, segment_ids=segment_ids)
  name = _resolve(implementation, call, True, f"ring attention's blocks (mesh.context={n}, "
                  f'chunks of {call.q.shape[1]} tokens)')
  return BACKENDS[name].block(call)


def attend(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, *,
           segment_ids_BxT: Any, sm_scale: float, implementation: str) -> jax.Array:
  """The model's causal self-attention over q / k / v carrying their logical axes (batch,
  seq, heads or kv_heads, kv), on the mesh the step traces under."""
  n = context_size()
  if n > 1:       # mesh.context > 1: the sequence is split over devices, ring attention
    block = ring_block(implementation, q_BxTxHxK, k_BxTxGxK, n=n, segment_ids=segment_ids_BxT)
    return ring_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, causal=True,
                          segment_ids=segment_ids_BxT, sm_scale=sm_scale, block=block)

  def dense(q, k, v, ids):
    return attention(q, k, v, causal=True, segment_ids=ids, sm_scale=sm_scale,
                     implementation=implementation)
  args = (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT)
  if implementation == 'xla':   # XLA partitions the einsums itself
    return dense(*args)
  # fused kernels run per shard: batch and heads split
  return shard_map_logical(dense, args, (QKV_NAMES, KV_NAMES, KV_NAMES, IDS_NAMES), QKV_NAMES)
