"""The main job (`make demo`): the short version of gstack_vs_scratch -- G_stack vs
training from scratch at the same FLOPs, on the embedded offline corpus, over 3 paired
seeds, in 11 minutes on an idle 2-core CPU (measured). `make demo` runs

  python launch.py sweep demo --jobs 2
  python launch.py report runs/demo --baseline scratch

and the report's headline gives the FLOPs G_stack saves to reach scratch's final val
loss with its 95% confidence interval over the seeds (or says it is not resolved).

Sizes: an 8-layer, d 96 target grown from 2 layers (g = 4) after 20% of scratch's tokens
(the growth time that did best in the earlier single-seed demo); 240 steps of 16 x 128
tokens. Three seeds is the least that gives a usable interval (t_{0.975, 2} = 4.3; two
seeds would give 12.7). At 420 steps the first pair of runs took 6.5 minutes on an idle
machine (about 20 for all six, two at a time); 240 steps brings `make demo` to 11
minutes (3 pairs of about 3.7 minutes, and the report). It read "not resolved at this scale
(saving +13.6% [-inf, 45.6%])", with G_stack's val loss lower by a resolved paired
-0.092 ± 0.042 over the last three evaluations (docs/results/demo.md).

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
      optim=dataclasses.replace(full.optim, warmup_steps=30),
      train=TrainConfig(steps=240, batch_size=16, log_every=10, eval_every=30,
                        eval_batches=16, checkpoint_every=120))


def runs(cfg: Config) -> dict[str, list[str]]:
  return {'scratch': [], f'stack_{_study.pct(FRACTION)}': _study.matched(cfg, 'stack', FRACTION)}
