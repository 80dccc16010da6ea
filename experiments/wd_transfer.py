"""The weight-decay width rule (Fan et al. 2025, arXiv 2510.15262; docs/scaling_rules.md) under
muP: with lr-coupled AdamW the hidden matrices' decay is optim.weight_decay x m^e, and
the study asks which exponent e lets the best weight decay and the matrices' top
singular values transfer from the base width to a 4x wider model.

  python launch.py sweep wd_transfer               # 3 exponents x 2 widths x 5 decays
                                                    # x 3 seeds = 90 runs, as 6
                                                    # populations of 15 (POPULATION)
  python launch.py report runs/wd_transfer          # best decay per width and exponent;
                                                    # sigma_max ratio wide / base per exponent
  python launch.py sweep wd_transfer_smoke          # the same study in seconds (tests)

e = 0: constant decay; e = 0.5: Fan et al.'s rule (lambda ~ sqrt(d), which keeps
sigma_max ~ sqrt(eta / lambda) d^0.75 constant when eta ~ 1/d); e = 1: microsoft/mup's
MuAdamW (eta * lambda constant). The theory predicts sigma_max(wide) / sigma_max(base)
= 4^(0.25 - e/2): 1.41, 1.00, 0.71. Widths 32 (the muP base) and 128 (4x, as the
earlier 64 and 256, which with three seeds would take about three hours); at the base
width m = 1, so the three exponents train the same model there (a determinism check).
Same model and data as mup_transfer, at lr 2^-7 (the base lr; hidden matrices get
lr / m), 500 steps of 16 x 64 tokens, final val loss over the whole validation split;
top singular values logged every 100 steps. Three seeds, paired across points.
Fan et al.'s recipe: the embedding, the readout and the norms train without decay
(optim.vector_weight_decay=false, their lambda_1 = 0); the first run of this study decayed
them at the base decay (docs/results/wd_transfer.md keeps what it found).

Prediction (committed with this config, before its runs): the theory's sigma_max ratio
ordering e = 0 > 0.5 > 1 at every decay; at wd 3 and wd 1 the e = 0.5 ratio's 95% CI
contains 1 (the hidden matrices' time scale 1 / (eta lambda) at the peak lr, 128 x
m^(1 - e) / wd steps, is at most 171 steps at wd 3 and 512 at wd 1 for every width and
exponent; at wd 0.03-0.3 it reaches 427-17,067 steps, equilibrium is not reached in 500
steps, and no ratio value is predicted there); the optimum decay's shift 128 / 32 (log2)
ordered e = 0 > 0.5 > 1 (about +1, 0, -1 by the same theory), with e = 0.5's
Holm-adjusted CI containing 0. Analysis: the
report as committed here (launch.py report runs/wd_transfer: the optimum shifts
Holm-adjusted over the three exponents; the sigma_max ratios with their CIs over seeds
and the prediction beside them).
"""
from __future__ import annotations

from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

SEEDS = 3
POPULATION = 15   # one program per (width, exponent): its 5 decays x 3 seeds
WIDTHS = (32, 128)
EXPONENTS = (0.0, 0.5, 1.0)
WEIGHT_DECAYS = (0.03, 0.1, 0.3, 1.0, 3.0)


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=WIDTHS[0], n_layers=2, n_heads=4, parametrization='mup',
                        base_d_model=WIDTHS[0]),
      optim=OptimConfig(lr=2.0 ** -7, weight_decay=0.1, warmup_steps=50,
                        vector_weight_decay=False),
      data=DataConfig(seq_len=64),
      train=TrainConfig(steps=500, batch_size=16, log_every=25, eval_every=0,
                        eval_batches='all', checkpoint_every=0, keep_checkpoints=1,
                        spectral_every=100),
  )


def grid(widths, exponents, weight_decays) -> dict[str, list[str]]:
  out = {}
  for w in sorted(widths, reverse=True):
    for e in exponents:
      for wd in weight_decays:
        out[f'w{w}_e{e:g}_wd{wd:g}'] = [f'model.d_model={w}', f'optim.wd_width_exponent={e!r}',
                                        f'optim.weight_decay={wd!r}']
  return out


def runs(cfg: Config) -> dict[str, list[str]]:
  return grid(WIDTHS, EXPONENTS, WEIGHT_DECAYS)
