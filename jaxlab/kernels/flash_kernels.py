"""The Pallas kernel bodies of the flash-attention kernel, in two forms sharing one set of
block updates (online softmax, dq, dk/dv):

  loop  one grid step per q block (forward, dq) or k block (dk/dv) that loops over the
        whole other sequence, held in one block (fori_loop). The Triton GPU lowering and
        the CPU interpreter run this form (flash_loop.py holds its pallas_calls).
  grid  the other sequence is a grid axis too ("arbitrary", innermost): one grid step per
        (q block, k block) pair, with the running statistics in VMEM scratch, so K/V (or
        Q/dO) blocks stream through VMEM and a sequence of any length fits. The Mosaic
        TPU lowering runs this form (flash_grid.py holds its pallas_calls).

Tiles are keys x queries (s_CxQ = k q^T), so per-query statistics (running max, sum,
logsumexp, delta) are 1 x block_q rows, the layout Mosaic TPU wants. `KernelCfg` holds the
static choices (scale, mask, blocks, true lengths, layout, interpret).
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


def block_mask(q_start, k_start, cfg: KernelCfg, q_ids_1xQ, kv_ids_Cx1):
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


def kv_block_hi(i, cfg: KernelCfg, num_kv: int):
  """Number of k blocks q block i needs: causal stops at the diagonal."""
  if not cfg.causal:
    return num_kv
  return jnp.minimum(num_kv, ((i + 1) * cfg.block_q + cfg.block_k - 1) // cfg.block_k)


def q_block_lo(j, cfg: KernelCfg):
  """First q block that sees k block j: causal starts at the diagonal."""
  if not cfg.causal:
    return 0
  return (j * cfg.block_k) // cfg.block_q


# ------------------------------------------------------------------ block updates

def online_update(q_QxK, k_CxK, v_CxK, mask_CxQ, carry, cfg: KernelCfg):
  """One k block of the forward's online softmax: (acc_KxQ, m_1xQ, l_1xQ) -> updated."""
  acc_KxQ, m_1xQ, l_1xQ = carry
  s_CxQ = _dot(k_CxK, q_QxK, 1, 1) * cfg.sm_scale
  if mask_CxQ is not None:
    s_CxQ = jnp.where(mask_CxQ, s_CxQ, -jnp.inf)
  m_new_1xQ = jnp.maximum(m_1xQ, jnp.max(s_CxQ, axis=0, keepdims=True))
  m_safe_1xQ = jnp.where(m_new_1xQ == -jnp.inf, 0.0, m_new_1xQ)  # nothing visible yet
  p_CxQ = jnp.exp(s_CxQ - m_safe_1xQ)                          # masked entries -> exactly 0
  alpha_1xQ = jnp.exp(m_1xQ - m_safe_1xQ)
  l_1xQ = alpha_1xQ * l_1xQ + jnp.sum(p_CxQ, axis=0, keepdims=True)
  acc_KxQ = acc_KxQ * alpha_1xQ + _dot(v_CxK, p_CxQ.astype(v_CxK.dtype), 0, 0)
  return acc_KxQ, m_new_1xQ, l_1xQ


def online_init(K: int, bq: int):
  return (jnp.zeros((K, bq), jnp.float32), jnp.full((1, bq), -jnp.inf, jnp.float32),
          jnp.zeros((1, bq), jnp.float32))


def online_finish(carry):
  """(o_QxK float32, lse_1xQ); a query with no visible key gets o = 0 and lse = 0 (its
  probabilities are masked to 0 in the backward anyway)."""
  acc_KxQ, m_1xQ, l_1xQ = carry
  seen_1xQ = l_1xQ > 0.0
  l_safe_1xQ = jnp.where(seen_1xQ, l_1xQ, 1.0)
  o_KxQ = jnp.where(seen_1xQ, acc_KxQ / l_safe_1xQ, 0.0)
  return o_KxQ.T, jnp.where(seen_1xQ, m_1xQ + jnp.log(l_safe_1xQ), 0.0)


