"""jaxlab.growth.multilevel: coalesce / de-coalesce / interpolate and the V-cycle schedule.

Tolerances: with factor-2 groupings the round trip is bit-exact (halving, doubling and
averaging two equal float32 values are exact in binary floating point), so it is checked
with array_equal. Factor 3 divides by 3 (one rounding) and sums three copies (up to two
more), and a muP ratio r followed by 1/r rounds twice: a few float32 ulps, rtol 1e-6.
Logits of a de-coalesced model differ from the small model's only by float32
summation order over twice as many terms: 1e-5.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.config import ModelConfig
from jaxlab.growth import multilevel as ml
from jaxlab.models import Transformer
from jaxlab.models import parametrization as pz

# Big: D=32, F=64, H=4, G=2, K=8, L=4. Small models divide width and / or depth by 2.
BIG = ModelConfig(vocab_size=32, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=64)
SMALL_W = dataclasses.replace(BIG, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32)
SMALL_D = dataclasses.replace(BIG, n_layers=2)
SMALL_WD = dataclasses.replace(SMALL_W, n_layers=2)
# Factor 3 in every dim (K=8 kept).
BIG3 = ModelConfig(vocab_size=32, d_model=24, n_layers=3, n_heads=3, n_kv_heads=3, d_ff=48)
SMALL3 = dataclasses.replace(BIG3, d_model=8, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=16)
# Query heads halve, kv heads stay: only 'adjacent' keeps GQA consistent.
SMALL_Q = dataclasses.replace(BIG, d_model=16, n_heads=2, n_kv_heads=2, d_ff=32)
B, T = 2, 8


def tied(cfg):
  return dataclasses.replace(cfg, tie_embeddings=True)


def tokens(cfg, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)


@functools.lru_cache(maxsize=None)
def shapes(cfg):
  init = Transformer(cfg).init
  return nn.unbox(jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))['params']


def random_tree(cfg, seed=0, positive=False):
  """Every leaf random (norm gains around 1) so no operator can pass by accident. (numpy's
  generator: jax.random would compile once per leaf shape.)"""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    x = rng.standard_normal(s.shape).astype(np.float32)
    if positive:
      return jnp.asarray(np.abs(x))
    return jnp.asarray(1.0 + 0.3 * x if path[-1].key == 'scale' else 0.3 * x)

  return jax.tree_util.tree_map_with_path(leaf, shapes(cfg))


@functools.lru_cache(maxsize=None)
def apply_fn(cfg):
  return jax.jit(lambda p, tok: Transformer(cfg).apply({'params': p}, tok))


def assert_trees(a, b, exact=True, rtol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    if exact:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


def assert_shapes(tree, cfg):
  """Same tree structure, leaf shapes and dtypes as jax.eval_shape of Transformer(cfg).init."""
  want = shapes(cfg)
  assert jax.tree.structure(tree) == jax.tree.structure(want)
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(want)):
    assert (x.shape, x.dtype) == (s.shape, s.dtype)


@pytest.fixture
def fake_mup(monkeypatch):
  """A width-dependent table (muP's per-tensor widths against a base model of d_model 16)
  with no multiplier equal to 1 away from the base: every leaf's rescale is exercised.
  The roles table is shared by every parametrization, so the patch is applied only when
  a test asks for a fake config, and jitted forwards traced under it are dropped."""
  yield functools.partial(_fake_config, monkeypatch)
  apply_fn.cache_clear()


def _fake_config(monkeypatch, cfg):
  if pz.ROLES['hidden'].multiplier(pz.Widths(4.0, 4.0, True, True)) == 1.0:   # not patched
    _patch_fake_roles(monkeypatch)
    apply_fn.cache_clear()
  return dataclasses.replace(cfg, parametrization='mup', base_d_model=16, base_n_heads=2,
                             base_d_ff=16)


def _patch_fake_roles(monkeypatch):
  for name, mult in (('embedding', lambda w: 1.5 * w.m), ('hidden', lambda w: w.m ** -0.5),
                     ('output', lambda w: 0.7 / w.m), ('norm', lambda w: 1.3 * w.m)):
    monkeypatch.setitem(pz.ROLES, name, dataclasses.replace(pz.ROLES[name], multiplier=mult))
  monkeypatch.setitem(pz.PARAMETRIZATIONS, 'mup', pz.Parametrization(
      base=pz.base_model,
      attn_scale=lambda cfg, base: cfg.dim_per_head ** -0.5 * base.d_model / cfg.d_model))


# -------------------------------------------------------------------- coalescing matrix

def test_coalescing_matrix_by_hand():
  np.testing.assert_array_equal(ml.coalescing_matrix(4, 2, 'stride'),
                                [[1, 0, 1, 0], [0, 1, 0, 1]])
  np.testing.assert_array_equal(ml.coalescing_matrix(4, 2, 'adjacent'),
                                [[1, 1, 0, 0], [0, 0, 1, 1]])
  np.testing.assert_array_equal(ml.unit_groups(6, 2, 'stride'), [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(ml.unit_groups(6, 2, 'adjacent'), [0, 0, 0, 1, 1, 1])


HAND_BIG = ModelConfig(vocab_size=8, d_model=4, n_layers=1, n_heads=2, head_dim=2, d_ff=4)
HAND_SMALL = dataclasses.replace(HAND_BIG, d_model=2)


@pytest.mark.parametrize('grouping, w_up_rows, w_down_cols', [
    # w_up (D=4 in, F=4 out) = arange(16).reshape(4, 4): inputs summed over d-groups.
    # w_down (F=4 in, D=4 out), same values: outputs averaged over d-groups.
    ('stride', [[8, 10, 12, 14], [16, 18, 20, 22]], [[1, 2], [5, 6], [9, 10], [13, 14]]),
    ('adjacent', [[4, 6, 8, 10], [20, 22, 24, 26]],
     [[0.5, 2.5], [4.5, 6.5], [8.5, 10.5], [12.5, 14.5]]),
])
def test_coalesce_d4_to_d2_by_hand(grouping, w_up_rows, w_down_cols):
  tree = jax.tree.map(lambda s: jnp.arange(np.prod(s.shape), dtype=jnp.float32).reshape(s.shape),
                      shapes(HAND_BIG))
  out = ml.coalesce(tree, HAND_BIG, HAND_SMALL, grouping=grouping)
  np.testing.assert_array_equal(out['layers']['mlp']['w_up'][0], w_up_rows)
  np.testing.assert_array_equal(out['layers']['mlp']['w_down'][0], w_down_cols)
  np.testing.assert_array_equal(out['final_norm']['scale'],
                                [1, 2] if grouping == 'stride' else [0.5, 2.5])
  # Unchanged dims pass through: the wq head axes, the head kernel's vocab axis.
  assert out['layers']['attn']['wq'].shape == (1, 2, 2, 2)


@pytest.mark.parametrize('grouping', ml.GROUPINGS)
def test_coalesce_is_F_in_W_normF_out(grouping):
  """W' = F_in . W . norm(F_out)^T on every matrix (heads expand to kron(F_H, I_K))."""
  big, small = BIG, SMALL_W
  tree = random_tree(big)
  out = ml.coalesce(tree, big, small, grouping=grouping)
  K = big.dim_per_head

  def F(n_big, n_small, per=1):
    return np.kron(ml.coalescing_matrix(n_big, n_small, grouping), np.eye(per))

  def norm(f):
    return f / f.sum(1, keepdims=True)

  FD, FF = F(big.d_model, small.d_model), F(big.ff_dim, small.ff_dim)
  FH, FG = F(big.n_heads, small.n_heads, K), F(big.kv_heads, small.kv_heads, K)
  cases = [('mlp', 'w_up', FD, FF), ('mlp', 'w_down', FF, FD), ('attn', 'wq', FD, FH),
           ('attn', 'wk', FD, FG), ('attn', 'wo', FH, FD)]
  for module, name, f_in, f_out in cases:
    w = np.asarray(tree['layers'][module][name][1], np.float64)
    w = w.reshape(f_in.shape[1], f_out.shape[1])
    got = np.asarray(out['layers'][module][name][1]).reshape(f_in.shape[0], f_out.shape[0])
    np.testing.assert_allclose(got, f_in @ w @ norm(f_out).T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['embed']['embedding'],
                             np.asarray(tree['embed']['embedding']) @ norm(FD).T, rtol=1e-5)


def test_depth_merges_consecutive_layers_and_copies_back():
  tree = random_tree(BIG)
  gain_LxD = np.asarray(tree['layers']['attn_norm']['scale'])
  out = ml.coalesce(tree, BIG, SMALL_D)
  np.testing.assert_allclose(out['layers']['attn_norm']['scale'],
                             (gain_LxD[0::2] + gain_LxD[1::2]) / 2, rtol=1e-6)
  small = random_tree(SMALL_D, seed=3)
  up = ml.decoalesce(small, SMALL_D, BIG)
  np.testing.assert_array_equal(up['layers']['mlp']['w_up'],
                                np.asarray(small['layers']['mlp']['w_up'])[[0, 0, 1, 1]])


def _authors_depth_mapping(small_layers: int):
  """A port of the mapping in Zou et al.'s scripts: map_tools/config/L6-H6.json gives
  depth_scheme [[0, 6], [1, 7], ..., [5, 11]] for 12 -> 6 layers: small layer i is the mean
  of the big layers its entry lists, and de-coalescing puts small layer i back at each of
  them. Written for any L_small the same way: entry i = [i, i + L_small]."""
  return [[i, i + small_layers] for i in range(small_layers)]


def _port_coalesce(tree, scheme):
  def leaf(path, x):
    if path[0].key != 'layers':
      return x
    return np.stack([np.mean([np.asarray(x)[j] for j in entry], axis=0) for entry in scheme])
  return jax.tree_util.tree_map_with_path(leaf, tree)


def _port_decoalesce(tree, scheme, big_layers):
  where = {j: i for i, entry in enumerate(scheme) for j in entry}

  def leaf(path, x):
    if path[0].key != 'layers':
      return x
    return np.stack([np.asarray(x)[where[j]] for j in range(big_layers)])
  return jax.tree_util.tree_map_with_path(leaf, tree)


@pytest.mark.parametrize('big_layers', [4, 12])
def test_stride_depth_is_the_authors_scheme(big_layers):
  """growth.depth_grouping=stride against the port of the scripts' depth_scheme, leaf by
  leaf (coalescing every layer tensor, de-coalescing the small stack twice)."""
  big = dataclasses.replace(BIG, n_layers=big_layers)
  small = dataclasses.replace(big, n_layers=big_layers // 2)
  scheme = _authors_depth_mapping(big_layers // 2)
  tree = random_tree(big, seed=7)
  got = ml.coalesce(tree, big, small, depth_grouping='stride')
  want = _port_coalesce(tree, scheme)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)
  small_tree = random_tree(small, seed=8)
  got = ml.decoalesce(small_tree, small, big, depth_grouping='stride')
  want = _port_decoalesce(small_tree, scheme, big_layers)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  back = ml.coalesce(ml.decoalesce(small_tree, small, big, depth_grouping='stride'), big, small,
                     depth_grouping='stride')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), back, small_tree)
  # ... and it differs from the adjacent grouping (the default) in every layer tensor.
  adjacent = ml.coalesce(tree, big, small)
  strided = ml.coalesce(tree, big, small, depth_grouping='stride')
  assert not np.allclose(adjacent['layers']['attn']['wq'], strided['layers']['attn']['wq'])


