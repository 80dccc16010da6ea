"""model.attention=tokamax: tokamax's implementations behind jaxlab's attention API.

On the CPU tokamax runs its `xla` implementation (its Mosaic GPU and Triton kernels need a
GPU); these tests check what jaxlab adds around it -- packed documents as per-query key
ranges, GQA, the scale, the choice of implementation, `auto`'s GPU order -- against the
float64 NumPy loop of test_attention (values) and jaxlab's reference (gradients).
"""
import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.config.types import ConfigError
from jaxlab.kernels import attention, reference_attention
from jaxlab.kernels import tokamax_attention as tk
from jaxlab.models import Transformer
from test_attention import SEG_BxT, TOL, naive_attention, qkv

# The dispatcher module (jaxlab.kernels.attention is the function of the same name).
attention_module = importlib.import_module('jaxlab.kernels.dispatch')
pytestmark = pytest.mark.skipif(not tk.installed(), reason='tokamax is not installed')


def test_key_ranges_are_the_runs_of_equal_ids():
  seg = jnp.array([[1, 1, 2, 2, 2, 3], [4, 4, 4, 4, 4, 4], [1, 2, 1, 1, 0, 0]])
  k_start, k_end = tk.key_ranges(seg)
  np.testing.assert_array_equal(k_start, [[0, 0, 2, 2, 2, 5], [0] * 6, [0, 1, 2, 2, 4, 4]])
  np.testing.assert_array_equal(k_end, [[2, 2, 5, 5, 5, 6], [6] * 6, [1, 2, 4, 4, 6, 6]])


@pytest.mark.parametrize('causal,packed,G', [(True, True, 2), (False, True, 1),
                                             (True, False, 8), (False, False, 2)])
def test_values_match_float64_loop(causal, packed, G):
  q, k, v = qkv(G=G)
  seg = SEG_BxT if packed else None
  out = attention(q, k, v, causal=causal, segment_ids=seg, sm_scale=0.3,
                  implementation='tokamax')
  want = naive_attention(q, k, v, causal=causal, q_ids=seg, kv_ids=seg, sm_scale=0.3)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(out, want, **TOL)


@pytest.mark.parametrize('causal', [True, False])
def test_gradients_match_reference_with_packed_documents(causal):
  q, k, v = qkv(G=2, seed=3)
  do = jax.random.normal(jax.random.key(9), q.shape)

  def grads(impl):
    def loss(q, k, v):
      out = attention(q, k, v, causal=causal, segment_ids=SEG_BxT, implementation=impl)
      return jnp.sum(out * do)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  # Both are float32 einsums + softmax on O(1) inputs; they differ only in reduction order
  # and in where the mask is applied (observed max difference 1e-6; 2e-5 leaves room).
  for got, want, name in zip(grads('tokamax'), grads('xla'), ('dq', 'dk', 'dv')):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)


def test_bfloat16_inputs_give_bfloat16_close_to_reference():
  q, k, v = (x.astype(jnp.bfloat16) for x in qkv(G=2))
  out = attention(q, k, v, causal=True, segment_ids=SEG_BxT, implementation='tokamax')
  want = reference_attention(q, k, v, causal=True, segment_ids=SEG_BxT)
  assert out.dtype == jnp.bfloat16
  # bfloat16 inputs and outputs: 8 bits of mantissa, |out| <= ~3 -> 2 ulp ~ 2e-2.
  np.testing.assert_allclose(out.astype(np.float32), want.astype(np.float32), atol=2e-2)


def test_model_with_tokamax_matches_xla_on_packed_rows():
  cfg = config_lib.ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 64)
  params = Transformer(cfg).init(jax.random.key(1), tokens)
  logits = {impl: jax.jit(Transformer(dataclasses.replace(cfg, attention=impl)).apply)(
      params, tokens, SEG_BxT) for impl in ('xla', 'tokamax')}
  # One layer of float32 on O(1) activations: observed 1e-6; 1e-5 leaves room.
  np.testing.assert_allclose(logits['tokamax'], logits['xla'], rtol=1e-5, atol=1e-5)