def _probs(k_CxK, q_QxK, lse_1xQ, mask_CxQ, cfg: KernelCfg):
  p_CxQ = jnp.exp(_dot(k_CxK, q_QxK, 1, 1) * cfg.sm_scale - lse_1xQ)
  return p_CxQ if mask_CxQ is None else jnp.where(mask_CxQ, p_CxQ, 0.0)


def dq_update(q_QxK, k_CxK, v_CxK, do_QxK, lse_1xQ, delta_1xQ, mask_CxQ, dq_QxK, cfg):
  """dq (unscaled, float32) += the contribution of one k block."""
  p_CxQ = _probs(k_CxK, q_QxK, lse_1xQ, mask_CxQ, cfg)
  ds_CxQ = p_CxQ * (_dot(v_CxK, do_QxK, 1, 1) - delta_1xQ)
  return dq_QxK + _dot(ds_CxQ.astype(k_CxK.dtype), k_CxK, 0, 0)


def dkdv_update(q_QxK, k_CxK, v_CxK, do_QxK, lse_1xQ, delta_1xQ, mask_CxQ, acc, cfg):
  """(dk unscaled, dv) float32 += the contribution of one q block of one query head."""
  dk_CxK, dv_CxK = acc
  p_CxQ = _probs(k_CxK, q_QxK, lse_1xQ, mask_CxQ, cfg)
  dv_CxK = dv_CxK + _dot(p_CxQ.astype(do_QxK.dtype), do_QxK)
  ds_CxQ = p_CxQ * (_dot(v_CxK, do_QxK, 1, 1) - delta_1xQ)
  return dk_CxK + _dot(ds_CxQ.astype(q_QxK.dtype), q_QxK), dv_CxK


# ------------------------------------------------------------------ loop form

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


def loop_fwd_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  (q_ref, k_ref, v_ref), (qid_ref, kid_ref), outs = _split(refs, 3 + 2 * has_seg, has_seg)
  o_ref, lse_ref = outs[:2]
  i = pl.program_id(2)
  q_QxK = q_ref[...]
  q_ids_1xQ = qid_ref[...] if has_seg else None
  bq, bk = cfg.block_q, cfg.block_k

  def body(j, carry):
    ks = _slice(j * bk, bk)
    mask_CxQ = block_mask(i * bq, j * bk, cfg, q_ids_1xQ, kid_ref[ks, :] if has_seg else None)
    return online_update(q_QxK, k_ref[ks, :], v_ref[ks, :], mask_CxQ, carry, cfg)

  carry, n = _counted(0, kv_block_hi(i, cfg, num_kv), body, online_init(q_QxK.shape[1], bq),
                      count)
  o_QxK, lse_1xQ = online_finish(carry)
  o_ref[...] = o_QxK.astype(o_ref.dtype)
  lse_ref[...] = lse_1xQ
  if count:
    outs[2][...] = jnp.full((1,), n, jnp.int32)


def loop_dq_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  ins, (qid_ref, kid_ref), outs = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  i = pl.program_id(2)
  q_QxK, do_QxK, lse_1xQ, delta_1xQ = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_ids_1xQ = qid_ref[...] if has_seg else None
  bk = cfg.block_k

  def body(j, dq_QxK):
    ks = _slice(j * bk, bk)
    mask_CxQ = block_mask(i * cfg.block_q, j * bk, cfg, q_ids_1xQ,
                          kid_ref[ks, :] if has_seg else None)
    return dq_update(q_QxK, k_ref[ks, :], v_ref[ks, :], do_QxK, lse_1xQ, delta_1xQ, mask_CxQ,
                     dq_QxK, cfg)

  dq_QxK, n = _counted(0, kv_block_hi(i, cfg, num_kv), body,
                       jnp.zeros(q_QxK.shape, jnp.float32), count)
  outs[0][...] = (dq_QxK * cfg.sm_scale).astype(outs[0].dtype)
  if count:
    outs[1][...] = jnp.full((1,), n, jnp.int32)


