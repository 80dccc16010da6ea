"""Ring attention: the sequence split over the 'context' mesh axis; each device keeps its
queries and passes its K/V around the ring (lax.ppermute), merging the blockwise results
with the log-sum-exp rule (Liu et al. 2023, "Ring Attention with Blockwise Transformers";
docs/long_context.md).

Layouts (jaxlab.kernels.ring_layout): the caller's sequence is already in the layout's
token order (the model permutes tokens once, before the first layer); under a causal mask
the default zigzag layout gives every device the same work. A device's local sequence is
two chunks of c tokens. At ring step s device i holds the K/V (and key segment ids) of
device j = (i - s) mod n, and runs the four (query chunk, key chunk) blocks through
lax.switch on their kind: SKIP (fully masked: nothing runs), FULL, or DIAGONAL (causal).
Every device takes part in all n - 1 ppermutes whatever it skips, so the collectives stay
matched. The next K/V's ppermute is issued before the current step's blocks, so XLA may
overlap the transfer with the compute.

Backward (custom_vjp, not autodiff through the loop, so no per-step residuals are kept):
the forward saves only q, k, v, the output and its log-sum-exp. The backward rotates K/V
again, together with dK/dV accumulators that travel with them; each block adds its dQ
locally and its dK/dV into the travelling accumulators, recomputing the probabilities
from the *final* log-sum-exp and delta = rowsum(dO * O) (FlashAttention-2's backward), so
per-block contributions sum to the exact gradient. After n steps the accumulators are one
hop from home; one more ppermute brings them back.

Per-block attention is a parameter, a `BlockAttention` (forward giving (out, lse), and a
backward taking the final lse and delta). XLA_BLOCKS is the einsum reference (GQA by
grouping the query heads, never repeating K/V); the fused blocks (the Pallas flash kernel,
splash) and the choice of one for model.attention are in jaxlab.kernels.ring_blocks.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxlab.kernels.masks import attention_mask, segment_pair
from jaxlab.kernels.ring_layout import (DIAGONAL, FULL, SKIP, block_kind, check_layout,
                                        chunks)
from jaxlab.parallel.rules import shard_map_logical

AXIS = 'context'          # the mesh axis the logical 'seq' axis maps to (parallel/rules.py)
QKV_NAMES = ('batch', 'seq', 'heads', 'kv')
KV_NAMES = ('batch', 'seq', 'kv_heads', 'kv')
IDS_NAMES = ('batch', 'seq')


class BlockAttention(NamedTuple):
  """Attention of one query block against one key block (float32 results).
  forward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids_BxT, kv_ids_BxS, causal, sm_scale)
    -> (out_BxTxHxK, lse_BxHxT); a row with no visible key: out 0, lse -inf.
  backward(q, k, v, q_ids, kv_ids, dout_BxTxHxK, lse_BxHxT, delta_BxHxT, causal, sm_scale)
    -> (dq_BxTxHxK, dk_BxSxGxK, dv_BxSxGxK), with lse and delta those of the whole row.
  Ids are None when there are no segments."""
  name: str
  forward: Callable
  backward: Callable


def _logits(q_BxTxHxK, k_BxSxGxK, q_ids, kv_ids, causal, sm_scale):
  """(scaled logits BxGxRxTxS in float32, visible mask Bx1x1xTxS or None)."""
  B, T, H, K = q_BxTxHxK.shape
  S, G = k_BxSxGxK.shape[1], k_BxSxGxK.shape[2]
  q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, G, H // G, K)
  logits = jnp.einsum('btgrk,bsgk->bgrts', q_BxTxGxRxK, k_BxSxGxK,
                      preferred_element_type=jnp.float32) * sm_scale
  ids = None if q_ids is None else (q_ids, kv_ids)
  mask_BxTxS = attention_mask(T, S, causal=causal, segment_ids=ids)
  return logits, (None if mask_BxTxS is None else mask_BxTxS[:, None, None])


def _xla_forward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, causal, sm_scale):
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxSxGxK.shape[2]
  s_BxGxRxTxS, mask = _logits(q_BxTxHxK, k_BxSxGxK, q_ids, kv_ids, causal, sm_scale)
  if mask is not None:
    s_BxGxRxTxS = jnp.where(mask, s_BxGxRxTxS, -jnp.inf)
  m_BxGxRxT = jnp.max(s_BxGxRxTxS, axis=-1)
  m_BxGxRxT = jnp.where(jnp.isfinite(m_BxGxRxT), m_BxGxRxT, 0.0)   # empty rows: p = 0
  p_BxGxRxTxS = jnp.exp(s_BxGxRxTxS - m_BxGxRxT[..., None])
  l_BxGxRxT = jnp.sum(p_BxGxRxTxS, axis=-1)
  lse_BxGxRxT = jnp.where(l_BxGxRxT > 0, m_BxGxRxT + jnp.log(l_BxGxRxT), -jnp.inf)
  p_BxGxRxTxS = p_BxGxRxTxS / jnp.where(l_BxGxRxT > 0, l_BxGxRxT, 1.0)[..., None]
  out = jnp.einsum('bgrts,bsgk->btgrk', p_BxGxRxTxS.astype(v_BxSxGxK.dtype), v_BxSxGxK,
                   preferred_element_type=jnp.float32)
  return out.reshape(B, T, H, K), lse_BxGxRxT.reshape(B, H, T)


def _xla_backward(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_ids, kv_ids, do_BxTxHxK, lse_BxHxT,
                  delta_BxHxT, causal, sm_scale):
  B, T, H, K = q_BxTxHxK.shape
  G = k_BxSxGxK.shape[2]
  R = H // G
  s_BxGxRxTxS, mask = _logits(q_BxTxHxK, k_BxSxGxK, q_ids, kv_ids, causal, sm_scale)
  lse_BxGxRxT = lse_BxHxT.reshape(B, G, R, T)
  lse_BxGxRxT = jnp.where(jnp.isneginf(lse_BxGxRxT), jnp.inf, lse_BxGxRxT)  # empty: p = 0
  p_BxGxRxTxS = jnp.exp(s_BxGxRxTxS - lse_BxGxRxT[..., None])
  if mask is not None:
    p_BxGxRxTxS = jnp.where(mask, p_BxGxRxTxS, 0.0)
  f32 = jnp.float32
  do_BxTxGxRxK = do_BxTxHxK.reshape(B, T, G, R, K).astype(f32)
  dv_BxSxGxK = jnp.einsum('bgrts,btgrk->bsgk', p_BxGxRxTxS, do_BxTxGxRxK)
  dp_BxGxRxTxS = jnp.einsum('btgrk,bsgk->bgrts', do_BxTxGxRxK, v_BxSxGxK.astype(f32))
  ds_BxGxRxTxS = p_BxGxRxTxS * (dp_BxGxRxTxS - delta_BxHxT.reshape(B, G, R, T)[..., None])
  dq = jnp.einsum('bgrts,bsgk->btgrk', ds_BxGxRxTxS, k_BxSxGxK.astype(f32)) * sm_scale
  dk_BxSxGxK = jnp.einsum('bgrts,btgrk->bsgk', ds_BxGxRxTxS,
                          q_BxTxHxK.reshape(B, T, G, R, K).astype(f32)) * sm_scale
  return dq.reshape(B, T, H, K), dk_BxSxGxK, dv_BxSxGxK


XLA_BLOCKS = BlockAttention('xla', _xla_forward, _xla_backward)


@dataclasses.dataclass(frozen=True)
class RingCfg:
  n: int                  # devices on the ring
  layout: str
  causal: bool
  sm_scale: float
  block: BlockAttention
  axis: str = AXIS


def _halves(x, c, axis=1):
  """The two local chunks of x along its token axis."""
  if x is None:
    return None, None
  return lax.slice_in_dim(x, 0, c, axis=axis), lax.slice_in_dim(x, c, 2 * c, axis=axis)


def _rotate(cfg: RingCfg, tree):
  """Every device sends to the next one on the ring (device j -> j + 1 mod n)."""
  perm = [(j, (j + 1) % cfg.n) for j in range(cfg.n)]
  return jax.tree.map(lambda x: None if x is None else lax.ppermute(x, cfg.axis, perm), tree)


def _device(cfg: RingCfg):
  return lax.axis_index(cfg.axis) if cfg.n > 1 else 0


def _kinds(cfg: RingCfg, step):
  """kinds[a][b] of (my query chunk a, visiting key chunk b) at ring step `step`."""
  i = _device(cfg)
  mine = chunks(cfg.layout, cfg.n, i)
  theirs = chunks(cfg.layout, cfg.n, (i - step) % cfg.n)
  return [[block_kind(qa, kb, cfg.causal) for kb in theirs] for qa in mine]


def _switch(kind, skip, full, diagonal):
  """Runs the branch for `kind` (a static FULL under no causal mask: no switch at all)."""
  if isinstance(kind, int):
    return (skip, full, diagonal)[kind]()
  return lax.switch(kind, (skip, full, diagonal))


def _merge(o_BxTxHxK, lse_BxHxT, ob_BxTxHxK, lseb_BxHxT):
  """Combines two normalised partial attentions by their log-sum-exps."""
  new_BxHxT = jnp.logaddexp(lse_BxHxT, lseb_BxHxT)
  safe_BxHxT = jnp.where(jnp.isneginf(new_BxHxT), 0.0, new_BxHxT)
  w = jnp.swapaxes(jnp.exp(lse_BxHxT - safe_BxHxT), 1, 2)[..., None]
  wb = jnp.swapaxes(jnp.exp(lseb_BxHxT - safe_BxHxT), 1, 2)[..., None]
  return o_BxTxHxK * w + ob_BxTxHxK * wb, new_BxHxT


def _forward_step(cfg: RingCfg, step, q2, qid2, acc, kv):
  """Adds the blocks of ring step `step` (visiting K/V `kv`) into acc = (o2, lse2)."""
  k2, v2, kid2 = kv
  kinds = _kinds(cfg, step)
  o2, lse2 = list(acc[0]), list(acc[1])
  for a in range(2):
    for b in range(2):
      args = (q2[a], k2[b], v2[b], qid2[a], kid2[b])
      B, c, H, K = q2[a].shape

      def skip():
        return (jnp.zeros((B, c, H, K), jnp.float32), jnp.full((B, H, c), -jnp.inf))
      ob, lseb = _switch(kinds[a][b], skip,
                         lambda: cfg.block.forward(*args, False, cfg.sm_scale),
                         lambda: cfg.block.forward(*args, True, cfg.sm_scale))
      o2[a], lse2[a] = _merge(o2[a], lse2[a], ob, lseb)
  return tuple(o2), tuple(lse2)


def _ring_forward(cfg: RingCfg, q, k, v, q_ids, kv_ids):
  """Local shards (layout order) -> (out_BxTxHxK float32, lse_BxHxT)."""
  B, T, H, K = q.shape
  c = T // 2
  q2, qid2 = _halves(q, c), _halves(q_ids, c)
  acc = ((jnp.zeros((B, c, H, K), jnp.float32),) * 2, (jnp.full((B, H, c), -jnp.inf),) * 2)
  kv = (_halves(k, c), _halves(v, c), _halves(kv_ids, c))

  def body(step, carry):
    acc, kv = carry
    incoming = _rotate(cfg, kv)       # issued first: the transfer can overlap the blocks
    return _forward_step(cfg, step, q2, qid2, acc, kv), incoming
  if cfg.n > 1:
    acc, kv = lax.fori_loop(0, cfg.n - 1, body, (acc, kv))
  o2, lse2 = _forward_step(cfg, cfg.n - 1, q2, qid2, acc, kv)
  return jnp.concatenate(o2, axis=1), jnp.concatenate(lse2, axis=2)


def _backward_step(cfg: RingCfg, step, res2, grads):
  """Adds ring step `step`'s block gradients: dq2 locally, dk2 / dv2 travelling."""
  q2, qid2, do2, lse2, delta2, (k2, v2, kid2) = res2
  dq2, dk2, dv2 = (list(g) for g in grads)
  kinds = _kinds(cfg, step)
  for a in range(2):
    for b in range(2):
      args = (q2[a], k2[b], v2[b], qid2[a], kid2[b], do2[a], lse2[a], delta2[a])

      def skip():
        return (jnp.zeros(q2[a].shape, jnp.float32), jnp.zeros(k2[b].shape, jnp.float32),
                jnp.zeros(v2[b].shape, jnp.float32))
      dq, dk, dv = _switch(kinds[a][b], skip,
                           lambda: cfg.block.backward(*args, False, cfg.sm_scale),
                           lambda: cfg.block.backward(*args, True, cfg.sm_scale))
      dq2[a], dk2[b], dv2[b] = dq2[a] + dq, dk2[b] + dk, dv2[b] + dv
  return tuple(dq2), tuple(dk2), tuple(dv2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg: RingCfg, q, k, v, q_ids, kv_ids):
  return _ring_forward(cfg, q, k, v, q_ids, kv_ids)[0].astype(q.dtype)


