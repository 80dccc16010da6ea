"""mup_transfer in seconds: 2 widths x 2 lrs x {sp, mup}, 20 steps (tests, smoke checks).

  python launch.py sweep mup_transfer_smoke && python launch.py report runs/mup_transfer_smoke
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, load_module

mup_transfer = load_module('mup_transfer')


def shrink(cfg: Config, **train) -> Config:
  """A study's config at toy size: d_model 16 (the muP base), 20 steps of 4 x 32 tokens."""
  return dataclasses.replace(
      cfg, model=dataclasses.replace(cfg.model, d_model=16, base_d_model=16, n_heads=2),
      optim=dataclasses.replace(cfg.optim, warmup_steps=5),
      data=dataclasses.replace(cfg.data, seq_len=32),
      train=dataclasses.replace(cfg.train, steps=20, batch_size=4, log_every=10,
                                eval_batches=2, **train))


def config() -> Config:
  return shrink(mup_transfer.config())


def runs(cfg: Config) -> dict[str, list[str]]:
  return mup_transfer.grid(mup_transfer.PARAMETRIZATIONS, (16, 64), (-8, -5))
