"""The Pallas kernel bodies of flash_attention.py: forward (online softmax), dq, and dk/dv.

Each works on keys x queries tiles (s_CxQ = k q^T), so per-query statistics (running
max, sum, logsumexp, delta) are 1 x block_q rows, the layout Mosaic TPU wants. `KernelCfg`
holds the static choices (scale, mask, blocks, true lengths, layout); the pallas_call
grids, BlockSpecs and the custom_vjp that runs these are in flash_attention.py.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class KernelCfg:
  sm_scale: float
  causal: bool
  block_q: int
  block_k: int
  seq_q: int               # true T (queries beyond it are padding)
  seq_k: int               # true S (keys beyond it are masked)
  interpret: bool
  layout: str              # 'bthk' (inputs as given) or 'bhtk' (transposed, for Mosaic TPU)


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _dot(a, b, contract_a: int = 1, contract_b: int = 0):
  """2-D matmul contracting the given dims (1, 0: a @ b; 1, 1: a @ b.T; 0, 0: a.T @ b)."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _block_mask(q_start, k_start, cfg: KernelCfg, q_ids_1xQ, kv_ids_Cx1):
  """Boolean block_k x block_q mask (keys down, queries across), None if all visible."""
  shape = (cfg.block_k, cfg.block_q)
  key_CxQ = k_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  mask = None
  if cfg.causal:
    mask = key_CxQ <= q_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  if round_up(cfg.seq_k, cfg.block_k) != cfg.seq_k:
    pad = key_CxQ < cfg.seq_k
    mask = pad if mask is None else mask & pad
  if q_ids_1xQ is not None:
    same = kv_ids_Cx1 == q_ids_1xQ
    mask = same if mask is None else mask & same
  return mask


