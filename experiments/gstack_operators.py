"""The depth-growth operators of Du et al. 2024 side by side, at one growth time and the
same FLOPs budget, over 3 paired seeds: G_stack against G_zero (new layers are the
identity), G_random (fresh layers blended in over 5% of the steps) and interleaving,
and G_stack with grown Adam moments instead of a reset.

  python launch.py sweep gstack_operators --jobs 2
  python launch.py report runs/gstack_operators --baseline scratch

The earlier single-seed study's setting, now with seeds (its G_random "18%" came from
one seed, and a second scratch seed "saved" 7.5% against the first): an 8-layer, d 128
target grown from 2 layers after 7% of scratch's tokens (the fitted rule's d / D at
410M-7B), 1000 steps of 16 x 128 tokens. Six methods x three seeds of the 16-layer
target of gstack_vs_scratch would take about two hours; this takes about one.
Validation: 16 batches every 50 steps (about 6% of the run).
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, ModelConfig, TrainConfig, load_module

_study = load_module('gstack_vs_scratch')
SEEDS = 3
FRACTION = _study.FRACTIONS[0]
RAMP_FRACTION = 0.05               # 'random': new layers blend in over 5% of scratch's steps


def config() -> Config:
  full = _study.config()
  return dataclasses.replace(
      full, model=ModelConfig(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2),
      optim=dataclasses.replace(full.optim, warmup_steps=50),
      train=TrainConfig(steps=1000, batch_size=16, log_every=10, eval_every=50,
                        eval_batches=16, checkpoint_every=500))


def runs(cfg: Config) -> dict[str, list[str]]:
  p = _study.pct(FRACTION)
  ramp = max(1, round(RAMP_FRACTION * cfg.train.steps))
  return {'scratch': [],
          f'stack_{p}': _study.matched(cfg, 'stack', FRACTION),
          f'zero_{p}': _study.matched(cfg, 'zero', FRACTION),
          f'random_{p}': _study.matched(cfg, 'random', FRACTION, f'growth.ramp_steps={ramp}'),
          f'interleave_{p}': _study.matched(cfg, 'interleave', FRACTION),
          f'stack_{p}_growopt': _study.matched(cfg, 'stack', FRACTION, 'growth.optimizer=grow')}