# --------------------------------------------------------------------------- round trip

PAIRS = {'width': (SMALL_W, BIG), 'depth': (SMALL_D, BIG), 'both': (SMALL_WD, BIG),
         'gqa_q_only': (SMALL_Q, BIG), 'factor3': (SMALL3, BIG3)}


ROUND_TRIPS = [(pair, grouping, False) for pair in PAIRS for grouping in ml.GROUPINGS
               if (pair, grouping) != ('gqa_q_only', 'stride')]   # see test_gqa_grouping
ROUND_TRIPS += [('both', grouping, True) for grouping in ml.GROUPINGS]


@pytest.mark.parametrize('pair, grouping, tie', ROUND_TRIPS)
def test_coalesce_of_decoalesce_is_identity(pair, grouping, tie):
  small, big = PAIRS[pair]
  if tie:
    small, big = tied(small), tied(big)
  tree = random_tree(small)
  up = ml.decoalesce(tree, small, big, grouping=grouping)
  back = ml.coalesce(up, big, small, grouping=grouping)
  assert_trees(back, tree, exact=pair != 'factor3')


@pytest.mark.parametrize('tie', [False, True])
def test_output_shapes_match_the_target_model(tie):
  """Structure, shapes and dtypes (traced with jax.eval_shape: nothing is compiled)."""
  small, big = (tied(SMALL_WD), tied(BIG)) if tie else (SMALL_WD, BIG)
  for moments in (False, True):
    up = jax.eval_shape(lambda t: ml.decoalesce(t, small, big, moments=moments), shapes(small))
    assert_shapes(up, big)
    down = jax.eval_shape(lambda t: ml.coalesce(t, big, small, moments=moments), shapes(big))
    assert_shapes(down, small)