def _kv_block_hi(i, cfg: KernelCfg, num_kv: int):
  """Number of k blocks q block i needs: causal stops at the diagonal."""
  if not cfg.causal:
    return num_kv
  return jnp.minimum(num_kv, ((i + 1) * cfg.block_q + cfg.block_k - 1) // cfg.block_k)


def _q_block_lo(j, cfg: KernelCfg):
  """First q block that sees k block j: causal starts at the diagonal."""
  if not cfg.causal:
    return 0
  return (j * cfg.block_k) // cfg.block_q


def _split(refs, n_in: int, has_seg: bool):
  ins, outs = list(refs[:n_in]), list(refs[n_in:])
  ids = (ins.pop(), ins.pop())[::-1] if has_seg else (None, None)
  return ins, ids, outs


def _counted(lo, hi, body, carry, count: bool):
  """fori_loop(lo, hi, body, carry), plus the number of iterations run when count."""
  if not count:
    return jax.lax.fori_loop(lo, hi, body, carry), None

  def step(j, c):
    n, inner = c
    return n + 1, body(j, inner)
  n, carry = jax.lax.fori_loop(lo, hi, step, (jnp.int32(0), carry))
  return carry, n


def _slice(start, size):
  return pl.ds(pl.multiple_of(start, size), size)


def fwd_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  (q_ref, k_ref, v_ref), (qid_ref, kid_ref), outs = _split(refs, 3 + 2 * has_seg, has_seg)
  o_ref, lse_ref = outs[:2]
  i = pl.program_id(2)
  q_QxK = q_ref[...]
  q_ids_1xQ = qid_ref[...] if has_seg else None
  bq, bk = cfg.block_q, cfg.block_k

  def body(j, carry):
    acc_KxQ, m_1xQ, l_1xQ = carry
    ks = _slice(j * bk, bk)
    k_CxK, v_CxK = k_ref[ks, :], v_ref[ks, :]
    s_CxQ = _dot(k_CxK, q_QxK, 1, 1) * cfg.sm_scale
    mask_CxQ = _block_mask(i * bq, j * bk, cfg, q_ids_1xQ, kid_ref[ks, :] if has_seg else None)
    if mask_CxQ is not None:
      s_CxQ = jnp.where(mask_CxQ, s_CxQ, -jnp.inf)
    m_new_1xQ = jnp.maximum(m_1xQ, jnp.max(s_CxQ, axis=0, keepdims=True))
    m_safe_1xQ = jnp.where(m_new_1xQ == -jnp.inf, 0.0, m_new_1xQ)  # nothing visible yet
    p_CxQ = jnp.exp(s_CxQ - m_safe_1xQ)                          # masked entries -> exactly 0
    alpha_1xQ = jnp.exp(m_1xQ - m_safe_1xQ)
    l_1xQ = alpha_1xQ * l_1xQ + jnp.sum(p_CxQ, axis=0, keepdims=True)
    acc_KxQ = acc_KxQ * alpha_1xQ + _dot(v_CxK, p_CxQ.astype(v_CxK.dtype), 0, 0)
    return acc_KxQ, m_new_1xQ, l_1xQ

  K = q_QxK.shape[1]
  init = (jnp.zeros((K, bq), jnp.float32), jnp.full((1, bq), -jnp.inf, jnp.float32),
          jnp.zeros((1, bq), jnp.float32))
  (acc_KxQ, m_1xQ, l_1xQ), n = _counted(0, _kv_block_hi(i, cfg, num_kv), body, init, count)
  seen_1xQ = l_1xQ > 0.0
  l_safe_1xQ = jnp.where(seen_1xQ, l_1xQ, 1.0)
  o_KxQ = jnp.where(seen_1xQ, acc_KxQ / l_safe_1xQ, 0.0)
  o_ref[...] = o_KxQ.T.astype(o_ref.dtype)
  # A query with no visible key stores lse 0; its probabilities are masked to 0 anyway.
  lse_ref[...] = jnp.where(seen_1xQ, m_1xQ + jnp.log(l_safe_1xQ), 0.0)
  if count:
    outs[2][...] = jnp.full((1,), n, jnp.int32)


def _probs(k_CxK, q_QxK, lse_1xQ, mask_CxQ, cfg: KernelCfg):
  p_CxQ = jnp.exp(_dot(k_CxK, q_QxK, 1, 1) * cfg.sm_scale - lse_1xQ)
  return p_CxQ if mask_CxQ is None else jnp.where(mask_CxQ, p_CxQ, 0.0)


def dq_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  ins, (qid_ref, kid_ref), outs = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  i = pl.program_id(2)
  q_QxK, do_QxK, lse_1xQ, delta_1xQ = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_ids_1xQ = qid_ref[...] if has_seg else None
  bk = cfg.block_k

  def body(j, dq_QxK):
    ks = _slice(j * bk, bk)
    k_CxK, v_CxK = k_ref[ks, :], v_ref[ks, :]
    mask_CxQ = _block_mask(i * cfg.block_q, j * bk, cfg, q_ids_1xQ,
                           kid_ref[ks, :] if has_seg else None)
    p_CxQ = _probs(k_CxK, q_QxK, lse_1xQ, mask_CxQ, cfg)
    ds_CxQ = p_CxQ * (_dot(v_CxK, do_QxK, 1, 1) - delta_1xQ)
    return dq_QxK + _dot(ds_CxQ.astype(k_CxK.dtype), k_CxK, 0, 0)

  dq_QxK, n = _counted(0, _kv_block_hi(i, cfg, num_kv), body,
                       jnp.zeros(q_QxK.shape, jnp.float32), count)
  outs[0][...] = (dq_QxK * cfg.sm_scale).astype(outs[0].dtype)
  if count:
    outs[1][...] = jnp.full((1,), n, jnp.int32)


def dkdv_kernel(*refs, cfg: KernelCfg, num_q: int, R: int, has_seg: bool, count: bool):
  ins, (qid_ref, kid_ref), outs = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  j = pl.program_id(2)
  k_CxK, v_CxK = k_ref[...], v_ref[...]
  kv_ids_Cx1 = kid_ref[...] if has_seg else None
  bq = cfg.block_q
  lo = _q_block_lo(j, cfg)

  def rows(ref, r, qs):             # block_q x K rows of query head r of this group
    return ref[qs, r, :] if cfg.layout == 'bthk' else ref[r, qs, :]

  def head(r, carry):                # the R query heads that share this kv head
    def body(i, acc):
      dk_CxK, dv_CxK = acc
      qs = _slice(i * bq, bq)
      q_QxK, do_QxK = rows(q_ref, r, qs), rows(do_ref, r, qs)
      mask_CxQ = _block_mask(i * bq, j * cfg.block_k, cfg,
                             qid_ref[:, qs] if has_seg else None, kv_ids_Cx1)
      p_CxQ = _probs(k_CxK, q_QxK, lse_ref[r, :, qs], mask_CxQ, cfg)
      dv_CxK = dv_CxK + _dot(p_CxQ.astype(do_QxK.dtype), do_QxK)
      ds_CxQ = p_CxQ * (_dot(v_CxK, do_QxK, 1, 1) - delta_ref[r, :, qs])
      return dk_CxK + _dot(ds_CxQ.astype(q_QxK.dtype), q_QxK), dv_CxK

    acc, n = _counted(lo, num_q, body, carry[0], count)
    return acc, carry[1] + (0 if n is None else n)

  zeros = jnp.zeros(k_CxK.shape, jnp.float32)
  (dk_CxK, dv_CxK), n = jax.lax.fori_loop(0, R, head, ((zeros, zeros), jnp.int32(0)))
  outs[0][...] = (dk_CxK * cfg.sm_scale).astype(outs[0].dtype)
  outs[1][...] = dv_CxK.astype(outs[1].dtype)
  if count:
    outs[2][...] = jnp.full((1,), n, jnp.int32)
