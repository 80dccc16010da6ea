"""One multi-level V-cycle vs the plain baseline at the same FLOPs (Zou et al., ICLR 2024;
RESEARCH_NOTES.md §2), on the embedded offline corpus.

  python launch.py sweep multilevel_vcycle
  python launch.py report runs/multilevel_vcycle --baseline baseline

'baseline' trains the big model (config()) for train.steps steps. 'vcycle' trains the
big model for 5% of the baseline's tokens, coalesces it (width and depth halved,
growth.factor=2, the paper's default stride grouping), trains the small model for
30% of the baseline's tokens, de-coalesces it and interpolates into the big model as
it was before coalescing (alpha = 0.25, the paper's default), then trains the big model
for the FLOPs that remain of the baseline's budget. 'vcycle_a05' uses alpha = 0.5 (the
paper's GPT-2 script). Both V-cycle runs reset the optimizer at each transition.
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import (Config, DataConfig, GrowthConfig, ModelConfig, OptimConfig,
                           TrainConfig)
from jaxlab.growth import plan
from jaxlab.metrics import flops_per_token

BIG_FRACTION = 0.05      # tokens on the big model before coalescing / baseline tokens
SMALL_FRACTION = 0.3     # tokens on the coalesced model / baseline tokens


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=384),
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=1000, batch_size=16, log_every=10, eval_every=50,
                        eval_batches=8, checkpoint_every=500),
  )


def vcycle(cfg: Config, alpha: float) -> list[str]:
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
  return ['growth.method=vcycle', 'growth.factor=2', f'growth.at_tokens={big_steps * tps}',
          f'growth.small_tokens={small_steps * tps}', f'growth.alpha={alpha}',
          f'train.steps={big_steps + small_steps + rest}']


def runs(cfg: Config) -> dict[str, list[str]]:
  return {'baseline': [], 'vcycle': vcycle(cfg, 0.25), 'vcycle_a05': vcycle(cfg, 0.5)}


if __name__ == '__main__':
  for label, overrides in runs(config()).items():
    print(f'{label:12s} {" ".join(overrides)}')