def test_round_trip_with_fake_mup_is_identity_to_rounding(fake_mup):
  small, big = fake_mup(SMALL_WD), fake_mup(BIG)
  tree = random_tree(small)
  back = ml.coalesce(ml.decoalesce(tree, small, big), big, small)
  assert_trees(back, tree, exact=False)


# -------------------------------------------------------------------------- interpolate

def test_interpolate_endpoints_and_midpoint():
  big_tree, small_tree = random_tree(BIG), random_tree(SMALL_WD, seed=5)
  up = ml.decoalesce(small_tree, SMALL_WD, BIG)
  assert_trees(ml.interpolate(big_tree, small_tree, SMALL_WD, BIG, alpha=0.0), big_tree)
  assert_trees(ml.interpolate(big_tree, small_tree, SMALL_WD, BIG, alpha=1), up)
  mixed = ml.interpolate(big_tree, small_tree, SMALL_WD, BIG)   # alpha 0.25
  # Up to float32 rounding (XLA may fuse the multiply-add).
  want = jax.tree.map(lambda b, u: 0.75 * b + 0.25 * u, big_tree, up)
  for x, y in zip(jax.tree.leaves(mixed), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('alpha', [-0.1, 1.5, float('nan')])
def test_interpolate_rejects_alpha_out_of_range(alpha):
  with pytest.raises(ValueError, match=r'alpha=.* must be in \[0, 1\]'):
    ml.interpolate(random_tree(BIG), random_tree(SMALL_W), SMALL_W, BIG, alpha=alpha)


# ----------------------------------------------------------------------------- moments

def test_moments_stay_nonnegative_copy_without_division_and_skip_mup(fake_mup):
  small, big = fake_mup(SMALL_WD), fake_mup(BIG)
  nu_small, nu_big = random_tree(small, positive=True), random_tree(big, 1, positive=True)
  up = ml.decoalesce(nu_small, small, big, moments=True)
  # Pure copies: stride puts copy j of small unit s at j * n_small + s; layers repeat.
  w_down = np.asarray(nu_small['layers']['mlp']['w_down'])
  np.testing.assert_array_equal(up['layers']['mlp']['w_down'],
                                np.tile(w_down, (1, 2, 2))[[0, 0, 1, 1]])
  np.testing.assert_array_equal(up['embed']['embedding'],
                                np.tile(nu_small['embed']['embedding'], (1, 2)))
  assert_trees(ml.coalesce(up, big, small, moments=True), nu_small)
  for tree in (up, ml.coalesce(nu_big, big, small, moments=True),
               ml.interpolate(nu_big, nu_small, small, big, alpha=0.3, moments=True)):
    assert all(bool((x >= 0).all()) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------ GQA

@pytest.mark.parametrize('grouping', ml.GROUPINGS)
@pytest.mark.parametrize('h_big, g_big, h_small, g_small', [
    (4, 2, 2, 1), (8, 4, 4, 2), (8, 2, 4, 1), (4, 2, 2, 2), (8, 4, 8, 2), (8, 8, 4, 4),
    (8, 1, 2, 1), (8, 4, 2, 2)])
def test_gqa_grouping(grouping, h_big, g_big, h_small, g_small):
  """A merged query head reads the merge of the kv heads its members read; 'adjacent'
  always achieves it, 'stride' when query and kv heads shrink by the same factor or G=1."""
  big = ModelConfig(vocab_size=8, d_model=8 * h_big, n_heads=h_big, n_kv_heads=g_big,
                    head_dim=8, d_ff=16, n_layers=1)
  small = dataclasses.replace(big, d_model=8 * h_small, n_heads=h_small, n_kv_heads=g_small)
  q_small_H = ml.unit_groups(h_big, h_small, grouping)
  kv_big_H = np.arange(h_big) // (h_big // g_big)
  consistent = all(ml.unit_groups(g_big, g_small, grouping)[kv_big_H[h]]
                   == q_small_H[h] // (h_small // g_small) for h in range(h_big))
  expect = grouping == 'adjacent' or h_big // h_small == g_big // g_small or g_small == 1
  assert consistent == expect
  def coalesce(tree):
    return ml.coalesce(tree, big, small, grouping=grouping)

  if consistent:
    assert_shapes(jax.eval_shape(coalesce, shapes(big)), small)
  else:
    with pytest.raises(ValueError, match="breaks grouped-query attention.*'adjacent'"):
      jax.eval_shape(coalesce, shapes(big))


# ------------------------------------------------------------------ function preserving

@pytest.mark.parametrize('grouping, tie, mup', [
    ('stride', False, False), ('adjacent', False, False), ('stride', True, True),
    ('adjacent', True, True)])
def test_width_decoalesce_preserves_logits(grouping, tie, mup, fake_mup):
  """Copied residual units keep RMSNorm statistics, input-side /k undoes the k-fold sums,
  copied heads read copied kv heads: the width-de-coalesced model computes the same
  logits (tied: the final gain / k_D compensates the readout; muP: the multiplier ratios)."""
  small, big = SMALL_W, dataclasses.replace(BIG, n_layers=SMALL_W.n_layers)
  if tie:
    small, big = tied(small), tied(big)
  if mup:
    small, big = fake_mup(small), fake_mup(big)
  params = random_tree(small)
  tok = tokens(small)
  want = apply_fn(small)(params, tok)
  got = apply_fn(big)(ml.decoalesce(params, small, big, grouping=grouping), tok)
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('small, big', [(SMALL_Q, dataclasses.replace(BIG, n_layers=4)),
                                        (SMALL3, dataclasses.replace(BIG3, n_layers=1))])
def test_width_decoalesce_preserves_logits_gqa_and_factor3(small, big):
  params = random_tree(small)
  tok = tokens(small)
  got = apply_fn(big)(ml.decoalesce(params, small, big, grouping='adjacent'), tok)
  want = apply_fn(small)(params, tok)
  # The wide model sums k-fold more (rescaled) terms: its rounding error scales with the
  # logits, not with each element. Measured worst |got - want| / max|want|: 1.0e-6 at
  # XLA:CPU's default -O3, 3.4e-6 at the tests' -O0 (tests/xla_env.py).
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize('small, match', [
    (dataclasses.replace(BIG, d_ff=48), 'ff_dim: .* must divide'),
    (dataclasses.replace(BIG, n_layers=3), 'n_layers: .* must divide'),
    (dataclasses.replace(BIG, d_model=16), 'head dim differs'),
    (dataclasses.replace(BIG, vocab_size=16), 'vocab_size differs'),
    (tied(SMALL_W), 'tie_embeddings differs'),
    (dataclasses.replace(BIG, d_model=64, n_heads=8, n_kv_heads=4, d_ff=128), 'd_model: .*'),
])
def test_config_errors(small, match):
  with pytest.raises(ValueError, match=match):
    ml.coalesce(random_tree(BIG), BIG, small)


def test_tree_errors():
  with pytest.raises(ValueError, match=r'embed/embedding has shape \(32, 16\); model .* needs \(32, 32\)'):
    ml.coalesce(random_tree(SMALL_W), BIG, SMALL_W)
  with pytest.raises(ValueError, match="param 'head/kernel' is not declared by the model"):
    ml.coalesce(random_tree(BIG), tied(BIG), tied(SMALL_W))
  with pytest.raises(ValueError, match='unboxed'):
    boxed = jax.tree.map(lambda x: nn.Partitioned(x, (None,) * x.ndim), random_tree(BIG))
    ml.coalesce(boxed, BIG, SMALL_W)
  with pytest.raises(ValueError, match="grouping='pairs' is not known"):
    ml.coalesce(random_tree(BIG), BIG, SMALL_W, grouping='pairs')
  # The 'params' level is accepted.
  out = ml.coalesce({'params': random_tree(BIG)}, BIG, SMALL_W)
  assert out['params']['embed']['embedding'].shape == (32, 16)


# ----------------------------------------------------------------------------- coarsen

def test_coarsen():
  assert ml.coarsen(BIG) == dataclasses.replace(SMALL_W, head_dim=8)
  auto = ModelConfig(d_model=96, n_heads=4, n_kv_heads=1, n_layers=4)   # ff_dim 256, G=1 kept
  small = ml.coarsen(auto, width=2, depth=2)
  assert (small.d_model, small.ff_dim, small.n_heads, small.kv_heads, small.n_layers,
          small.dim_per_head) == (48, 128, 2, 1, 2, 24)
  with pytest.raises(ValueError, match='n_layers=4 is not divisible'):
    ml.coarsen(BIG, depth=3)
  with pytest.raises(ValueError, match='width=0 must be an integer >= 1'):
    ml.coarsen(BIG, width=0)


# ----------------------------------------------------------------------------- V-cycle

def test_vcycle_one_level():
  P = ml.VCyclePhase
  assert ml.vcycle_schedule(100, big_steps_before=10, small_steps=30) == [
      P(0, 'train', 0, 10), P(10, 'coalesce', 1), P(10, 'train', 1, 30),
      P(40, 'interpolate', 0), P(40, 'train', 0, 60)]


def test_vcycle_two_levels_recurse():
  P = ml.VCyclePhase
  phases = ml.vcycle_schedule(100, big_steps_before=10, small_steps=20, levels=2)
  assert phases == [
      P(0, 'train', 0, 10), P(10, 'coalesce', 1), P(10, 'train', 1, 10), P(20, 'coalesce', 2),
      P(20, 'train', 2, 20), P(40, 'interpolate', 1), P(40, 'train', 1, 10),
      P(50, 'interpolate', 0), P(50, 'train', 0, 50)]
  assert ml.train_steps_per_level(phases) == {0: 60, 1: 20, 2: 20}


def test_vcycle_edges_and_errors():
  phases = ml.vcycle_schedule(30, big_steps_before=0, small_steps=30)
  assert [p.event for p in phases] == ['coalesce', 'train', 'interpolate']
  assert sum(p.steps for p in phases) == 30
  with pytest.raises(ValueError, match='too short for a 2-level V-cycle.* 50 steps'):
    ml.vcycle_schedule(49, big_steps_before=10, small_steps=20, levels=2)
  with pytest.raises(ValueError, match='levels=0 must be an integer >= 1'):
    ml.vcycle_schedule(10, big_steps_before=1, small_steps=1, levels=0)
  with pytest.raises(ValueError, match='big_steps_before=-1'):
    ml.vcycle_schedule(10, big_steps_before=-1, small_steps=1)


def test_qk_norm_needs_no_rule_of_its_own():
  """QK-norm gains (over the fixed head dim) de-coalesce by copying whole heads' shared
  gain: the widened model computes the same logits, and coalesce undoes de-coalesce."""
  small = dataclasses.replace(SMALL_W, qk_norm=True)
  big = dataclasses.replace(BIG, n_layers=SMALL_W.n_layers, qk_norm=True)
  params = random_tree(small)
  tok = tokens(small)
  up = ml.decoalesce(params, small, big)
  np.testing.assert_allclose(apply_fn(big)(up, tok), apply_fn(small)(params, tok),
                             rtol=1e-5, atol=1e-5)
  back = ml.coalesce(up, big, small)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
