"""The depth-growth operators of Du et al. 2024 side by side, at one growth time and the
same FLOPs budget, over 3 paired seeds: G_stack against G_zero (new layers are the
identity) and G_random (fresh layers blended in over 5% of the steps).

G_zero in two depth layouts, both exactly the source function: 'zero' stacks the copies
([0, 1, 0, 1, ...], jaxlab's default), 'zero_il' puts each layer's copies right after it
([0, 0, 0, 0, 1, 1, 1, 1]), as the authors' code (prts, G_zero_depthwise.py) does: the
same operator in another layout (tests/test_growth_ops.py holds 'zero_il' against a port
of it). Fixed before this rerun (3 paired seeds, `--baseline scratch`, Holm over the four
operators).

  python launch.py sweep gstack_operators --jobs 2
  python launch.py report runs/gstack_operators --baseline scratch

The earlier single-seed study's model, now with seeds (its G_random "18%" came from one
seed, and a second scratch seed "saved" 7.5% against the first): an 8-layer, d 128
target grown from 2 layers after 7% of scratch's tokens (the fitted rule's d / D at
410M-7B), 600 steps of 16 x 128 tokens, about 5x the demo's FLOPs (the earlier 1000
steps would not fit an hour with three seeds). EXTRA = True adds interleaving and
G_stack with grown Adam moments (about two hours then).
Validation: 12 batches every 25 steps (about 8% of the run).
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, ModelConfig, TrainConfig, load_module
from jaxlab.growth.depth import layer_map

_study = load_module('gstack_vs_scratch')
SEEDS = 3
FRACTION = _study.FRACTIONS[0]
RAMP_FRACTION = 0.05               # 'random': new layers blend in over 5% of scratch's steps
EXTRA = False                      # also interleave and G_stack with grown moments (2 hours)


def config() -> Config:
  full = _study.config()
  return dataclasses.replace(
      full, model=ModelConfig(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2),
      optim=dataclasses.replace(full.optim, warmup_steps=30),
      train=TrainConfig(steps=600, batch_size=16, log_every=10, eval_every=25,
                        eval_batches=12, checkpoint_every=300))


def runs(cfg: Config) -> dict[str, list[str]]:
  p = _study.pct(FRACTION)
  ramp = max(1, round(RAMP_FRACTION * cfg.train.steps))
  out = {'scratch': [],
         f'stack_{p}': _study.matched(cfg, 'stack', FRACTION),
         f'zero_{p}': _study.matched(cfg, 'zero', FRACTION),
         f'zero_il_{p}': _study.matched(cfg, 'zero', FRACTION, 'growth.layers=' + ','.join(
             map(str, layer_map('interleave', cfg.model.n_layers // 4, cfg.model.n_layers)))),
         f'random_{p}': _study.matched(cfg, 'random', FRACTION, f'growth.ramp_steps={ramp}')}
  if EXTRA:
    out[f'interleave_{p}'] = _study.matched(cfg, 'interleave', FRACTION)
    out[f'stack_{p}_growopt'] = _study.matched(cfg, 'stack', FRACTION, 'growth.optimizer=grow')
  return out
