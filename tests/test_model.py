"""jaxlab.models: Transformer behaviour, param layout, and the parametrization table."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.config import ModelConfig
from jaxlab.models import Transformer, schema
from jaxlab.models import parametrization as pz
from jaxlab.models.transformer import positions_from_segments

# Tiny GQA model (H=4 query heads, G=2 kv heads, K=8).
CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
B, T = 2, 16


def tokens(shape=(B, T), seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size)


@functools.lru_cache(maxsize=None)
def init(cfg=CFG):
  return jax.jit(Transformer(cfg).init)(jax.random.key(0), tokens())


def params(cfg=CFG):
  return nn.unbox(init(cfg))['params']


@functools.lru_cache(maxsize=None)
def jitted_apply(cfg=CFG):
  return jax.jit(lambda p, tok, seg: Transformer(cfg).apply({'params': p}, tok, seg))


def logits(tok, seg=None, cfg=CFG, p=None):
  return jitted_apply(cfg)(params(cfg) if p is None else p, tok, seg)


def loss_fn(cfg, tok):
  def loss(p):
    lg = Transformer(cfg).apply({'params': p}, tok)
    return optax.softmax_cross_entropy_with_integer_labels(lg[:, :-1], tok[:, 1:]).mean()
  return loss


# ------------------------------------------------------------------------------ layout

def test_param_layout_and_logical_names():
  L, D, H, G, K, F, V = 2, 32, 4, 2, 8, 64, 64
  want = {
      'embed': {'embedding': ((V, D), ('vocab', 'embed'))},
      'layers': {
          'attn_norm': {'scale': ((L, D), ('layers', 'embed'))},
          'attn': {'wq': ((L, D, H, K), ('layers', 'embed', 'heads', 'kv')),
                   'wk': ((L, D, G, K), ('layers', 'embed', 'kv_heads', 'kv')),
                   'wv': ((L, D, G, K), ('layers', 'embed', 'kv_heads', 'kv')),
                   'wo': ((L, H, K, D), ('layers', 'heads', 'kv', 'embed'))},
          'mlp_norm': {'scale': ((L, D), ('layers', 'embed'))},
          'mlp': {'w_gate': ((L, D, F), ('layers', 'embed', 'mlp')),
                  'w_up': ((L, D, F), ('layers', 'embed', 'mlp')),
                  'w_down': ((L, F, D), ('layers', 'mlp', 'embed'))},
      },
      'final_norm': {'scale': ((D,), ('embed',))},
      'head': {'kernel': ((D, V), ('embed', 'vocab'))},
  }
  variables = init()
  assert set(variables) == {'params'}
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(variables)['params'])
  specs = jax.tree.map(tuple, nn.get_partition_spec(variables)['params'],
                       is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert shapes == jax.tree.map(lambda w: w[0], want, is_leaf=lambda x: isinstance(x, tuple))
  assert specs == jax.tree.map(lambda w: w[1], want, is_leaf=lambda x: isinstance(x, tuple))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params()))


def test_apply_boxed_equals_unboxed():
  tok = tokens()
  boxed = jax.jit(Transformer(CFG).apply)(init(), tok)
  assert boxed.shape == (B, T, CFG.vocab_size) and boxed.dtype == jnp.float32
  np.testing.assert_array_equal(boxed, logits(tok))


def test_logical_constraints_under_mesh_and_rules():
  # Every logical name used by the model must be accepted by a rule set (ad hoc rules here;
  # the real ones live in jaxlab/parallel/rules.py). One CPU device, so values are unchanged.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ('data', 'fsdp', 'tensor'))
  rules = [('batch', 'data'), ('embed', 'fsdp'), ('heads', 'tensor'), ('kv_heads', 'tensor'),
           ('mlp', 'tensor'), ('vocab', 'tensor'), ('seq', None), ('kv', None), ('layers', None)]
  tok, p = tokens(), params()     # unbox outside: nn.unbox constrains eagerly under rules
  apply = lambda p, t: Transformer(CFG).apply({'params': p}, t)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    assert 'sharding_constraint' in str(jax.make_jaxpr(apply)(p, tok))
    out = jax.jit(apply)(p, tok)
  np.testing.assert_allclose(out, logits(tok), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- behaviour

def test_causality():
  tok = tokens()
  p = 9
  changed = tok.at[:, p].set((tok[:, p] + 1) % CFG.vocab_size)
  a, b = logits(tok), logits(changed)
  # Rows before p see identical inputs through identical ops: expect exact equality
  # (1e-6 would only allow for a backend that reorders reductions across rows).
  np.testing.assert_allclose(a[:, :p], b[:, :p], rtol=0, atol=1e-6)
  diff_per_pos = np.abs(np.asarray(a - b))[:, p:].max(axis=-1)
  assert (diff_per_pos > 1e-3).all(), diff_per_pos


def test_positions_from_segments():
  seg = jnp.array([[7, 7, 3, 3, 3, 9], [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(positions_from_segments(seg),
                                [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
  with pytest.raises(ValueError, match='must match'):
    Transformer(CFG).apply(init(), tokens(), seg)


def test_packed_documents_match_separate_runs():
  doc_a = tokens((1, 6), seed=2)[0]
  doc_b = tokens((1, 10), seed=3)[0]
  # Row 0: A then B. Row 1 begins mid-document (the last 6 tokens of B), then A, then
  # the first 4 tokens of B.
  row0 = jnp.concatenate([doc_a, doc_b])
  row1 = jnp.concatenate([doc_b[-6:], doc_a, doc_b[:4]])
  seg = jnp.array([[0] * 6 + [1] * 10, [1] * 6 + [2] * 6 + [3] * 4])
  packed = logits(jnp.stack([row0, row1]), seg)

  alone_6 = logits(jnp.stack([doc_a, doc_b[-6:]]))       # A alone, B's tail alone
  alone_b = logits(doc_b[None])[0]
  # Masked keys contribute exact zeros; only matmul shapes (T=16 vs 6/10) differ, so the
  # float32 results agree to reduction-order noise (observed < 1e-6 on logits of O(1)).
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, :6], alone_6[0], **tol)
  np.testing.assert_allclose(packed[0, 6:], alone_b, **tol)
  np.testing.assert_allclose(packed[1, :6], alone_6[1], **tol)     # starts at position 0
  np.testing.assert_allclose(packed[1, 6:12], alone_6[0], **tol)
  np.testing.assert_allclose(packed[1, 12:], alone_b[:4], **tol)


@pytest.mark.parametrize('n_kv_heads', [0, 1])   # multi-head and multi-query
def test_head_variants_run(n_kv_heads):
  cfg = dataclasses.replace(CFG, n_kv_heads=n_kv_heads)
  p = params(cfg)
  assert p['layers']['attn']['wk'].shape == (2, 32, cfg.kv_heads, 8)
  out = logits(tokens(), cfg=cfg)
  assert out.shape == (B, T, CFG.vocab_size) and np.isfinite(np.asarray(out)).all()


def test_tied_vs_untied():
  tied = dataclasses.replace(CFG, tie_embeddings=True)
  assert set(params(tied)) == {'embed', 'layers', 'final_norm'}
  assert set(params(CFG)) == {'embed', 'layers', 'final_norm', 'head'}
  tok = tokens() % 32                 # tokens 32..63 never appear in the input
  for cfg, readout_uses_embedding in [(tied, True), (CFG, False)]:
    g = jax.jit(jax.grad(loss_fn(cfg, tok)))(params(cfg))['embed']['embedding']
    unused_rows = np.abs(np.asarray(g[32:])).max()
    assert (unused_rows > 0) == readout_uses_embedding, (cfg.tie_embeddings, unused_rows)


def test_remat_modes_same_loss_and_grads():
  tok = tokens()
  results = {}
  for remat in ['none', 'full', 'save_dots']:
    cfg = dataclasses.replace(CFG, remat=remat)
    fn = jax.value_and_grad(loss_fn(cfg, tok))
    jaxpr = str(jax.make_jaxpr(fn)(params()))
    assert ('remat' in jaxpr or 'checkpoint' in jaxpr) == (remat != 'none')
    results[remat] = jax.jit(fn)(params())
  loss0, grads0 = results['none']
  for remat in ['full', 'save_dots']:
    loss, grads = results[remat]
    # Remat recomputes the same float32 ops; only fusion may differ (observed: bitwise equal).
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads, grads0)


def test_unrolled_layer_scan_same_params_loss_and_grads():
  """model.scan_unroll changes how the layer loop is compiled, not the model: the same
  param tree (stacked layers), the same loss and grads to float32 rounding, and a loop
  with no while op once unrolled."""
  tok = tokens()
  cfg4 = dataclasses.replace(CFG, n_layers=4)
  rolled = jax.value_and_grad(loss_fn(cfg4, tok))
  assert 'stablehlo.while' in jax.jit(rolled).lower(params(cfg4)).as_text()
  loss0, grads0 = jax.jit(rolled)(params(cfg4))
  cfg = dataclasses.replace(cfg4, scan_unroll=9)   # > n_layers: unrolled whole
  assert jax.tree.map(jnp.shape, params(cfg)) == jax.tree.map(jnp.shape, params(cfg4))
  fn = jax.value_and_grad(loss_fn(cfg, tok))
  assert 'stablehlo.while' not in jax.jit(fn).lower(params(cfg4)).as_text()
  loss, grads = jax.jit(fn)(params(cfg4))
  # Other fusions, other rounding (the remat test's tolerances).
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads, grads0)


def test_bfloat16_compute_close_to_float32():
  cfg16 = dataclasses.replace(CFG, dtype='bfloat16')
  tok = tokens()
  l32, l16 = logits(tok), logits(tok, cfg=cfg16, p=params())
  assert l16.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits (rel. eps 2^-8 = 0.4%); two layers of rounded matmuls
  # and a bf16 residual stream compound that to ~1% (observed 1.2% relative L2).
  rel = float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32))
  assert rel < 0.04, rel
  loss32 = jax.jit(loss_fn(CFG, tok))(params())
  loss16 = jax.jit(loss_fn(cfg16, tok))(params())
  assert abs(float(loss16 - loss32)) < 0.01 * float(loss32)


# --------------------------------------------------------------------- parametrization

STD_CFG = ModelConfig(vocab_size=1024, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=32, d_ff=768, init_std=0.05)


def test_init_stds_match_table():
  cfg = STD_CFG
  D, H, K, F = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.ff_dim
  p = nn.unbox(jax.jit(Transformer(cfg).init)(jax.random.key(0), tokens((1, 4))))['params']
  # (path, SP std written out): fan-ins deliberately differ (D=256, H*K=128, F=768) so a
  # wrong fan-in would show.
  cases = [
      (('embed', 'embedding'), 0.05),
      (('layers', 'attn', 'wq'), D ** -0.5),
      (('layers', 'attn', 'wk'), D ** -0.5),
      (('layers', 'attn', 'wv'), D ** -0.5),
      (('layers', 'attn', 'wo'), (H * K) ** -0.5),
      (('layers', 'mlp', 'w_gate'), D ** -0.5),
      (('layers', 'mlp', 'w_up'), D ** -0.5),
      (('layers', 'mlp', 'w_down'), F ** -0.5),
      (('head', 'kernel'), D ** -0.5),
  ]
  specs = schema.specs(cfg)
  for path, sp_std in cases:
    x = p
    for k in path:
      x = x[k]
    std = pz.init_std(cfg, specs[path])
    assert std == pytest.approx(sp_std, rel=1e-12)
    # >= 65k samples per tensor: the std estimate's relative error is ~1/sqrt(2N) < 0.3%,
    # so 3% is > 10 sigma yet far below the 40% gap between the fan-ins above.
    assert float(jnp.std(x)) == pytest.approx(std, rel=0.03), (path, x.shape)
    assert abs(float(jnp.mean(x))) < 0.05 * std
  # Layers get independent draws.
  wq = p['layers']['attn']['wq']
  assert not np.allclose(wq[0], wq[1])
  for scale in [p['layers']['attn_norm']['scale'], p['layers']['mlp_norm']['scale'],
                p['final_norm']['scale']]:
    np.testing.assert_array_equal(scale, 1.0)
  assert pz.attention_scale(cfg) == pytest.approx(K ** -0.5)
  for param in specs.values():
    assert pz.multiplier(cfg, param) == 1.0


EXPECTED_ROLES = {
    ('embed', 'embedding'): 'embedding',
    ('layers', 'attn_norm', 'scale'): 'norm',
    ('layers', 'attn', 'wq'): 'hidden', ('layers', 'attn', 'wk'): 'hidden',
    ('layers', 'attn', 'wv'): 'hidden', ('layers', 'attn', 'wo'): 'hidden',
    ('layers', 'mlp_norm', 'scale'): 'norm',
    ('layers', 'mlp', 'w_gate'): 'hidden', ('layers', 'mlp', 'w_up'): 'hidden',
    ('layers', 'mlp', 'w_down'): 'hidden',
    ('final_norm', 'scale'): 'norm',
    ('head', 'kernel'): 'output',
}


def test_schema_declares_every_leaf_once():
  """The schema (read back from the model's declarations) covers exactly the param tree,
  with shapes and logical names that match the params' own."""
  specs = schema.specs(CFG)
  assert {k: s.role for k, s in specs.items()} == EXPECTED_ROLES
  boxed = init()['params']
  flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(
      x, nn.LogicallyPartitioned))[0]
  assert [schema.dict_keys(path) for path, _ in flat] == list(specs)
  for path, box in flat:
    param = specs[schema.dict_keys(path)]
    assert tuple(box.names) == param.axes and box.value.shape == param.shape(CFG)
  tied = dataclasses.replace(CFG, tie_embeddings=True)
  assert ('head', 'kernel') not in schema.specs(tied)
  assert schema.specs(tied)[('final_norm', 'scale')].absorbs == ('readout',)
  with pytest.raises(ValueError, match='not declared by the model'):
    schema.map_params(lambda s, x: x, {'layers': {'attn': {'w_new': jnp.zeros(3)}}}, CFG)
  assert schema.count(CFG) == sum(x.size for x in jax.tree.leaves(params()))


