"""jaxlab.kernels.attention against a naive float64 NumPy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.kernels import attention, reference_attention

# float32 einsums/softmax on O(1) inputs with K=16 vs float64: observed max error 4e-7;
# 2e-6 leaves room for reduction-order differences and nothing more.
TOL = dict(rtol=2e-6, atol=2e-6)


def naive_attention(q, k, v, *, causal, q_ids=None, kv_ids=None, sm_scale=None):
  """Per-(batch, head) loops in float64; a query with no visible key gets zeros."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  B, T, H, K = q.shape
  S, G = k.shape[1], k.shape[2]
  scale = K ** -0.5 if sm_scale is None else sm_scale
  out = np.zeros((B, T, H, K))
  for b in range(B):
    for h in range(H):
      g = h // (H // G)       # query head h reads kv head h // (H/G)
      logits = q[b, :, h] @ k[b, :, g].T * scale                      # T x S
      allowed = np.ones((T, S), bool)
      if causal:
        allowed &= np.arange(S)[None, :] <= np.arange(T)[:, None]
      if q_ids is not None:
        allowed &= np.asarray(q_ids)[b][:, None] == np.asarray(kv_ids)[b][None, :]
      for t in range(T):
        if not allowed[t].any():
          continue
        w = np.exp(logits[t] - logits[t][allowed[t]].max()) * allowed[t]
        out[b, t, h] = (w / w.sum()) @ v[b, :, g]
  return out


def qkv(B=2, T=12, S=12, H=8, G=2, K=16, seed=0, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, T, H, K), dtype), jax.random.normal(kk, (B, S, G, K), dtype),
          jax.random.normal(kv, (B, S, G, K), dtype))


SEG_BxT = jnp.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2],
                     [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]])


@pytest.mark.parametrize('G', [8, 2, 1])
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('packed', [False, True])
def test_matches_naive(G, causal, packed):
  q, k, v = qkv(G=G)
  seg = SEG_BxT if packed else None
  out = attention(q, k, v, causal=causal, segment_ids=seg)
  want = naive_attention(q, k, v, causal=causal, q_ids=seg, kv_ids=seg)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(out, want, **TOL)


def test_explicit_sm_scale():
  q, k, v = qkv()
  out = attention(q, k, v, causal=True, sm_scale=0.05)
  np.testing.assert_allclose(out, naive_attention(q, k, v, causal=True, sm_scale=0.05), **TOL)


@pytest.mark.parametrize('G', [2, 1])
def test_gqa_equals_mha_with_repeated_kv(G):
  q, k, v = qkv(G=G)
  rep = 8 // G
  gqa = attention(q, k, v, causal=True, segment_ids=SEG_BxT)
  mha = attention(q, jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2), causal=True,
                  segment_ids=SEG_BxT)
  # Same float32 arithmetic, only grouped differently: ulp-level agreement.
  np.testing.assert_allclose(gqa, mha, rtol=1e-6, atol=1e-6)


def test_causal_top_left_matches_jax_nn():
  # Locks the mask convention that other implementations ('cudnn', ...) must share.
  q, k, v = qkv(T=12, S=12, G=2)
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='xla')
  np.testing.assert_allclose(attention(q, k, v, causal=True), want, **TOL)


def test_separate_ids_and_fully_masked_row():
  q, k, v = qkv(T=6, S=8, G=2)
  q_ids = jnp.array([[1, 1, 2, 2, 9, 9], [3, 3, 3, 3, 3, 3]])   # id 9 has no key
  kv_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 4, 4, 4, 4]])
  out = attention(q, k, v, causal=False, segment_ids=(q_ids, kv_ids))
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(out[0, 4:], 0.0)
  want = naive_attention(q, k, v, causal=False, q_ids=q_ids, kv_ids=kv_ids)
  np.testing.assert_allclose(out, want, **TOL)


def test_gradients_finite_and_masked_keys_get_none():
  q, k, v = qkv(T=6, S=8, G=2)
  q_ids = jnp.array([[1, 1, 2, 2, 9, 9], [3, 3, 3, 3, 3, 3]])
  kv_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 4, 4, 4, 4]])

  def loss(q, k, v):
    return jnp.sum(attention(q, k, v, causal=True, segment_ids=(q_ids, kv_ids)) ** 2)

  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  gq, gk, gv = grads
  np.testing.assert_array_equal(gq[0, 4:], 0.0)       # fully-masked queries
  np.testing.assert_array_equal(gk[1, 4:], 0.0)       # keys of a segment no query has
  np.testing.assert_array_equal(gv[1, 4:], 0.0)
  # Causal self-attention with packing: the last document's keys never feed earlier ones.
  q, k, v = qkv()

  def first_docs(k, v):
    return jnp.sum(attention(q, k, v, causal=True, segment_ids=SEG_BxT)[0, :9])

  gk, gv = jax.grad(first_docs, argnums=(0, 1))(k, v)
  np.testing.assert_array_equal(gk[0, 9:], 0.0)
  np.testing.assert_array_equal(gv[0, 9:], 0.0)
  assert np.abs(np.asarray(gv[0, :9])).max() > 0


def test_bfloat16_inputs():
  q, k, v = qkv(dtype=jnp.bfloat16)
  out = attention(q, k, v, causal=True, segment_ids=SEG_BxT)
  assert out.dtype == jnp.bfloat16
  want = naive_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                         causal=True, q_ids=SEG_BxT, kv_ids=SEG_BxT)
  # Probabilities are rounded to bfloat16 (8-bit mantissa, rel. eps 2^-8) before the PV
  # matmul and the output is rounded again: a few eps of |v| ~ 1 (observed max 8e-3).
  np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=0, atol=3e-2)


def test_errors_name_allowed_values():
  q, k, v = qkv()
  with pytest.raises(ValueError, match="'xla'"):
    attention(q, k, v, implementation='flash')
  with pytest.raises(ValueError, match='multiple'):
    reference_attention(q[:, :, :3], k, v)
  with pytest.raises(ValueError, match='pair'):
    attention(q, k[:, :8], v[:, :8], segment_ids=SEG_BxT)
