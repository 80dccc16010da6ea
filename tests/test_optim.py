"""The optimizer as built from the config: optax optimizers by name, L2 for those
without decoupled decay, gradient noise first in the chain, AdamP / SGDP with the
model's per-param layout, and their diagnostics in metrics.jsonl."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.config import ConfigError, load
from jaxlab.models import Transformer
from jaxlab.optim import Layout, adamp_layout, make_optimizer

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny(*overrides):
  return load('tiny', list(overrides))


def params_of(cfg):
  model = Transformer(cfg.model)
  from flax import linen as nn
  return nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params'])


def one_update(cfg, grads_fn=None, lr=1.0):
  params = params_of(cfg)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params) if grads_fn is None \
      else grads_fn(params)
  tx = make_optimizer(cfg.optim, cfg.model, optax.constant_schedule(lr), seed=0)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, grads, updates


def test_sgd_by_name_gets_l2_decay_on_the_masked_params_only():
  """optax.sgd has no weight_decay: the built chain adds wd * p to the gradient (L2, as
  torch's SGD), and not on norm gains (the parametrization's mask)."""
  cfg = tiny('optim.name=sgd', 'optim.momentum=0', 'optim.grad_clip=0',
             'optim.weight_decay=0.1')
  params, grads, updates = one_update(cfg, lr=0.5)
  np.testing.assert_allclose(updates['layers']['attn']['wq'],
                             -0.5 * (grads['layers']['attn']['wq'] +
                                     0.1 * params['layers']['attn']['wq']), rtol=1e-6)
  np.testing.assert_allclose(updates['final_norm']['scale'], -0.5 * grads['final_norm']['scale'],
                             rtol=1e-6)


def test_optax_optimizer_by_name_gets_the_config_hyperparameters():
  cfg = tiny('optim.name=lion', 'optim.b1=0.8', 'optim.b2=0.9', 'optim.grad_clip=0',
             'optim.weight_decay=0.2')
  params, grads, updates = one_update(cfg, lr=0.1)
  # Lion's first step: -lr * (sign(b1 m + (1 - b1) g) + wd p) with m = 0.
  expected = -0.1 * (jnp.sign(0.2 * grads['head']['kernel']) + 0.2 * params['head']['kernel'])
  np.testing.assert_allclose(updates['head']['kernel'], expected, rtol=1e-6)


def test_gradient_noise_has_the_configured_variance_and_comes_before_clipping():
  cfg = tiny('optim.name=sgd', 'optim.momentum=0', 'optim.weight_decay=0',
             'optim.grad_clip=0', 'optim.grad_noise_eta=0.3')
  zero = lambda p: jax.tree.map(jnp.zeros_like, p)   # noqa: E731
  _, _, updates = one_update(cfg, zero)
  noise = np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])
  # Step 0: sigma^2 = eta / (1 + 0)^gamma = 0.3; ~30k samples give the std to ~0.5%.
  assert noise.size > 20_000
  assert np.std(noise) == pytest.approx(np.sqrt(0.3), rel=0.02)
  # Noise first, then clipping: a tiny clip bounds the noisy update's norm.
  clipped = tiny('optim.name=sgd', 'optim.momentum=0', 'optim.weight_decay=0',
                 'optim.grad_clip=1e-3', 'optim.grad_noise_eta=0.3')
  _, _, updates = one_update(clipped, zero)
  assert float(optax.tree.norm(updates)) == pytest.approx(1e-3, rel=1e-4)


def test_adamp_layout_follows_the_parameter_schema():
  cfg = tiny('model.n_kv_heads=1', 'model.qk_norm=true')
  layout = adamp_layout(cfg.model)
  assert layout[('layers', 'attn', 'wq')] == Layout((0,), (2, 3))   # (L, embed, heads, head_dim)
  assert layout[('layers', 'attn', 'wk')] == Layout((0,), (2, 3))   # (L, embed, kv_heads, K)
  assert layout[('layers', 'attn', 'wo')] == Layout((0,), (3,))     # (L, heads, K, embed)
  assert layout[('layers', 'mlp', 'w_down')] == Layout((0,), (2,))
  assert layout[('embed', 'embedding')] == Layout((), (0,))         # a row per token
  assert layout[('head', 'kernel')] == Layout((), (1,))
  for vector in (('layers', 'attn_norm', 'scale'), ('final_norm', 'scale'),
                 ('layers', 'attn', 'q_norm', 'scale')):
    assert layout[vector] is None


@pytest.mark.parametrize('override, message', [
    ('optim.name=adamz', "optim.name='adamz' is not adamp, sgdp or an optax optimizer; "
                         'did you mean adam'),
    ('optim.momentum=1', 'optim.momentum=1.0 must be in [0, 1)'),
    ('optim.dampening=0.1', 'optim.dampening applies to sgdp only'),
])
def test_optimizer_config_errors(override, message):
  with pytest.raises(ConfigError, match=message.replace('[', r'\[').replace(')', r'\)')):
    tiny(override)


def test_adamp_run_logs_projection_and_effective_step(tmp_path):
  """AdamP logs its projected share; the weight diagnostics only with train.weight_stats
  (off by default: they cost a pass over the norm-fed matrices in every step)."""
  for name, stats in (('adamp', 'true'), ('adamw', 'false')):
    proc = subprocess.run([sys.executable, 'launch.py', 'run', 'tiny', f'optim.name={name}',
                           'train.steps=4', 'train.log_every=2', f'name={name}',
                           f'train.weight_stats={stats}', f'train.workdir={tmp_path}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
  rec = {n: [json.loads(line) for line in (tmp_path / n / 'metrics.jsonl').read_text()
             .splitlines()] for n in ('adamp', 'adamw')}
  assert all(0 <= r['proj_fired'] <= 1 for r in rec['adamp'])
  assert all('proj_fired' not in r for r in rec['adamw'])
  for r in rec['adamp']:
    assert r['prenorm_w_norm'] > 0 and 0 < r['prenorm_eff_step'] < 1
  assert all('prenorm_w_norm' not in r for r in rec['adamw'])
