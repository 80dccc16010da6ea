"""wd_transfer in seconds: widths 16 and 64 x exponents 0, 1 x 2 decays, 20 steps (tests).

  python launch.py sweep wd_transfer_smoke && python launch.py report runs/wd_transfer_smoke
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, load_module

wd_transfer = load_module('wd_transfer')


def config() -> Config:
  cfg = wd_transfer.config()
  return dataclasses.replace(
      cfg, model=dataclasses.replace(cfg.model, d_model=16, base_d_model=16, n_heads=2),
      optim=dataclasses.replace(cfg.optim, warmup_steps=5),
      data=dataclasses.replace(cfg.data, seq_len=32),
      train=dataclasses.replace(cfg.train, steps=20, batch_size=4, log_every=10,
                                eval_batches=2, spectral_every=10))


def runs(cfg: Config) -> dict[str, list[str]]:
  return wd_transfer.grid((16, 64), (0.0, 1.0), (0.1, 1.0))
