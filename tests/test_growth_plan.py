"""Growth timing rule, run plans, the public grow() API, the savings table, and the
FLOP matching of the growth studies."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import growth
from jaxlab.config import ConfigError, ModelConfig, load
from jaxlab.growth import plan


@pytest.mark.parametrize('n, d, expected', [(7e9, 2e12, 11.11e9), (410e6, 100e9, 7.02e9),
                                            (1.1e9, 100e9, 11.44e9)])
def test_growth_timing_check_values(n, d, expected):
  # The notes give the check values to 4 significant digits.
  assert growth.growth_timing(n, 6 * n * d) == pytest.approx(expected, rel=5e-4)
  assert growth.growth_fraction(n, d) == pytest.approx(expected / d, rel=5e-4)


def test_growth_timing_rejects_nonsense():
  with pytest.raises(ValueError, match='n_params'):
    growth.growth_timing(0, 1e20)
  assert growth.GROWTH_FACTOR == 4


def test_source_model_and_phases_for_depth_growth():
  cfg = load('tiny', ['model.n_layers=8', 'growth.method=stack', 'growth.at_tokens=300'])
  small = plan.source_model(cfg)
  assert small == dataclasses.replace(cfg.model, n_layers=2)      # factor 4 by default
  phases = growth.phases(cfg)
  assert [(p.start_step, p.model.n_layers, p.event) for p in phases] == [
      (0, 2, None), (3, 8, 'grow')]                               # ceil(300 / 128) = 3
  assert [growth.phase_index(phases, s) for s in (0, 2, 3, 19)] == [0, 0, 1, 1]


def test_source_model_for_width_growth_keeps_head_dim():
  cfg = load('tiny', ['model.d_model=64', 'model.n_heads=4', 'model.d_ff=128',
                      'growth.method=split', 'growth.d_model=32', 'growth.n_heads=2',
                      'growth.d_ff=64', 'growth.at_tokens=128'])
  small = plan.source_model(cfg)
  assert (small.d_model, small.n_heads, small.ff_dim, small.n_layers) == (32, 2, 64, 2)
  assert small.dim_per_head == cfg.model.dim_per_head == 16


def test_vcycle_phases_one_and_two_levels():
  base = ['model.d_model=64', 'model.n_heads=4', 'model.d_ff=128', 'model.n_layers=4',
          'growth.method=vcycle', 'growth.factor=2', 'growth.at_tokens=256',
          'growth.small_tokens=512']
  one = growth.phases(load('tiny', base))
  assert [(p.start_step, p.event, p.level, p.model.d_model) for p in one] == [
      (0, None, 0, 64), (2, 'coalesce', 1, 32), (6, 'interpolate', 0, 64)]
  two = growth.phases(load('tiny', base + ['growth.levels=2']))
  assert [(p.start_step, p.event, p.level, p.model.d_model, p.model.n_layers) for p in two] == [
      (0, None, 0, 64, 4), (2, 'coalesce', 1, 32, 2), (4, 'coalesce', 2, 16, 1),
      (8, 'interpolate', 1, 32, 2), (10, 'interpolate', 0, 64, 4)]
  with pytest.raises(ConfigError, match='does not fit in train.steps'):
    growth.phases(load('tiny', base + ['growth.small_tokens=5000']))


def test_growth_config_errors():
  with pytest.raises(ConfigError, match='growth.layers has 3 entries'):
    load('tiny', ['growth.method=layers', 'growth.layers=0,1,1', 'growth.at_tokens=128'])
  with pytest.raises(ConfigError, match='ramp_steps applies to method random only'):
    load('tiny', ['growth.method=stack', 'growth.at_tokens=128', 'growth.ramp_steps=3'])
  with pytest.raises(ConfigError, match='source model equals the target'):
    growth.phases(load('tiny', ['growth.method=split', 'growth.at_tokens=128']))
  cfg = load('tiny', ['model.n_layers=8', 'growth.method=stack', 'growth.timing=auto'])
  with pytest.raises(ConfigError, match='fitted rule'):
    growth.phases(cfg)


def _logits(cfg, params, tokens):
  from jaxlab.models import Transformer
  return Transformer(cfg).apply({'params': params}, tokens)


def test_grow_composes_width_and_depth_and_keeps_the_function_with_zero():
  src = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64)
  # Zero width growth pads the residual stream with zeros, so RMSNorm's mean square drops
  # by D_src / D_dst; old gains are rescaled for it, but eps inside the rsqrt is not: the
  # target's norm_eps must shrink by the same factor to keep the function exactly (with
  # the table's 0.02 embedding init, mean squares are ~4e-4 and eps 1e-6 would matter).
  dst = dataclasses.replace(src, d_model=64, n_heads=4, d_ff=128, n_layers=4, head_dim=16,
                            norm_eps=src.norm_eps * 32 / 64)
  params = growth.fresh_params(src, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 257)
  ref = _logits(src, params, tokens)
  for method in ('zero', 'stack'):       # zero: zero width + zero depth; stack: split + stack
    grown = growth.grow(params, src, dst, method, rng=jax.random.key(3))
    shapes = jax.tree.map(jnp.shape, grown)
    assert shapes == jax.tree.map(jnp.shape, growth.fresh_params(dst, jax.random.key(0)))
    out = _logits(dst, grown, tokens)
    if method == 'zero':
      # Exact but for float32 rounding: logits agree to 1e-5 of their scale.
      np.testing.assert_allclose(out, ref, atol=1e-5 * float(jnp.abs(ref).max()))
    else:
      assert not np.allclose(out, ref, atol=1e-3)   # stacking 2 -> 4 layers changes it
  assert growth.new_layers(src, dst, 'stack') == [False, False, True, True]
  with pytest.raises(ValueError, match="growth method 'grwo' is not known"):
    growth.grow(params, src, dst, 'grwo')


def test_savings_rows_per_method(tmp_path):
  import math
  from jaxlab.report import Run
  from jaxlab.report.savings import savings_rows

  def run(label, points, events=()):
    return Run(label=label, dir=tmp_path, config={}, summary=None, events=list(events),
               metrics=[{'step': i + 1, 'flops': f, 'loss': v, 'val_loss': v}
                        for i, (f, v) in enumerate(points)])
  e = math.e
  base = run('scratch', [(1.0, 3.0), (e, 2.0), (e * e, 1.5)])
  # A straight line in log FLOPs, 2.5 - 0.6 x: reaches 1.5 at x = 5/3.
  fast = run('stack', [(1.0, 2.5), (e, 1.9), (e * e, 1.3)], [{'event': 'grow', 'flops': 0.5}])
  slow = run('zero', [(1.0, 3.0), (e * e, 1.6)])
  rows, target = savings_rows([base, fast, slow], 'scratch')
  assert target == 1.5
  by = {r['run']: r for r in rows}
  assert by['scratch']['saving'] == 0.0
  assert by['stack']['flops_to_target'] == pytest.approx(e ** (5 / 3), rel=1e-6)
  assert by['stack']['saving'] == pytest.approx(1 - e ** (5 / 3 - 2), rel=1e-6)
  assert by['stack']['speedup'] == pytest.approx(e ** (2 - 5 / 3) - 1, rel=1e-6)
  assert by['stack']['growth_at_flops'] == 0.5
  assert by['zero']['saving'] is None
  assert by['stack']['tail_val_loss'] == pytest.approx((2.5 + 1.9 + 1.3) / 3)
  assert by['stack']['delta_tail_val_loss'] == pytest.approx((2.5 + 1.9 + 1.3 - 3 - 2 - 1.5) / 3)
  with pytest.raises(ValueError, match="baseline run 'nope' not found"):
    savings_rows([base], 'nope')


@pytest.mark.parametrize('experiment', ['demo', 'gstack_vs_scratch', 'multilevel_vcycle'])
def test_study_runs_spend_the_baseline_flops(experiment):
  """Every run of a growth study is given the baseline's FLOPs budget, to within one step
  of the big model (steps are whole)."""
  from jaxlab.launch.sweep_points import sweep_configs
  from jaxlab.models.flops import flops_per_token
  _, runs = sweep_configs(experiment, [], [])
  budgets = {}
  for label, cfg in runs:
    phases = growth.phases(cfg)
    ends = [p.start_step for p in phases[1:]] + [cfg.train.steps]
    tps = cfg.train.batch_size * cfg.data.seq_len
    budgets[label] = sum((end - p.start_step) * tps * flops_per_token(p.model, cfg.data.seq_len)
                         for p, end in zip(phases, ends))
    big_step = tps * flops_per_token(cfg.model, cfg.data.seq_len)
  base = budgets[runs[0].label]
  assert len(budgets) >= 3
  for label, b in budgets.items():
    assert abs(b - base) <= 0.5 * big_step, (label, b, base)
  assert math.isfinite(base)