def test_qk_norm_is_one_gain_per_head_dim_after_the_projections():
  """model.qk_norm: an RMSNorm with a learned gain on q and on k (shared by the heads, over
  the head dim), after the projections and before RoPE, as Qwen3 / OLMo-2 (the exact
  placement is checked against transformers' Qwen3 in the Hugging Face interop tests)."""
  cfg = dataclasses.replace(CFG, qk_norm=True)
  p = params(cfg)
  K = cfg.dim_per_head
  for name in ('q_norm', 'k_norm'):
    assert schema.specs(cfg)[('layers', 'attn', name, 'scale')].axes == ('layers', 'kv')
    assert p['layers']['attn'][name]['scale'].shape == (cfg.n_layers, K)
  p['layers']['attn']['q_norm']['scale'] = p['layers']['attn']['q_norm']['scale'] * 1.5
  t = tokens((1, 6))
  _, state = Transformer(cfg).apply({'params': p}, t, capture_intermediates=True,
                                    mutable=['intermediates'])
  q_LxBxTxHxK = np.asarray(state['intermediates']['layers']['attn']['q_norm']['__call__'][0])
  assert q_LxBxTxHxK.shape == (cfg.n_layers, 1, 6, cfg.n_heads, K)
  # Normalised per head over K (eps 1e-6 against mean squares ~1e-2: < 1e-4 off), times 1.5.
  rms = np.sqrt(np.mean(np.square(q_LxBxTxHxK / 1.5), axis=-1))
  np.testing.assert_allclose(rms, 1.0, rtol=1e-4)
  # The logits then see wq and wk only through each head's direction: scaling both by 3
  # leaves them unchanged (up to eps), which it does not without QK-norm.
  def scaled(tree):
    out = jax.tree.map(lambda a: a, tree)
    for w in ('wq', 'wk'):
      out['layers']['attn'][w] = tree['layers']['attn'][w] * 3.0
    return out
  np.testing.assert_allclose(Transformer(cfg).apply({'params': scaled(p)}, t),
                             Transformer(cfg).apply({'params': p}, t), rtol=1e-4, atol=1e-4)
  off = params(CFG)
  assert not np.allclose(Transformer(CFG).apply({'params': scaled(off)}, t),
                         Transformer(CFG).apply({'params': off}, t), rtol=1e-3, atol=1e-3)


def test_unknown_parametrization_names_allowed():
  bad = dataclasses.replace(CFG, parametrization='nope')   # not in the table
  with pytest.raises(ValueError, match="'sp', 'mup'"):
    pz.get(bad)


@pytest.mark.parametrize('implementation', ['xla', 'pallas'])
def test_fused_attention_runs_per_shard_under_a_mesh(implementation):
  """XLA cannot partition a Pallas call: on a multi-device mesh the model runs fused
  attention under shard_map (batch over data x fsdp, heads over tensor); the XLA
  reference is left to the partitioner. Traced on an abstract 2x2x1x2 mesh (no devices)."""
  from jaxlab.parallel import DEFAULT_RULES
  from jaxlab.parallel.mesh import AXES
  cfg = dataclasses.replace(CFG, attention=implementation)
  mesh = jax.sharding.AbstractMesh((2, 2, 1, 2), AXES)   # data, fsdp, context, tensor

  def forward(p, t):
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
      return Transformer(cfg).apply({'params': p}, t)
  jaxpr = str(jax.make_jaxpr(forward)(params(), tokens((4, 8))))
  assert ('shard_map' in jaxpr) == (implementation == 'pallas')