def loop_dkdv_kernel(*refs, cfg: KernelCfg, num_q: int, R: int, has_seg: bool, count: bool):
  ins, (qid_ref, kid_ref), outs = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  j = pl.program_id(2)
  k_CxK, v_CxK = k_ref[...], v_ref[...]
  kv_ids_Cx1 = kid_ref[...] if has_seg else None
  bq = cfg.block_q
  lo = q_block_lo(j, cfg)

  def rows(ref, r, qs):             # block_q x K rows of query head r of this group
    return ref[qs, r, :] if cfg.layout == 'bthk' else ref[r, qs, :]

  def head(r, carry):                # the R query heads that share this kv head
    def body(i, acc):
      qs = _slice(i * bq, bq)
      mask_CxQ = block_mask(i * bq, j * cfg.block_k, cfg,
                            qid_ref[:, qs] if has_seg else None, kv_ids_Cx1)
      return dkdv_update(rows(q_ref, r, qs), k_CxK, v_CxK, rows(do_ref, r, qs),
                         lse_ref[r, :, qs], delta_ref[r, :, qs], mask_CxQ, acc, cfg)

    acc, n = _counted(lo, num_q, body, carry[0], count)
    return acc, carry[1] + (0 if n is None else n)

  zeros = jnp.zeros(k_CxK.shape, jnp.float32)
  (dk_CxK, dv_CxK), n = jax.lax.fori_loop(0, R, head, ((zeros, zeros), jnp.int32(0)))
  outs[0][...] = (dk_CxK * cfg.sm_scale).astype(outs[0].dtype)
  outs[1][...] = dv_CxK.astype(outs[1].dtype)
  if count:
    outs[2][...] = jnp.full((1,), n, jnp.int32)


# ------------------------------------------------------------------ grid form (TPU)
# Refs arrive as inputs, outputs, then scratch. The grid's last axis (or last two, for
# dk/dv) runs sequentially over the streamed blocks; the first step initialises the
# scratch, the last writes the output. A block that the causal mask hides entirely is
# skipped (pl.when), and its index_map repeats the previous block, so it is not copied in.

def _bump(count_ref):
  """Counts executed block steps into count_ref (testing only)."""
  if count_ref is not None:
    count_ref[...] = count_ref[...] + 1


def grid_fwd_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  (q_ref, k_ref, v_ref), (qid_ref, kid_ref), rest = _split(refs, 3 + 2 * has_seg, has_seg)
  o_ref, lse_ref = rest[:2]
  count_ref = rest[2] if count else None
  acc_scr, m_scr, l_scr = rest[2 + count:]
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    acc, m, l = online_init(acc_scr.shape[0], cfg.block_q)
    acc_scr[...], m_scr[...], l_scr[...] = acc, m, l
    if count_ref is not None:
      count_ref[...] = jnp.zeros((1,), jnp.int32)

  @pl.when(j < kv_block_hi(i, cfg, num_kv))
  def _step():
    mask_CxQ = block_mask(i * cfg.block_q, j * cfg.block_k, cfg,
                          qid_ref[...] if has_seg else None, kid_ref[...] if has_seg else None)
    acc, m, l = online_update(q_ref[...], k_ref[...], v_ref[...], mask_CxQ,
                              (acc_scr[...], m_scr[...], l_scr[...]), cfg)
    acc_scr[...], m_scr[...], l_scr[...] = acc, m, l
    _bump(count_ref)

  @pl.when(j == num_kv - 1)
  def _finish():
    o_QxK, lse_1xQ = online_finish((acc_scr[...], m_scr[...], l_scr[...]))
    o_ref[...] = o_QxK.astype(o_ref.dtype)
    lse_ref[...] = lse_1xQ


