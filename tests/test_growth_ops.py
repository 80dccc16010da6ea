"""jaxlab.growth.depth / width: layer maps, unit maps, function preservation, moments, errors.

Function preservation compares float32 logits of Transformer(src) on src params with
Transformer(dst) on grown params (same tokens, packed segments). Tolerances: logits here
are O(1) (see _params) and CPU float32 matmuls are plain IEEE float32, so a grown model
that computes the same function differs only by summation order / copy-count division
rounding, ~1e-7 relative per op (measured: 0 to 5e-7 of max |logit|); 1e-5 leaves room
for that and is still far below any real change (the no-rescale muP control and the
unscaled-eps control both fail it). No 'highest' matmul precision is needed on CPU.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.config import ModelConfig
from jaxlab.growth.depth import grow_depth, layer_map, new_layer_mask
from jaxlab.growth.width import grow_width, width_stage
from jaxlab.models import Transformer, schema
from jaxlab.models import parametrization as pz

TOL = 1e-5   # see module docstring
SRC = ModelConfig(vocab_size=257, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                  head_dim=8, d_ff=32)
B, T = 2, 12
TOKENS = jax.random.randint(jax.random.key(7), (B, T), 0, SRC.vocab_size)
SEGMENTS = jnp.array([[0] * 5 + [1] * 7, [0] * 3 + [1] * 4 + [2] * 5])


def cfg(**kw):
  return dataclasses.replace(SRC, **kw)


# --------------------------------------------------------------------------- helpers

@functools.lru_cache(maxsize=None)
def _shapes(c):
  boxed = jax.eval_shape(Transformer(c).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  return nn.unbox(boxed)['params']


def _params(c, seed=0):
  """Random params with O(1) activations: N(0, 1) embedding (so RMSNorm's mean square is
  ~1 and norm_eps is negligible), N(0, 1/fan_in) matrices, gains 1 + N(0, 0.2^2) (so that
  copying / rescaling gains is actually exercised)."""
  # numpy's generator: jax.random would compile one kernel per leaf shape (seconds).
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(_shapes(c))
  out = []
  for path, s in leaves:
    param = schema.spec_at(c, schema.dict_keys(path))
    z = rng.standard_normal(s.shape).astype(np.float32)
    if param.role == 'norm':
      z = 1 + np.float32(0.2) * z
    elif param.role != 'embedding':
      z = z * np.float32(param.fan_sizes(c)[0] ** -0.5)
    out.append(jnp.asarray(z))
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=None)
def _apply(c):
  return jax.jit(lambda p, tok, seg: Transformer(c).apply({'params': p}, tok, seg))


def logits(c, p):
  return np.asarray(_apply(c)(p, TOKENS, SEGMENTS))


def assert_same_function(src, p_src, dst, p_dst, tol=TOL):
  want, got = logits(src, p_src), logits(dst, p_dst)
  assert got.shape == want.shape
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err < tol, f'relative logit error {err:.3g} >= {tol}'


def leaf(tree, name):
  node = tree
  for k in name.split('/'):
    node = node[k]
  return np.asarray(node)


# ------------------------------------------------------------------------- layer maps

def test_stack_map_6_to_24_and_copies():
  assert layer_map('stack', 6, 24) == [0, 1, 2, 3, 4, 5] * 4
  src, dst = cfg(n_layers=6), cfg(n_layers=24)
  p = _params(src)
  g = grow_depth(p, src, dst, 'stack')
  idx = [0, 1, 2, 3, 4, 5] * 4
  for path, x in jax.tree_util.tree_flatten_with_path(p)[0]:
    name = '/'.join(k.key for k in path)
    want = np.asarray(x)[idx] if name.startswith('layers/') else np.asarray(x)
    np.testing.assert_array_equal(leaf(g, name), want)   # pure copies: bit-exact


def test_interleave_solar_and_default_maps():
  assert layer_map('interleave', 6, 24) == [i // 4 for i in range(24)]
  assert layer_map('interleave', 2, 5) == [0, 0, 0, 1, 1]
  solar = list(range(0, 24)) + list(range(8, 32))
  assert layer_map('layers', 32, 48, solar) == solar
  assert new_layer_mask('layers', 32, 48, solar) == [False] * 24 + [True] * 16 + [False] * 8
  assert new_layer_mask('zero', 32, 48, solar) == [False] * 24 + [True] * 16 + [False] * 8
  assert layer_map('zero', 3, 6) == layer_map('random', 3, 6) == [0, 1, 2, 0, 1, 2]
  assert new_layer_mask('stack', 2, 4) == [False, False, True, True]
  assert new_layer_mask('interleave', 2, 4) == [False, True, False, True]


@pytest.mark.parametrize('args, match', [
    (('layers', 4, 6, [0, 1, 2, 3]), 'one per dst layer'),
    (('layers', 4, 6, [0, 1, 2, 3, 4, 1]), r'allowed: 0 \.\. 3'),
    (('layers', 4, 6, None), 'needs layers='),
    (('stack', 2, 4, [0, 1, 0, 1]), 'takes no layers list'),
    (('stack', 4, 2, None), 'cannot shrink'),
    (('grow', 2, 4, None), 'allowed:'),
])
def test_layer_map_errors(args, match):
  with pytest.raises(ValueError, match=match):
    layer_map(*args)


@pytest.mark.parametrize('layers', [[1, 0, 0, 1], [0, 0, 0, 0]])
def test_zero_mask_needs_src_order(layers):
  with pytest.raises(ValueError, match='first occurrences'):
    new_layer_mask('zero', 2, 4, layers)


# ------------------------------------------------------------------------------- depth

@pytest.mark.parametrize('n_src, n_dst, layers', [
    (2, 4, None),                          # stack map
    (2, 4, layer_map('interleave', 2, 4)),
    (4, 6, [0, 1, 2, 1, 2, 3]),            # Yi-style middle duplication
])
def test_zero_depth_preserves_function(n_src, n_dst, layers):
  src, dst = cfg(n_layers=n_src), cfg(n_layers=n_dst)
  p = _params(src)
  g = grow_depth(p, src, dst, 'zero', layers=layers)
  assert_same_function(src, p, dst, g)
  new = new_layer_mask('zero', n_src, n_dst, layers)
  assert not np.any(leaf(g, 'layers/attn/wo')[np.array(new)])


def _port_g_zero_depthwise(params, n_src: int, factor: int):
  """A port of G_zero in depth as the prts code lays it out (G_zero_depthwise.py): each
  source layer is followed by its copies, the copies' attention-out and MLP-down weights
  zeroed, so every copy adds 0 to the residual stream."""
  def leaf(path, x):
    keys = tuple(k.key for k in path)
    if keys[0] != 'layers':
      return np.asarray(x)
    out = []
    for i in range(n_src):
      for c in range(factor):
        w = np.asarray(x)[i]
        out.append(np.zeros_like(w) if c and keys[-1] in ('wo', 'w_down') else w)
    return np.stack(out)
  return jax.tree_util.tree_map_with_path(leaf, params)


def test_zero_with_the_interleave_map_is_prts_g_zero():
  """jaxlab's 'zero' stacks ([0..L-1, 0..L-1], the upper copies zeroed) unless a layer map
  is given; with the interleave map it is prts's layout, tensor by tensor. Both are the
  identity on the source function, but the weights differ."""
  src, dst = cfg(n_layers=2), cfg(n_layers=8)
  p = _params(src)
  interleaved = grow_depth(p, src, dst, 'zero', layers=layer_map('interleave', 2, 8))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, interleaved),
               _port_g_zero_depthwise(p, 2, 4))
  stacked = grow_depth(p, src, dst, 'zero')
  assert_same_function(src, p, dst, stacked)
  assert_same_function(src, p, dst, interleaved)
  assert not np.array_equal(leaf(stacked, 'layers/attn/wq'), leaf(interleaved, 'layers/attn/wq'))


def test_random_depth_takes_new_layers_from_fresh():
  src, dst = cfg(n_layers=2), cfg(n_layers=4)
  p, fresh = _params(src), _params(dst, seed=1)
  g = grow_depth(p, src, dst, 'random', fresh=fresh)
  for name in ['layers/attn/wq', 'layers/mlp_norm/scale', 'layers/mlp/w_down']:
    np.testing.assert_array_equal(leaf(g, name)[:2], leaf(p, name))
    np.testing.assert_array_equal(leaf(g, name)[2:], leaf(fresh, name)[2:])
  np.testing.assert_array_equal(leaf(g, 'embed/embedding'), leaf(p, 'embed/embedding'))
  with pytest.raises(ValueError, match='needs fresh='):
    grow_depth(p, src, dst, 'random')


@pytest.mark.parametrize('method', ['zero', 'random'])
def test_depth_moments_new_layers_zero(method):
  src, dst = cfg(n_layers=2), cfg(n_layers=4)
  mu = _params(src)
  g = grow_depth(mu, src, dst, method, layers=[0, 1, 1, 0], moments=True)
  for name in ['layers/attn/wk', 'layers/attn_norm/scale', 'layers/mlp/w_up']:
    np.testing.assert_array_equal(leaf(g, name)[:2], leaf(mu, name))
    assert not np.any(leaf(g, name)[2:])
  np.testing.assert_array_equal(leaf(g, 'head/kernel'), leaf(mu, 'head/kernel'))


def test_depth_needs_same_width():
  with pytest.raises(ValueError, match='same width.*d_model: 16 vs 32'):
    grow_depth(_params(SRC), SRC, cfg(d_model=32, n_layers=4), 'stack')


# ------------------------------------------------------------------------- width split

WIDTH_CASES = {   # name -> (src, dst)
    'd_model': (SRC, cfg(d_model=32)),
    'd_ff': (SRC, cfg(d_ff=48)),                                  # non-uniform copy counts
    'heads_kv_fixed': (SRC, cfg(n_heads=3)),                      # head copy counts 2, 1
    'heads_kv_grow': (SRC, cfg(n_heads=4, n_kv_heads=2)),
    'heads_mha': (cfg(n_kv_heads=0), cfg(n_heads=4, n_kv_heads=0)),
    'all': (SRC, cfg(d_model=32, n_heads=6, n_kv_heads=2, d_ff=80)),
    # QK-norm gains (over the head dim, shared by the heads) need no rule of their own.
    'all_qk_norm': (cfg(qk_norm=True), cfg(qk_norm=True, d_model=32, n_heads=6, n_kv_heads=2,
                                           d_ff=80)),
}


@pytest.mark.parametrize('case', list(WIDTH_CASES))
def test_split_width_preserves_function(case):
  src, dst = WIDTH_CASES[case]
  p = _params(src)
  assert_same_function(src, p, dst, grow_width(p, src, dst, 'split'))


def test_split_width_then_depth():
  # Width first at src depth (width_stage), then depth. 'stack' is not function preserving
  # (it is G_stack's point to change it), so check its leaves; 'zero' depth must keep it.
  src, dst = SRC, dataclasses.replace(WIDTH_CASES['all'][1], n_layers=4)
  mid = width_stage(src, dst)
  assert (mid.n_layers, mid.d_model, mid.ff_dim) == (src.n_layers, dst.d_model, dst.ff_dim)
  p = _params(src)
  wide = grow_width(p, src, mid, 'split')
  assert_same_function(src, p, mid, wide)
  stacked = grow_depth(wide, mid, dst, 'stack')
  assert leaf(stacked, 'layers/attn/wq').shape == (4, 32, 6, 8)
  np.testing.assert_array_equal(leaf(stacked, 'layers/mlp/w_down'),
                                np.concatenate([leaf(wide, 'layers/mlp/w_down')] * 2))
  assert_same_function(src, p, dst, grow_depth(wide, mid, dst, 'zero'))


def test_split_copies_and_divides():
  src, dst = WIDTH_CASES['all']
  p = _params(src)
  g = grow_width(p, src, dst, 'split')
  d, f = np.arange(32) % 16, np.arange(80) % 32
  count_f = np.bincount(f)[f]                 # 80 = 2 * 32 + 16: counts 3 and 2
  np.testing.assert_allclose(leaf(g, 'layers/mlp/w_down'),
                             leaf(p, 'layers/mlp/w_down')[:, f][:, :, d] / count_f[:, None],
                             rtol=1e-7)       # one float32 division
  np.testing.assert_allclose(leaf(g, 'layers/attn/wk'),
                             leaf(p, 'layers/attn/wk')[:, d][:, :, [0, 0]] / 2, rtol=1e-7)
  np.testing.assert_array_equal(leaf(g, 'final_norm/scale'), leaf(p, 'final_norm/scale')[d])
  # dst query head h' = 3 g' + r (gs' = 3) copies src head (g' mod 1) * 2 + r mod 2.
  heads = [0, 1, 0, 0, 1, 0]
  np.testing.assert_allclose(leaf(g, 'layers/attn/wo'),
                             leaf(p, 'layers/attn/wo')[:, heads][..., d]
                             / np.array([4, 2, 4, 4, 2, 4])[:, None, None], rtol=1e-7)


# -------------------------------------------------------------------------- width zero

ZERO_CASES = {
    'd_model': (SRC, cfg(d_model=24)),
    'd_ff': WIDTH_CASES['d_ff'],
    'heads_kv_fixed': WIDTH_CASES['heads_kv_fixed'],
    'heads_kv_grow': WIDTH_CASES['heads_kv_grow'],
    'all': (SRC, cfg(d_model=24, n_heads=6, n_kv_heads=2, d_ff=48)),
    'all_qk_norm': (cfg(qk_norm=True), cfg(qk_norm=True, d_model=24, n_heads=6, n_kv_heads=2,
                                           d_ff=48)),
}


@pytest.mark.parametrize('case', list(ZERO_CASES))
def test_zero_width_preserves_function(case):
  # Exact up to norm_eps (module doc): eps acts as eps * D'/D, i.e. a relative error of
  # about eps / (2 * mean square) ~ 5e-7 here (mean square ~ 1), inside TOL.
  src, dst = ZERO_CASES[case]
  p = _params(src)
  g = grow_width(p, src, dst, 'zero', fresh=_params(dst, seed=1))
  assert_same_function(src, p, dst, g)
  if dst.d_model > src.d_model:
    assert not np.any(leaf(g, 'embed/embedding')[:, src.d_model:])
    np.testing.assert_allclose(leaf(g, 'final_norm/scale')[:src.d_model],
                               leaf(p, 'final_norm/scale') * np.sqrt(src.d_model / dst.d_model),
                               rtol=1e-6)


def test_zero_width_small_embedding_exact_with_scaled_eps():
  # With the table's embedding init std 0.02 the mean square is ~4e-4, so eps = 1e-6 is no
  # longer negligible (the control below fails TOL); dst.norm_eps = src.norm_eps * D/D'
  # makes 'zero' exact again.
  src, dst = SRC, cfg(d_model=32, norm_eps=SRC.norm_eps * 16 / 32)
  p = dict(_params(src), embed={'embedding': 0.02 * _params(src)['embed']['embedding']})
  fresh = _params(dst, seed=1)
  assert_same_function(src, p, dst, grow_width(p, src, dst, 'zero', fresh=fresh))
  same_eps = cfg(d_model=32)
  with pytest.raises(AssertionError, match='relative logit error'):
    assert_same_function(src, p, same_eps, grow_width(p, src, same_eps, 'zero', fresh=fresh))


def test_zero_width_then_zero_depth():
  src, dst = SRC, dataclasses.replace(ZERO_CASES['all'][1], n_layers=4)
  mid = width_stage(src, dst)
  p = _params(src)
  g = grow_width(p, src, mid, 'zero', fresh=_params(mid, seed=1))
  assert_same_function(src, p, dst, grow_depth(g, mid, dst, 'zero'))


def test_zero_width_tied_embeddings_keeps_function():
  # New residual dims are 0 in the tied matrix, so as readout they add 0 to the logits.
  src, dst = cfg(tie_embeddings=True), cfg(tie_embeddings=True, d_model=24)
  p = _params(src)
  assert_same_function(src, p, dst, grow_width(p, src, dst, 'zero', fresh=_params(dst, 1)))


def test_random_width_old_block_kept_new_from_fresh():
  src, dst = ZERO_CASES['all']
  p, fresh = _params(src), _params(dst, seed=1)
  g = grow_width(p, src, dst, 'random', fresh=fresh)
  emb, wq, wd = (leaf(g, n) for n in ['embed/embedding', 'layers/attn/wq', 'layers/mlp/w_down'])
  np.testing.assert_array_equal(emb[:, :16], leaf(p, 'embed/embedding'))
  np.testing.assert_array_equal(emb[:, 16:], leaf(fresh, 'embed/embedding')[:, 16:])
  np.testing.assert_array_equal(wq[:, :16, :2], leaf(p, 'layers/attn/wq'))   # heads 0, 1
  np.testing.assert_array_equal(wq[:, :, 2:], leaf(fresh, 'layers/attn/wq')[:, :, 2:])
  np.testing.assert_array_equal(wd[:, :32, :16], leaf(p, 'layers/mlp/w_down'))
  np.testing.assert_array_equal(wd[:, 32:], leaf(fresh, 'layers/mlp/w_down')[:, 32:])
  np.testing.assert_array_equal(leaf(g, 'final_norm/scale')[:16], leaf(p, 'final_norm/scale'))


# ---------------------------------------------------------------------------- moments

def test_split_moments_copy_without_division():
  src, dst = WIDTH_CASES['all']
  mu = _params(src)
  g = grow_width(mu, src, dst, 'split', moments=True)
  d, f = np.arange(32) % 16, np.arange(80) % 32
  np.testing.assert_array_equal(leaf(g, 'layers/mlp/w_down'),
                                leaf(mu, 'layers/mlp/w_down')[:, f][:, :, d])
  np.testing.assert_array_equal(leaf(g, 'head/kernel'), leaf(mu, 'head/kernel')[d])


@pytest.mark.parametrize('method', ['zero', 'random'])
def test_zero_random_moments_new_entries_zero(method):
  src, dst = ZERO_CASES['all']
  nu = _params(src)
  g = grow_width(nu, src, dst, method, moments=True)   # no fresh needed
  for name in ['embed/embedding', 'layers/attn/wq', 'layers/mlp/w_gate', 'final_norm/scale']:
    got, old = leaf(g, name), leaf(nu, name)
    block = tuple(slice(0, n) for n in old.shape)
    np.testing.assert_array_equal(got[block], old)   # no sqrt(D/D') gain scaling for moments
    rest = got.copy()
    rest[block] = 0
    assert not np.any(rest), name


# -------------------------------------------------------------------------------- muP

def _fake_mup(monkeypatch):
  """A muP-like table whose every multiplier depends on width (embedding sqrt(m), hidden
  m^-1/2, norm gains m^1/4, readout 1/m) and whose attention scale does too, so every
  leaf's rescale is exercised."""
  def role(mult, base):
    return dataclasses.replace(base, multiplier=mult)
  for name, mult in (('embedding', lambda w: w.m ** 0.5), ('hidden', lambda w: w.m ** -0.5),
                     ('norm', lambda w: w.m ** 0.25), ('output', lambda w: 1.0 / w.m)):
    monkeypatch.setitem(pz.ROLES, name, role(mult, pz.ROLES[name]))
  monkeypatch.setitem(pz.PARAMETRIZATIONS, 'mup', pz.Parametrization(
      base=pz.base_model,
      attn_scale=lambda c, b: c.dim_per_head ** -0.5 * (b.d_model / c.d_model) ** 0.5))


