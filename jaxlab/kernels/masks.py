"""Masks shared by every attention implementation: segment ids (one BxT array for
self-attention, or a (q_ids_BxT, kv_ids_BxS) pair) and the dense boolean mask of the
reference (causal: query t sees keys s <= t, top-left aligned when T != S)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def segment_pair(segment_ids: Any, T: int, S: int):
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
  q_ids_BxT, kv_ids_BxS = segment_pair(segment_ids, T, S)
  if q_ids_BxT is not None:
    same_BxTxS = q_ids_BxT[:, :, None] == kv_ids_BxS[:, None, :]
    mask_BxTxS = same_BxTxS if mask_BxTxS is None else mask_BxTxS & same_BxTxS
  return mask_BxTxS
