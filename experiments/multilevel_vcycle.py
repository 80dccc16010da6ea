"""One multi-level V-cycle vs the plain baseline at the same FLOPs (Zou et al., ICLR 2024;
docs/growth.md), on the embedded offline corpus, over 3 paired seeds.

  python launch.py sweep multilevel_vcycle --jobs 2
  python launch.py report runs/multilevel_vcycle --baseline baseline

'baseline' trains the big model (config()) for train.steps steps. 'vcycle' follows the
authors' GPT-2 script (github.com/Photooon/Multi-Level-Training-Framework,
example/scripts/multilevel_pretrain.sh and map_tools/scripts/{Coal,DecoIP}.sh, config
map_tools/config/L6-H6.json): the big model trains for 5% of the baseline's steps
(5,000 of 100,000), is coalesced to half the width and half the depth with unit i
merged with unit i + n/2 and layer i with layer i + L/2 (their width_scheme and
depth_scheme [[0, 6], [1, 7], ...]: growth.grouping=stride and growth.depth_grouping=
stride, growth.factor=2; de-coalescing gives the small stack twice), the small model
trains for
50% of the baseline's steps (50,000) at the same batch, and is de-coalesced and
interpolated into the big model with alpha = 0.5 (DecoIP.sh; their README's DeiT example
uses 0.25: 'vcycle_a025'); then the big model trains for the FLOPs that remain of the
baseline's budget (their script stops the big model after 50,000 more steps and
compares; here the budgets are equal and the report measures FLOPs to the baseline's
final loss). Differences kept: their small model trains at 4x the lr (4e-4 vs 1e-4)
without warmup; here every phase uses optim.lr with a fresh optimizer and a re-warmup
(growth.optimizer=reset).

'vcycle_adjdepth' is 'vcycle' with adjacent layers merged instead (layers 2i, 2i + 1;
de-coalescing [0, 0, 1, 1, ...]): the depth scheme an earlier run of this study used by
mistake while claiming the authors' recipe. It is kept as a control: the earlier verdict
("the interpolation throws away the small model's progress") could be an artefact of it.
Fixed before this rerun (config, 3 paired seeds, `--baseline baseline`, Holm over the
three V-cycles): nothing else changed.

Sizes: an 8-layer, d 128 model (d_ff 384, so every width dim halves evenly), 800 steps
of 16 x 128 tokens: three seeds of four runs, about 80 minutes on two CPU cores. Validation: 12 batches (25k tokens) every 25 steps, the same
tokens every time: about 8% of the run (the whole split would cost about 60%).
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import (Config, DataConfig, GrowthConfig, ModelConfig, OptimConfig,
                           TrainConfig)
from jaxlab.growth import plan
from jaxlab.models.flops import flops_per_token

SEEDS = 3
BIG_FRACTION = 0.05      # tokens on the big model before coalescing / baseline tokens
SMALL_FRACTION = 0.5     # tokens on the coalesced model / baseline tokens


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=384),
      optim=OptimConfig(lr=3e-3, warmup_steps=30, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=800, batch_size=16, log_every=10, eval_every=25,
                        eval_batches=12, checkpoint_every=400),
  )


def vcycle(cfg: Config, alpha: float, depth_grouping: str = 'stride') -> list[str]:
  tps = cfg.train.batch_size * cfg.data.seq_len
  big_steps = max(1, round(BIG_FRACTION * cfg.train.steps))
  small_steps = max(1, round(SMALL_FRACTION * cfg.train.steps))
  probe = dataclasses.replace(cfg, growth=GrowthConfig(
      method='vcycle', factor=2, at_tokens=big_steps * tps, small_tokens=small_steps * tps))
  fpt_big = flops_per_token(cfg.model, cfg.data.seq_len)
  fpt_small = flops_per_token(plan.source_model(probe), cfg.data.seq_len)
  budget = cfg.train.steps * tps * fpt_big
  rest = round((budget - big_steps * tps * fpt_big - small_steps * tps * fpt_small)
               / (tps * fpt_big))
  return ['growth.method=vcycle', 'growth.factor=2', 'growth.grouping=stride',
          f'growth.depth_grouping={depth_grouping}',
          f'growth.at_tokens={big_steps * tps}', f'growth.small_tokens={small_steps * tps}',
          f'growth.alpha={alpha}', f'train.steps={big_steps + small_steps + rest}']


def runs(cfg: Config) -> dict[str, list[str]]:
  return {'baseline': [], 'vcycle': vcycle(cfg, 0.5), 'vcycle_a025': vcycle(cfg, 0.25),
          'vcycle_adjdepth': vcycle(cfg, 0.5, 'adjacent')}


if __name__ == '__main__':
  for label, overrides in runs(config()).items():
    print(f'{label:12s} {" ".join(overrides)}')