def test_cross_attention_segment_pairs_are_refused_with_the_reason():
  q, k, v = qkv(T=12, S=8)
  pair = (jnp.ones((2, 12), jnp.int32), jnp.ones((2, 8), jnp.int32))
  why = tk.unsupported(q, k, causal=False, segment_ids=pair, platform='cpu')
  assert 'cross-attention' in why
  with pytest.raises(ValueError, match='cross-attention'):
    attention(q, k, v, causal=False, segment_ids=pair, implementation='tokamax')


def test_implementation_order_per_platform():
  q, k, _ = qkv(G=2)
  # On the CPU only tokamax's xla implementation runs: fine when named, not for `auto`.
  assert tk.choose(q, k, causal=True, segment_ids=None, platform='cpu')[0] == 'xla'
  assert 'no fused tokamax kernel' in tk.unsupported(q, k, causal=True, segment_ids=None,
                                                     platform='cpu', fused_only=True)
  assert 'not tpu' in tk.unsupported(q, k, causal=True, segment_ids=None, platform='tpu')
  # Traced for a GPU from this host: Mosaic GPU and Triton both refuse (no GPU here), each
  # reason is kept, and only the xla implementation is left -- not enough for `auto`.
  bf16 = [x.astype(jnp.bfloat16) for x in (q, k)]
  name, why = tk.choose(*bf16, causal=True, segment_ids=SEG_BxT, platform='gpu')
  assert name == 'xla' and 'mosaic_gpu:' in why and 'triton:' in why
  assert 'no fused tokamax kernel' in tk.unsupported(*bf16, causal=True, segment_ids=SEG_BxT,
                                                     platform='gpu', fused_only=True)


def test_auto_on_gpu_prefers_tokamax_then_cudnn_then_pallas_then_xla(monkeypatch):
  q, k, _ = (x.astype(jnp.bfloat16) for x in qkv(G=2, K=64))
  choose = attention_module.choose

  def on_gpu(q, k, segment_ids):   # auto's choice for a call traced for a GPU
    return choose(attention_module.Call(q, k, True, segment_ids, 'gpu', 'NVIDIA H100'))
  # No fused tokamax kernel traces on this CPU host: cuDNN when it can, else Pallas.
  impl, why = on_gpu(q, k, None)
  assert impl == 'cudnn' and 'tokamax:' in why
  impl, why = on_gpu(q, k, SEG_BxT)
  assert impl == 'pallas' and 'tokamax:' in why and 'cudnn:' in why
  q24, k24 = q[..., :24], k[..., :24]   # a head dim Triton cannot block: the reference
  impl, why = on_gpu(q24, k24, SEG_BxT)
  assert impl == 'xla' and 'head_dim 24' in why
  # Where a fused tokamax kernel takes the call (a Hopper GPU), it comes first.
  monkeypatch.setitem(attention_module.BACKENDS, 'tokamax', attention_module.Backend(
      attention_module.tokamax_attention, lambda call: None))
  assert on_gpu(q, k, SEG_BxT)[0] == 'tokamax'
  monkeypatch.setattr(tk, 'installed', lambda: False)
  assert 'tokamax is not installed' in tk.unsupported(q, k, causal=True, segment_ids=None,
                                                      platform='gpu')


def test_config_names_the_missing_package(monkeypatch):
  cfg = config_lib.load('tiny', ['model.attention=tokamax'])
  assert cfg.model.attention == 'tokamax'
  real = __import__('importlib.util').util.find_spec
  monkeypatch.setattr('importlib.util.find_spec',
                      lambda name, *a: None if name == 'tokamax' else real(name, *a))
  with pytest.raises(ConfigError, match=r"model.attention='tokamax' needs the tokamax"):
    config_lib.load('tiny', ['model.attention=tokamax'])