@pytest.mark.parametrize('method', ['split', 'zero'])
@pytest.mark.parametrize('table', ['fake_mup', 'mup'])
def test_width_growth_is_mup_aware(monkeypatch, method, table):
  _apply.cache_clear()   # forwards traced under another test's table are not reused
  if table == 'fake_mup':
    _fake_mup(monkeypatch)
  # The source is the base model (m = 1), the target m = 2.
  src, dst = (dataclasses.replace(c, parametrization='mup', base_d_model=16)
              for c in WIDTH_CASES['all'])
  head = schema.specs(src)[('head', 'kernel')]
  assert pz.multiplier(src, head) != pz.multiplier(dst, head)
  p = _params(src)
  fresh = _params(dst, seed=1) if method == 'zero' else None
  assert_same_function(src, p, dst, grow_width(p, src, dst, method, fresh=fresh))
  # Control: the same growth without the muP rescale (as if 'sp') changes the function.
  sp = [dataclasses.replace(c, parametrization='sp') for c in (src, dst)]
  unscaled = grow_width(p, *sp, method, fresh=fresh)
  err = np.max(np.abs(logits(dst, unscaled) - logits(src, p))) / np.max(np.abs(logits(src, p)))
  assert err > 1e-1
  _apply.cache_clear()


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize('src, dst, kw, match', [
    (SRC, cfg(d_model=24), {}, 'multiple of src model.d_model=16'),
    (SRC, cfg(d_ff=16), {}, 'cannot shrink model.d_ff'),
    (cfg(tie_embeddings=True), cfg(tie_embeddings=True, d_model=32), {}, 'tie_embeddings'),
    (cfg(head_dim=0), cfg(head_dim=0, d_model=32), {}, 'model.head_dim'),
    (cfg(n_heads=4, n_kv_heads=2), cfg(n_heads=4, n_kv_heads=4), {}, 'query group'),
    (SRC, cfg(n_layers=4, d_model=32), {}, 'keeps model.n_layers'),
    (SRC, cfg(d_model=32), {'method': 'zero'}, 'needs fresh='),
    (SRC, cfg(d_model=32), {'method': 'stretch'}, "allowed: 'split', 'zero', 'random'"),
])
def test_width_errors(src, dst, kw, match):
  kw = {'method': 'split', **kw}
  with pytest.raises(ValueError, match=match):
    grow_width(_params(src), src, dst, kw.pop('method'), **kw)


def test_tree_shape_must_match_src_config():
  with pytest.raises(ValueError, match='param embed/embedding: the src leaf has shape'):
    grow_width(_params(cfg(d_model=32)), SRC, cfg(d_model=64), 'split')