def _ring_fwd(cfg: RingCfg, q, k, v, q_ids, kv_ids):
  out, lse = _ring_forward(cfg, q, k, v, q_ids, kv_ids)
  out = out.astype(q.dtype)
  return out, (q, k, v, q_ids, kv_ids, out, lse)


def _ring_bwd(cfg: RingCfg, res, do):
  q, k, v, q_ids, kv_ids, out, lse = res
  c = q.shape[1] // 2
  delta = jnp.einsum('bthk,bthk->bht', do.astype(jnp.float32), out.astype(jnp.float32))
  fixed = (_halves(q, c), _halves(q_ids, c), _halves(do, c), _halves(lse, c, axis=2),
           _halves(delta, c, axis=2))
  zeros = lambda x: tuple(jnp.zeros(h.shape, jnp.float32) for h in _halves(x, c))
  grads = (zeros(q), zeros(k), zeros(v))
  kv = (_halves(k, c), _halves(v, c), _halves(kv_ids, c))

  def body(step, carry):
    grads, kv = carry
    grads = _backward_step(cfg, step, fixed + (kv,), grads)
    kv, dk2, dv2 = _rotate(cfg, (kv, grads[1], grads[2]))   # accumulators travel with K/V
    return (grads[0], dk2, dv2), kv
  if cfg.n > 1:
    grads, kv = lax.fori_loop(0, cfg.n - 1, body, (grads, kv))
  dq2, dk2, dv2 = _backward_step(cfg, cfg.n - 1, fixed + (kv,), grads)
  if cfg.n > 1:
    dk2, dv2 = _rotate(cfg, (dk2, dv2))   # one hop from home after n steps
  cat = lambda pair, like: jnp.concatenate(pair, axis=1).astype(like.dtype)
  return cat(dq2, q), cat(dk2, k), cat(dv2, v), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention_shard(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, *, n: int, causal: bool = True,
                         segment_ids: Any = None, sm_scale: float | None = None,
                         layout: str = 'zigzag', block: BlockAttention = XLA_BLOCKS,
                         axis: str = AXIS) -> jax.Array:
  """Per-shard ring attention, called inside shard_map over `axis` (of size n): the
  local q / k / v / segment ids hold this device's 2 chunks in the layout's order.
  segment_ids: a local BxT array (self-attention) or None. Returns BxTxHxK in q's dtype."""
  B, T, H, K = q_BxTxHxK.shape
  if T % 2:
    raise ValueError(f'ring attention: the local sequence T={T} must hold two equal chunks')
  if H % k_BxTxGxK.shape[2]:
    raise ValueError(f'query heads H={H} must be a multiple of kv heads '
                     f'G={k_BxTxGxK.shape[2]}')
  q_ids, kv_ids = segment_pair(segment_ids, T, k_BxTxGxK.shape[1])
  cfg = RingCfg(n=n, layout=layout, causal=bool(causal),
                sm_scale=float(K ** -0.5 if sm_scale is None else sm_scale), block=block,
                axis=axis)
  return _ring(cfg, q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, q_ids, kv_ids)


def context_size() -> int:
  """Devices on the 'context' axis of the mesh the step traces under (1 outside one)."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else int(dict(mesh.shape).get(AXIS, 1))


def ring_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, *, causal: bool = True,
                   segment_ids: Any = None, sm_scale: float | None = None,
                   layout: str = 'zigzag', block: BlockAttention = XLA_BLOCKS) -> jax.Array:
  """Global q / k / v (tokens in the layout's order, see ring_layout.to_layout) -> the
  attention output in the same order, run shard by shard over the mesh the step traces
  under (parallel.rules.activation_rules): batch over data x fsdp, heads over tensor, the
  sequence over 'context'. segment_ids: a global BxT array or None."""
  n = context_size()
  check_layout(layout, q_BxTxHxK.shape[1], n)
  fn = functools.partial(ring_attention_shard, n=n, causal=causal, sm_scale=sm_scale,
                         layout=layout, block=block)

  def shard(q, k, v, ids):
    return fn(q, k, v, segment_ids=ids)
  return shard_map_logical(shard, (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids),
                           (QKV_NAMES, KV_NAMES, KV_NAMES, IDS_NAMES), QKV_NAMES)