def grid_dq_kernel(*refs, cfg: KernelCfg, num_kv: int, has_seg: bool, count: bool):
  ins, (qid_ref, kid_ref), rest = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  dq_ref = rest[0]
  count_ref = rest[1] if count else None
  (dq_scr,) = rest[1 + count:]
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
    if count_ref is not None:
      count_ref[...] = jnp.zeros((1,), jnp.int32)

  @pl.when(j < kv_block_hi(i, cfg, num_kv))
  def _step():
    mask_CxQ = block_mask(i * cfg.block_q, j * cfg.block_k, cfg,
                          qid_ref[...] if has_seg else None, kid_ref[...] if has_seg else None)
    dq_scr[...] = dq_update(q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...],
                            delta_ref[...], mask_CxQ, dq_scr[...], cfg)
    _bump(count_ref)

  @pl.when(j == num_kv - 1)
  def _finish():
    dq_ref[...] = (dq_scr[...] * cfg.sm_scale).astype(dq_ref.dtype)


def grid_dkdv_kernel(*refs, cfg: KernelCfg, num_q: int, R: int, has_seg: bool, count: bool):
  """Grid (B, G, k blocks, R query heads, q blocks): dk/dv of one k block summed over the
  group's R query heads and every q block that sees it."""
  ins, (qid_ref, kid_ref), rest = _split(refs, 6 + 2 * has_seg, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  dk_ref, dv_ref = rest[:2]
  count_ref = rest[2] if count else None
  dk_scr, dv_scr = rest[2 + count:]
  j, r, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)
  first = (r == 0) & (i == 0)

  @pl.when(first)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)
    if count_ref is not None:
      count_ref[...] = jnp.zeros((1,), jnp.int32)

  @pl.when(i >= q_block_lo(j, cfg))
  def _step():
    mask_CxQ = block_mask(i * cfg.block_q, j * cfg.block_k, cfg,
                          qid_ref[...] if has_seg else None, kid_ref[...] if has_seg else None)
    dk, dv = dkdv_update(q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...],
                         delta_ref[...], mask_CxQ, (dk_scr[...], dv_scr[...]), cfg)
    dk_scr[...], dv_scr[...] = dk, dv
    _bump(count_ref)

  @pl.when((r == R - 1) & (i == num_q - 1))
  def _finish():
    dk_ref[...] = (dk_scr[...] * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


# ------------------------------------------------------------------ cost (for XLA's model)
# Matmuls per kernel, each 2 * (block rows x block cols x K) flops per visible tile:
# forward QK^T and PV (2); dq recomputes QK^T, then dP = dO V^T and dQ = dS K (3); dk/dv
# recomputes QK^T and dP, then dV = P^T dO and dK = dS^T Q (4). exp per visible entry:
# once in each kernel.
MATMULS = {'fwd': 2, 'dq': 3, 'dkdv': 4}


def visible_fraction(T: int, S: int, causal: bool) -> float:
  """Share of the T x S score matrix a causal (top-left aligned) mask leaves visible."""
  if not causal:
    return 1.0
  m = min(T, S)     # rows t < m see t + 1 keys; rows t >= S see all S
  return (m * (m + 1) // 2 + max(T - S, 0) * S) / (T * S)


def cost_estimate(kind: str, B: int, H: int, T: int, S: int, K: int, causal: bool,
                  arrays) -> pl.CostEstimate:
  """XLA's cost model sees a Pallas kernel only through this estimate: the matmul flops
  of the visible scores, one exp per visible score, and the bytes of `arrays` (operands
  and results, each counted once: streamed blocks read again are left out)."""
  pairs = B * H * T * S * visible_fraction(T, S, causal)
  nbytes = sum(x.size * x.dtype.itemsize for x in arrays if x is not None)
  return pl.CostEstimate(flops=int(2 * MATMULS[kind] * pairs * K), transcendentals=int(pairs),
                         bytes_accessed=int(nbytes))
