"""The run that tests scaling_ladder's committed prediction: a rung above the ladder
(d_model 160, 1.25M parameters) at 3e12 FLOPs, scratch and G_stack, the ladder's 3
paired seeds.
Run it only after docs/results/scaling_ladder.md records the prediction (the commit
that does is named there):

  python launch.py sweep scaling_ladder_predict --jobs 2
  python launch.py report runs/scaling_ladder_predict --baseline d160_c3e+12_scratch
"""
from __future__ import annotations

from jaxlab.config import Config, load_module

_ladder = load_module('scaling_ladder')

SEEDS = _ladder.SEEDS


def config() -> Config:
  return _ladder.config()


def runs(cfg: Config) -> dict[str, list[str]]:
  return _ladder.both_methods(cfg, _ladder.PREDICT_D_MODEL, _ladder.PREDICT_BUDGET,
                              f'd{_ladder.PREDICT_D_MODEL}_c{_ladder.PREDICT_BUDGET:.0e}')
