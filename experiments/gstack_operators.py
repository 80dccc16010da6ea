"""The depth-growth operators of Du et al. 2024 side by side, at one growth time and the
same FLOPs budget, over 3 paired seeds: G_stack against G_zero (new layers are the
identity), G_random (fresh layers blended in over 5% of the steps) and interleaving,
and G_stack with grown Adam moments instead of a reset. Same model, data and budget as
gstack_vs_scratch, growth at 7% of scratch's tokens (the fitted rule's d / D).

  python launch.py sweep gstack_operators --jobs 2
  python launch.py report runs/gstack_operators --baseline scratch
"""
from __future__ import annotations

from jaxlab.config import Config, load_module

_study = load_module('gstack_vs_scratch')
SEEDS = _study.SEEDS
FRACTION = _study.FRACTIONS[0]
RAMP_FRACTION = 0.05               # 'random': new layers blend in over 5% of scratch's steps


def config() -> Config:
  return _study.config()


def runs(cfg: Config) -> dict[str, list[str]]:
  p = _study.pct(FRACTION)
  ramp = max(1, round(RAMP_FRACTION * cfg.train.steps))
  return {'scratch': [],
          f'stack_{p}': _study.matched(cfg, 'stack', FRACTION),
          f'zero_{p}': _study.matched(cfg, 'zero', FRACTION),
          f'random_{p}': _study.matched(cfg, 'random', FRACTION, f'growth.ramp_steps={ramp}'),
          f'interleave_{p}': _study.matched(cfg, 'interleave', FRACTION),
          f'stack_{p}_growopt': _study.matched(cfg, 'stack', FRACTION, 'growth.optimizer=grow')}
