"""The parametrization table (jaxlab.models.parametrization) against microsoft/mup 1.0.0,
and the per-tensor lr / weight decay the optimizer takes from it (jaxlab.optim.build)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.config.types import ConfigError, ModelConfig, OptimConfig
from jaxlab.models import Transformer, schema
from jaxlab.models import parametrization as pz
from jaxlab.optim import make_optimizer
from jaxlab.optim.build import param_groups

# ------------------------------------------------------------------ parity with mup 1.0.0
# Base model d 64 -> target d 256 (m = 4), one layer, vocab 97, GQA 4:2 (8:4 ... when heads
# scale). Three ways a LLaMA widens:
PARITY = {
    # heads fixed, the head dim scales (16 -> 64); d_ff = 4 d, explicit (its ratio kept)
    'heads_fixed': ModelConfig(vocab_size=97, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2,
                               d_ff=1024, parametrization='mup', base_d_model=64),
    # heads scale (4 -> 16) at a fixed head dim 16; d_ff = 4 d
    'head_dim_fixed': ModelConfig(vocab_size=97, d_model=256, n_layers=1, n_heads=16,
                                  n_kv_heads=8, head_dim=16, d_ff=1024, parametrization='mup',
                                  base_d_model=64),
    # d_ff by LLaMA's rule (704 at d 256) and model.base_d_ff left to default: the base
    # model's own rule gives 192 at d 64 (not 704 / 4 = 176)
    'llama_dff': ModelConfig(vocab_size=97, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2,
                             parametrization='mup', base_d_model=64),
}
_S = 256 ** -0.5    # SP init std of a fan-in-256 matrix
# Per tensor: (init std, forward multiplier, Adam lr scale, SGD lr scale, AdamW wd scale).
_VEC = (1.0, 1.0, 4.0, 1.0)              # multiplier, Adam lr, SGD lr, AdamW wd of a vector
_MAT = (1.0, 0.25, 1.0, 4.0)             # ... of a matrix whose fan-in and fan-out grow 4x
MUP_NUMBERS = {
    'heads_fixed': {
        'embed/embedding': (0.02,) + _VEC, 'final_norm/scale': (0.0,) + _VEC,
        'layers/attn_norm/scale': (0.0,) + _VEC, 'layers/mlp_norm/scale': (0.0,) + _VEC,
        'layers/attn/wq': (_S,) + _MAT, 'layers/attn/wk': (_S,) + _MAT,
        'layers/attn/wv': (_S,) + _MAT, 'layers/attn/wo': (_S,) + _MAT,
        'layers/mlp/w_gate': (_S,) + _MAT, 'layers/mlp/w_up': (_S,) + _MAT,
        'layers/mlp/w_down': (1024 ** -0.5,) + _MAT,
        'head/kernel': (2 * _S, 0.25, 1.0, 4.0, 1.0)},
    'head_dim_fixed': {
        'embed/embedding': (0.02,) + _VEC, 'final_norm/scale': (0.0,) + _VEC,
        'layers/attn_norm/scale': (0.0,) + _VEC, 'layers/mlp_norm/scale': (0.0,) + _VEC,
        'layers/attn/wq': (_S,) + _MAT, 'layers/attn/wk': (_S,) + _MAT,
        'layers/attn/wv': (_S,) + _MAT, 'layers/attn/wo': (_S,) + _MAT,
        'layers/mlp/w_gate': (_S,) + _MAT, 'layers/mlp/w_up': (_S,) + _MAT,
        'layers/mlp/w_down': (1024 ** -0.5,) + _MAT,
        'head/kernel': (2 * _S, 0.25, 1.0, 4.0, 1.0)},
    'llama_dff': {
        'embed/embedding': (0.02,) + _VEC, 'final_norm/scale': (0.0,) + _VEC,
        'layers/attn_norm/scale': (0.0,) + _VEC, 'layers/mlp_norm/scale': (0.0,) + _VEC,
        'layers/attn/wq': (_S,) + _MAT, 'layers/attn/wk': (_S,) + _MAT,
        'layers/attn/wv': (_S,) + _MAT, 'layers/attn/wo': (_S,) + _MAT,
        'layers/mlp/w_gate': (_S, 1.0, 0.25, 0.9166666666666665, 4.0),
        'layers/mlp/w_up': (_S, 1.0, 0.25, 0.9166666666666665, 4.0),
        'layers/mlp/w_down': (704 ** -0.5, 1.0, 0.27272727272727276, 1.090909090909091,
                              3.6666666666666665),
        'head/kernel': (2 * _S, 0.25, 1.0, 4.0, 1.0)},
}


@pytest.mark.parametrize('name', list(PARITY))
def test_every_tensor_matches_microsoft_mup(name):
  """MUP_NUMBERS are microsoft/mup 1.0.0's, derived from its formulas and printed by
  bench/mup_reference.py (torch 2.13.0 + mup 1.0.0: a torch LLaMA of the same shapes,
  base d 64, `set_base_shapes(model, base)`, MuReadout head, MuAdam / MuSGD / MuAdamW at
  lr = wd = 1). For a tensor viewed as torch's (fan-out, fan-in) matrix, a dim is
  "infinite" when its size differs from the base model's; mup's width_mult is the last
  infinite dim's size / base size (the fan-in for a matrix).
    * matrices (two infinite dims; wq .. w_down): MuAdam lr / width_mult = 1/4 (w_down in
      llama_dff: fan-in 704/192 -> 192/704 = 0.2727...); MuSGD lr / (fanin_mult /
      fanout_mult): 1 when both grow 4x, 1 / (4 / (704/192)) = 0.91666 for w_gate / w_up
      and 1 / ((704/192) / 4) = 1.0909 for w_down in llama_dff; MuAdamW's weight decay x
      width_mult (4, or 704/192 = 3.6667). Init: mup keeps the SP init of a Linear
      (std ~ fan_in^-1/2, which jaxlab's init is) -> std fan_in^-1/2.
    * vectors (one infinite dim; embedding (vocab finite), norm gains, the MuReadout head
      (vocab finite)): MuAdam lr unchanged; MuSGD lr x width_mult = 4; MuAdamW decay
      unchanged. Init: unchanged (embedding 0.02, gains 1), except MuReadout, which
      set_base_shapes(rescale_params=True) multiplies by width_mult^1/2 = 2: the head's
      fan_in^-1/2 = 1/16 becomes 1/8 (std constant in width = the base model's 64^-1/2).
    * forward multiplier: MuReadout's output_mult / width_mult = 1/4 on the logits; 1
      elsewhere.
  In 'head_dim_fixed' wo's fan-in is heads x head_dim = 256 vs 64: width_mult 4 (the
  table before this schema used head_dim / base head_dim = 1 there, a 4x too large lr).
  jaxlab's muP gives norm gains no weight decay at all (Fan et al.'s lambda_1 = 0), which
  mup would decay: the wd column is compared on the decayed tensors only."""
  cfg = PARITY[name]
  specs = schema.specs(cfg)
  adam = pz.optimizer_scales(cfg, specs, 'adamw', wd_width_exponent=1.0)
  sgd = pz.optimizer_scales(cfg, specs, 'sgd', wd_width_exponent=1.0)
  assert set('/'.join(k) for k in specs) == set(MUP_NUMBERS[name])
  for path, param in specs.items():
    std, mult, adam_lr, sgd_lr, adamw_wd = MUP_NUMBERS[name]['/'.join(path)]
    got = (pz.init_std(cfg, param), pz.multiplier(cfg, param), adam[path][0], sgd[path][0])
    # The same arithmetic as mup's (1 / m, 1 / (m_in / m_out), ...): equal to the last bit,
    # but for the std, which is 256^-0.5 * 4^0.5 here and 1/16 * 2 in the table.
    assert got[1:] == (mult, adam_lr, sgd_lr), (path, got)
    assert got[0] == pytest.approx(std, rel=1e-15, abs=0), path
    if param.role not in ('norm', 'bias'):
      assert adam[path][1] == adamw_wd, path
    else:
      assert adam[path][1] == 0.0
  # Attention logits: 1/d_head with sqrt(base d_head) (mup's Transformer example).
  base_k = pz.base_model(cfg).dim_per_head
  assert base_k == 16
  assert pz.attention_scale(cfg) == 16 ** 0.5 / cfg.dim_per_head


def test_base_model_follows_the_targets_rules():
  assert pz.base_model(PARITY['heads_fixed']).n_heads == 4          # heads fixed
  assert pz.base_model(PARITY['head_dim_fixed']).n_heads == 4       # 16 * 64 / 256
  assert pz.base_model(PARITY['head_dim_fixed']).n_kv_heads == 2    # keeps the 2:1 ratio
  assert pz.base_model(PARITY['llama_dff']).ff_dim == 192           # LLaMA's rule at 64
  assert pz.base_model(PARITY['heads_fixed']).ff_dim == 256         # 4 d kept
  explicit = dataclasses.replace(PARITY['llama_dff'], base_d_ff=176, base_n_heads=2,
                                 base_head_dim=32)
  assert (pz.base_model(explicit).ff_dim, pz.base_model(explicit).n_heads,
          pz.base_model(explicit).dim_per_head) == (176, 2, 32)
  with pytest.raises(ConfigError, match='model.base_n_heads'):
    pz.base_model(dataclasses.replace(PARITY['head_dim_fixed'], base_d_model=40))


def test_a_dim_that_does_not_scale_makes_a_vector_as_in_mup():
  """d_ff fixed at 256 while d_model grows 64 -> 256: w_gate / w_up have one infinite dim
  (mup: vector-like, Adam lr unchanged, SGD lr x 4), w_down's fan-in is finite (SGD x 4 by
  its fan-out)."""
  cfg = dataclasses.replace(PARITY['heads_fixed'], d_ff=256, base_d_ff=256)
  specs = schema.specs(cfg)
  adam = pz.optimizer_scales(cfg, specs, 'adam')
  sgd = pz.optimizer_scales(cfg, specs, 'sgd')
  for name in ('w_gate', 'w_up', 'w_down'):
    path = ('layers', 'mlp', name)
    assert pz.widths(cfg, specs[path]).kind == 'vector'
    assert (adam[path][0], sgd[path][0]) == (1.0, 4.0)
  assert adam[('layers', 'attn', 'wq')][0] == 0.25


# ------------------------------------------------------------------ the table in action

BASE = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                   parametrization='mup', base_d_model=64)


def wide(d_model, **kw):
  return dataclasses.replace(BASE, d_model=d_model, **kw)


def init_params(cfg, seed=0):
  return nn.unbox(Transformer(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32)))[
      'params']


def test_sampled_init_has_the_tables_std():
  cfg = wide(256)
  params = init_params(cfg)
  for path, param in schema.specs(cfg).items():
    std = pz.init_std(cfg, param)
    x = params
    for k in path:
      x = x[k]
    if std:   # >= 12k samples: the std estimate is within ~1% (5 sigma < 5%)
      assert float(jnp.std(x)) == pytest.approx(std, rel=0.05), path
    elif param.role == 'norm':
      assert np.all(np.asarray(x) == 1.0)


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
  """One optimizer step against a hand computation of each leaf's update (llama_dff-like
  widths: m = 4 on d_model, 704 / 192 on d_ff)."""
  cfg = wide(256)
  params = init_params(cfg)
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x) - 0.5, params)
  lr, wd, e = 1e-2, 0.1, 0.5
  ocfg = OptimConfig(name=name, lr=lr, weight_decay=wd, wd_width_exponent=e, grad_clip=0.0,
                     b1=0.9, b2=0.95, eps=1e-8, momentum=0.0)
  tx = make_optimizer(ocfg, cfg, optax.constant_schedule(lr))
  updates, _ = tx.update(grads, tx.init(params), params)
  m, mf = 4.0, 704 / 192

  def expected(path, p, g):
    names = schema.dict_keys(path)
    role = schema.spec_at(cfg, names).role
    if role == 'hidden':   # Adam: lr / fan-in mult; SGD: lr / (fan-in mult / fan-out mult)
      fan_in, fan_out = {'w_down': (mf, m), 'w_gate': (m, mf), 'w_up': (m, mf)}.get(
          names[-1], (m, m))
      lr_s = 1 / fan_in if name == 'adamw' else fan_out / fan_in
    else:                  # vectors: Adam lr; SGD lr x m
      lr_s = 1.0 if name == 'adamw' else m
    wd_s = 0.0 if role == 'norm' else (1 / lr_s) ** e
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


def test_every_distinct_pair_of_scales_gets_its_own_group():
  """Two 'hidden' groups with different lr scales (llama_dff: w_down's fan-in ratio is
  704/192, the others' 4) keep separate labels; the label merge of the old table gave
  them one lr."""
  labels, groups = param_groups(OptimConfig(), wide(256))
  assert groups == {'embedding+output': (1.0, 1.0), 'hidden': (0.25, 1.0),
                    'hidden.1': (0.27272727272727276, 1.0), 'norm': (1.0, 0.0)}
  assert labels[('layers', 'attn', 'wq')] == 'hidden'
  assert labels[('layers', 'mlp', 'w_down')] == 'hidden.1'
  sp = wide(128, parametrization='sp')
  assert param_groups(OptimConfig(), sp)[1] == {'embedding+hidden+output': (1.0, 1.0),
                                                 'norm': (1.0, 0.0)}
  # Fan et al.'s lambda_1 = 0 for every vector-like tensor: only the hidden matrices decay.
  labels, groups = param_groups(OptimConfig(vector_weight_decay=False), wide(256))
  assert groups == {'embedding+output+norm': (1.0, 0.0), 'hidden': (0.25, 1.0),
                    'hidden.1': (0.27272727272727276, 1.0)}
  assert labels[('embed', 'embedding')] == labels[('head', 'kernel')] == 'embedding+output+norm'


def test_readout_init_options_zero_query_and_unknown_optimizer_family():
  for option, std in (('mup', 2 * _S), ('fan_in', _S), ('zero', 0.0)):
    cfg = dataclasses.replace(PARITY['heads_fixed'], readout_init=option)
    head = schema.specs(cfg)[('head', 'kernel')]
    assert pz.init_std(cfg, head) == pytest.approx(std, rel=1e-15, abs=0)
  p = init_params(wide(128, readout_init='zero', zero_init_query=True))
  assert not np.any(p['head']['kernel']) and not np.any(p['layers']['attn']['wq'])
  assert np.std(p['layers']['attn']['wk']) > 0
  with pytest.raises(ConfigError, match="optim.name='lamb' has no muP learning-rate rule.*"
                     'Adam-like: adam, adamw.*SGD-like: sgd, sgdp'):
    make_optimizer(OptimConfig(name='lamb'), wide(128), optax.constant_schedule(1e-3))
  make_optimizer(OptimConfig(name='lamb'), wide(128, parametrization='sp'),
                 optax.constant_schedule(1e-3))      # under SP every optimizer is fine
