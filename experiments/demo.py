"""The main job (`make demo`): the short version of gstack_vs_scratch -- G_stack vs
training from scratch at the same FLOPs, on the embedded offline corpus, over 3 paired
seeds, in about 10-12 minutes on an idle 2-core CPU. `make demo` runs

  python launch.py sweep demo --jobs 2
  python launch.py report runs/demo --baseline scratch

and the report's headline gives the FLOPs G_stack saves to reach scratch's final val
loss with its 95% confidence interval over the seeds (or says it is not resolved).

Sizes: an 8-layer, d 96 target grown from 2 layers (g = 4) after 20% of scratch's tokens
(the growth time that did best in the earlier single-seed demo); 420 steps of 16 x 128
tokens. Three seeds is the least that gives a usable interval (t_{0.975, 2} = 4.3; two
seeds would give 12.7), so the earlier four single-seed runs became two methods x three
seeds: 1.5x the earlier demo's FLOPs (which took about ten minutes, one run after
another), run two at a time (1.5x faster on two cores), with twice the validation tokens.
Validation: 16 batches (32k tokens) every 30 steps, the same tokens each time, about
8-10% of the run (the whole split every 30 steps would cost about half of it).
See experiments/gstack_vs_scratch.py for the full study.
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, ModelConfig, TrainConfig, load_module

_study = load_module('gstack_vs_scratch')
SEEDS = 3
FRACTION = 0.2


def config() -> Config:
  full = _study.config()
  return dataclasses.replace(
      full, model=ModelConfig(d_model=96, n_layers=8, n_heads=4, n_kv_heads=2),
      optim=dataclasses.replace(full.optim, warmup_steps=50),
      train=TrainConfig(steps=420, batch_size=16, log_every=10, eval_every=30,
                        eval_batches=16, checkpoint_every=210))


def runs(cfg: Config) -> dict[str, list[str]]:
  return {'scratch': [], f'stack_{_study.pct(FRACTION)}': _study.matched(cfg, 'stack', FRACTION)}
