"""optim.moments_dtype: the optimizer's first moment stored in bfloat16 (optax's mu_dtype /
accumulator_dtype, AdamP's and SGDP's own), computed in float32; a bfloat16 run of tiny
trains like the float32 one; an optimizer that cannot store it so is refused."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn

from jaxlab.config import load
from jaxlab.launch import cli
from jaxlab.models import Transformer
from jaxlab.optim import adamp, make_optimizer, sgdp

# The first moment of each optimizer's state (the attribute holding it), and what stays
# float32 (Adam's second moment).
FIRST = ('mu', 'trace', 'momentum')
SECOND = ('nu',)


def _moment_dtypes(state) -> dict[str, set]:
  """{attribute: dtypes of its leaves} over the optimizer state's moment attributes."""
  out: dict[str, set] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
    for name in names:
      if name in FIRST + SECOND:
        out.setdefault(name, set()).add(jnp.dtype(leaf.dtype))
  return out


@pytest.mark.parametrize('name', ['adamw', 'adamp', 'sgdp', 'sgd'])
def test_first_moment_leaves_are_bfloat16_after_an_update(name):
  cfg = load('tiny', [f'optim.name={name}', 'optim.moments_dtype=bfloat16'])
  params = nn.unbox(jax.eval_shape(lambda: Transformer(cfg.model).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']))
  tx = make_optimizer(cfg.optim, cfg.model, optax.constant_schedule(1e-3))
  state = jax.eval_shape(tx.init, params)
  _, updated = jax.eval_shape(tx.update, params, state, params)   # grads shaped as params
  for s in (state, updated):
    dtypes = _moment_dtypes(s)
    first = set().union(*(dtypes[k] for k in FIRST if k in dtypes))
    assert first == {jnp.dtype(jnp.bfloat16)}, dtypes
    assert all(dtypes[k] == {jnp.dtype(jnp.float32)} for k in SECOND if k in dtypes), dtypes


@pytest.mark.parametrize('name, moment', [('adamp', 'mu'), ('sgdp', 'momentum')])
def test_a_bfloat16_moment_is_used_in_float32_and_rounded_only_to_be_stored(name, moment):
  """First step, g = 0.3 (not a bfloat16 number): AdamP's direction m_hat / sqrt(v_hat) is
  1 and SGDP's is g, to float32 rounding; from a moment rounded before use they would be
  off by 1e-3."""
  build = {'adamp': lambda: adamp(1.0, mu_dtype=jnp.bfloat16),
           'sgdp': lambda: sgdp(1.0, momentum=0.9, accumulator_dtype=jnp.bfloat16)}[name]
  tx, params = build(), {'w': jnp.ones((4, 3))}
  g = {'w': jnp.full((4, 3), 0.3)}
  updates, state = tx.update(g, tx.init(params), params)
  want = {'adamp': 1.0, 'sgdp': 0.3}[name]
  assert jnp.allclose(-updates['w'], want, rtol=1e-6, atol=0)
  stored = getattr(state[0], moment)['w']
  assert stored.dtype == jnp.bfloat16
  assert float(stored[0, 0]) == float(jnp.bfloat16((0.1 if name == 'adamp' else 1.0) * 0.3))


def _final_loss(tmp_path, capsys, *overrides) -> tuple[float, list]:
  workdir = tmp_path / overrides[-1].replace('=', '_')
  assert cli.main(['run', 'tiny', 'train.steps=100', 'train.log_every=10', 'train.eval_every=0',
                   'train.eval_batches=0', 'train.checkpoint_every=0',
                   f'train.workdir={workdir}', *overrides]) == 0, capsys.readouterr().err
  lines = (workdir / 'tiny' / 'metrics.jsonl').read_text().splitlines()
  losses = [r['loss'] for r in map(json.loads, lines) if 'loss' in r]
  return losses[-1], losses


def test_bfloat16_moments_train_tiny_like_float32(tmp_path, capsys):
  f32, curve32 = _final_loss(tmp_path, capsys, 'optim.moments_dtype=float32')
  bf16, curve16 = _final_loss(tmp_path, capsys, 'optim.moments_dtype=bfloat16')
  assert curve16 != curve32            # the setting took effect: rounding changed the run
  assert curve32[-1] < 0.7 * math.log(257)   # and the run learned (uniform guess: ln 257)
  assert bf16 == pytest.approx(f32, rel=0.02)


def test_an_optimizer_without_a_moment_dtype_is_refused(tmp_path, capsys):
  assert cli.main(['run', 'tiny', 'optim.name=adagrad', 'optim.moments_dtype=bfloat16',
                   f'train.workdir={tmp_path}']) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert "optim.moments_dtype=bfloat16 cannot be honoured by optim.name='adagrad'" in err
  assert 'adamw' in err and 'adamp' in err
  assert not (tmp_path / 'tiny').exists()
