"""wd_transfer in seconds: widths 16 and 64 x exponents 0, 1 x 2 decays, 20 steps (tests).

  python launch.py sweep wd_transfer_smoke && python launch.py report runs/wd_transfer_smoke
"""
from __future__ import annotations

from jaxlab.config import Config, load_module

wd_transfer = load_module('wd_transfer')


def config() -> Config:
  return load_module('mup_transfer_smoke').shrink(wd_transfer.config(), spectral_every=10)


def runs(cfg: Config) -> dict[str, list[str]]:
  return wd_transfer.grid((16, 64), (0.0, 1.0), (0.1, 1.0))
