import dataclasses

import jax
import jax.numpy as jnp
import pytest

from jaxlab.models import flops as metrics
from jaxlab.config import ModelConfig
from jaxlab.models import Transformer

CFG = ModelConfig(vocab_size=257, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192)


def test_flops_per_token_matches_hand_count():
  # Per layer: wq 64*4*16 + wk 64*2*16 + wv 64*2*16 + wo 4*16*64 + 3 * 64*192 = 49152.
  # Two layers + head 64*257 = 98304 + 16448 = 114752 matmul params.
  assert metrics.matmul_params(CFG) == 114_752
  # 6N + causal attention 6 * L * T * H * K = 6 * 2 * 128 * 4 * 16 = 98304.
  assert metrics.flops_per_token(CFG, 128) == 6 * 114_752 + 98_304


def test_matmul_params_match_the_model_tree():
  """The formula's N equals the model's matrices (embedding lookup and gains excluded)."""
  params = jax.eval_shape(Transformer(CFG).init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))['params']
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  total = metrics.count_params(params)
  embed = CFG.vocab_size * CFG.d_model
  gains = (2 * CFG.n_layers + 1) * CFG.d_model
  assert total - embed - gains == metrics.matmul_params(CFG)


def test_forward_flops_agree_with_xla_cost_analysis():
  """XLA's own count of a forward pass: 2 N per token for the matmuls plus the full
  (unmasked: XLA computes every score) attention 4 L T^2 H K per sequence. The formula's
  forward third, with the attention term un-halved, must agree within the elementwise
  work XLA also counts (norms, softmax, RoPE, SwiGLU gate) -- a few percent.
  One layer: XLA's cost analysis counts a scan's loop body once, not n_layers times."""
  b, t = 2, 128
  cfg = dataclasses.replace(CFG, n_layers=1)
  model = Transformer(cfg)
  tokens = jnp.zeros((b, t), jnp.int32)
  variables = model.init(jax.random.key(0), tokens)
  cost = jax.jit(model.apply).lower(variables, tokens).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = cost['flops']
  expected = b * t * (2 * metrics.matmul_params(cfg)) + \
      b * 4 * cfg.n_layers * t * t * cfg.n_heads * cfg.dim_per_head
  assert expected <= xla_flops <= 1.06 * expected, (xla_flops, expected)


def test_mfu_table():
  assert metrics.peak_flops_per_device('NVIDIA H100 80GB HBM3') == 989e12
  assert metrics.peak_flops_per_device('NVIDIA H100 PCIe') == 756e12
  assert metrics.peak_flops_per_device('TPU v5 lite') == 197e12
  assert metrics.peak_flops_per_device('TPU v5p') == 459e12
  assert metrics.peak_flops_per_device('cpu') is None
  assert metrics.mfu(989e12 * 4, 'NVIDIA H100 80GB HBM3', 8) == pytest.approx(0.5)
  assert metrics.mfu(1e9, 'cpu', 1) is None
