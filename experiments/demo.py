"""The main job (`make demo`): the short version of gstack_vs_scratch -- G_stack vs
training from scratch at the same FLOPs, on the embedded offline corpus, in minutes on
a laptop CPU. `make demo` runs

  python launch.py sweep demo
  python launch.py report runs/demo --baseline scratch

and the report shows val loss vs FLOPs and the FLOPs each run needed to reach the
scratch run's final val loss. See experiments/gstack_vs_scratch.py for the full study.
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, ModelConfig, TrainConfig, load_module

_study = load_module('gstack_vs_scratch')


def config() -> Config:
  full = _study.config()
  return dataclasses.replace(
      full, model=ModelConfig(d_model=96, n_layers=8, n_heads=4, n_kv_heads=2),
      train=TrainConfig(steps=420, batch_size=16, log_every=10, eval_every=30,
                        eval_batches=8, checkpoint_every=210))


def runs(cfg: Config) -> dict[str, list[str]]:
  first, second = _study.FRACTIONS[:2]
  return {'scratch': [],
          'stack_7pct': _study.matched(cfg, 'stack', first),
          'stack_20pct': _study.matched(cfg, 'stack', second),
          'zero_7pct': _study.matched(cfg, 'zero', first)}
