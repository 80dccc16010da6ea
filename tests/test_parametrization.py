"""The muP column of the parametrization table and the per-tensor lr / weight decay the
optimizer takes from it (jaxlab.models.parametrization, jaxlab.optim.build)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.config import ModelConfig, OptimConfig
from jaxlab.models import Transformer
from jaxlab.models import parametrization as pz
from jaxlab.optim import make_optimizer
from jaxlab.optim.build import param_groups

# Base width 64; d_ff and head_dim left to scale with d_model (the defaults).
BASE = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   parametrization='mup', base_d_model=64)
KEYS = [('embed', 'embedding'), ('attn', 'wq'), ('attn', 'wk'), ('attn', 'wv'), ('attn', 'wo'),
        ('mlp', 'w_gate'), ('mlp', 'w_up'), ('mlp', 'w_down'), ('head', 'kernel'),
        ('attn_norm', 'scale'), ('final_norm', 'scale')]


def wide(d_model, **kw):
  return dataclasses.replace(BASE, d_model=d_model, **kw)


def init_params(cfg, seed=0):
  return nn.unbox(Transformer(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32)))[
      'params']


def leaf(params, key):
  return params['layers'][key[0]][key[1]] if key[0] in ('attn', 'mlp', 'attn_norm', 'mlp_norm') \
      else params[key[0]][key[1]]


@pytest.mark.parametrize('d_model', [128, 256])
def test_mup_table_values_written_out(d_model):
  cfg = wide(d_model)
  m = d_model / 64
  D, F, K, H = cfg.d_model, cfg.ff_dim, cfg.dim_per_head, cfg.n_heads
  base_F = cfg.ff_dim / m      # base_d_ff=0: d_ff scales with d_model
  assert pz.base_dims(cfg) == {'d_model': 64, 'd_ff': base_F, 'head_dim': 16}
  # Hand-written: (key, role, fan_in, width multiplier, init std, lr scale, wd scale at e=0.5)
  rows = [
      (('embed', 'embedding'), 'embedding', 1, m, 0.02, 1.0, 1.0),
      (('attn', 'wq'), 'hidden', D, m, D ** -0.5, 1 / m, m ** 0.5),
      (('attn', 'wk'), 'hidden', D, m, D ** -0.5, 1 / m, m ** 0.5),
      (('attn', 'wv'), 'hidden', D, m, D ** -0.5, 1 / m, m ** 0.5),
      (('attn', 'wo'), 'hidden', H * K, K / 16, (H * K) ** -0.5, 16 / K, (K / 16) ** 0.5),
      (('mlp', 'w_gate'), 'hidden', D, m, D ** -0.5, 1 / m, m ** 0.5),
      (('mlp', 'w_up'), 'hidden', D, m, D ** -0.5, 1 / m, m ** 0.5),
      (('mlp', 'w_down'), 'hidden', F, F / base_F, F ** -0.5, 1 / m, m ** 0.5),
      (('head', 'kernel'), 'output', D, m, D ** -0.5, 1.0, 1.0),
      (('attn_norm', 'scale'), 'norm', 1, m, 0.0, 1.0, 0.0),
      (('final_norm', 'scale'), 'norm', 1, m, 0.0, 1.0, 0.0),
  ]
  params = init_params(cfg)
  lr, wd = pz.optimizer_scales(params, cfg, wd_width_exponent=0.5)
  for key, role, fan_in, mult, std, lr_s, wd_s in rows:
    assert pz.role_of(key) == role
    assert pz.width_mult(cfg, key) == pytest.approx(mult, rel=1e-12), key
    assert pz.init_std(cfg, role, fan_in, key) == pytest.approx(std, rel=1e-12), key
    assert leaf(lr, key) == pytest.approx(lr_s, rel=1e-12), key
    assert leaf(wd, key) == pytest.approx(wd_s, rel=1e-12), key
    x = leaf(params, key)
    if std:   # >= 6k samples: the std estimate is within ~1% (5 sigma < 5%)
      assert float(jnp.std(x)) == pytest.approx(std, rel=0.05), key
  assert pz.multiplier(cfg, 'output') == pytest.approx(1 / m)
  for role in ('embedding', 'hidden', 'norm'):
    assert pz.multiplier(cfg, role) == 1.0
  # 1/d_head attention with microsoft/mup's sqrt(base d_head) factor.
  assert pz.attention_scale(cfg) == pytest.approx(16 ** 0.5 / K)
  assert pz.attention_scale(cfg) != pytest.approx(K ** -0.5)


def test_explicit_base_shapes():
  # n_heads scale with width at a fixed head dim; d_ff fixed at 256 while d_model grows.
  cfg = dataclasses.replace(BASE, d_model=256, n_heads=16, n_kv_heads=16, head_dim=16,
                            d_ff=256, base_d_ff=256)
  assert pz.width_mult(cfg, ('mlp', 'w_down')) == 1.0        # fan-in F did not grow
  assert pz.width_mult(cfg, ('attn', 'wo')) == 1.0           # base_head_dim -> head_dim
  assert pz.width_mult(cfg, ('attn', 'wq')) == 4.0
  assert pz.attention_scale(cfg) == pytest.approx(16 ** -0.5)
  _, groups = param_groups(init_params(cfg), OptimConfig(), cfg)
  # wq/wk/wv/w_gate/w_up at lr/4; wo, w_down at lr (their fan-in is the base one).
  assert sorted(groups.values()) == [(0.25, 1.0), (1.0, 0.0), (1.0, 1.0)]


def test_mup_at_base_width_is_sp_exactly():
  mup = dataclasses.replace(BASE, d_model=128, base_d_model=128)
  sp = dataclasses.replace(mup, parametrization='sp', base_d_model=0)
  p_mup, p_sp = init_params(mup), init_params(sp)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), p_mup, p_sp))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
  np.testing.assert_array_equal(Transformer(mup).apply({'params': p_mup}, tokens),
                                Transformer(sp).apply({'params': p_sp}, tokens))
  # The optimizer too, with every width rule in force (e = 1, decay on).
  ocfg = OptimConfig(weight_decay=0.1, wd_width_exponent=1.0, grad_clip=0.0)
  schedule = optax.constant_schedule(1e-2)
  grads = jax.tree.map(lambda x: jnp.sin(x * 7.0 + 1.0), p_sp)
  (u_mup, _), (u_sp, _) = [
      make_optimizer(ocfg, c, schedule).update(grads, make_optimizer(ocfg, c, schedule).init(p),
                                               p) for c, p in ((mup, p_mup), (sp, p_sp))]
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u_mup, u_sp))


@pytest.mark.parametrize('name', ['adamw', 'sgd'])
def test_per_tensor_lr_and_weight_decay_applied(name):
  """One optimizer step against a hand computation of each leaf's update."""
  cfg = wide(256)                                   # m = 4
  params = init_params(cfg)
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x) - 0.5, params)
  lr, wd, e = 1e-2, 0.1, 0.5
  ocfg = OptimConfig(name=name, lr=lr, weight_decay=wd, wd_width_exponent=e, grad_clip=0.0,
                     b1=0.9, b2=0.95, eps=1e-8, momentum=0.0)
  tx = make_optimizer(ocfg, cfg, optax.constant_schedule(lr))
  updates, _ = tx.update(grads, tx.init(params), params)

  def expected(path, p, g):
    key = pz.dict_keys(path)
    role = pz.role_of(key)
    lr_s = 0.25 if role == 'hidden' else 1.0
    wd_s = {'hidden': 4 ** e, 'norm': 0.0}.get(role, 1.0)
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    if name == 'adamw':     # first step: m_hat = g, v_hat = g^2; decoupled, lr-coupled decay
      u = g / (np.abs(g) + 1e-8) + wd * wd_s * p
    else:                   # sgd: L2 decay joins the gradient
      u = g + wd * wd_s * p
    return -lr * lr_s * u
  want = jax.tree_util.tree_map_with_path(expected, params, grads)
  for (path, got), w in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                            jax.tree.leaves(want)):
    # float32 arithmetic on O(1e-2) updates: rel 1e-5 is ~100 ulp of slack.
    np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5, atol=1e-9, err_msg=str(path))


def test_groups_are_named_after_roles_and_state_is_grouped():
  cfg = wide(128)
  labels, groups = param_groups(init_params(cfg), OptimConfig(), cfg)
  assert groups == {'embedding+output': (1.0, 1.0), 'hidden': (0.5, 1.0), 'norm': (1.0, 0.0)}
  assert labels['layers']['attn']['wq'] == 'hidden'
  sp_groups = param_groups(init_params(wide(128, parametrization='sp')), OptimConfig(),
                           wide(128, parametrization='sp'))[1]
  assert sp_groups == {'embedding+hidden+output': (1.0, 1.0), 'norm': (1.0, 0.0)}


def test_zero_init_options_and_bias_role():
  cfg = wide(128, zero_init_head=True, zero_init_query=True)
  p = init_params(cfg)
  assert not np.any(p['head']['kernel']) and not np.any(p['layers']['attn']['wq'])
  assert np.all(np.std(p['layers']['attn']['wk']) > 0)
  assert pz.init_std(cfg, 'output', 128, ('head', 'kernel')) == 0.0
  assert pz.role_of(('layers', 'attn', 'bias')) == 'bias'
  assert pz.initializer(cfg, 'bias', 1)(jax.random.key(0), (3,)).tolist() == [0, 0, 0]
