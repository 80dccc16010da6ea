"""Context-length growth (the Large World Model recipe, Liu et al. 2024, at laptop scale):
train at T = 128, then grow the context to 1024 inside the run, against training at 1024
from scratch at the same FLOPs, on the embedded offline corpus, over 3 paired seeds.

  python launch.py sweep context_growth --jobs 2
  python launch.py report runs/context_growth --baseline scratch

Runs (each `<label>/seed<k>`, k = 0, 1, 2; seed k of every label shares its init and
data order, so differences are paired):
  scratch                T = 1024 (RoPE base 10k) for train.steps steps, its batches
                         packed in lanes as the grown runs' are (data.packing=lanes), so
                         seed k of every label reads the same document streams.
  scratch_rows           the same with the default grain pipeline (shuffled packed rows):
                         a control for the packing, which the grown runs cannot use.
  ctx128_<p>pct          T = 128 for p% of scratch's tokens, then 1024, RoPE base 10k
                         throughout; trains until it has spent scratch's FLOPs.
  ctx128_<p>pct_theta    the same with the RoPE base raised with the context, as LWM does
                         (LWM: 1M at 32K -> 10M at 128K -> 25M at 512K -> 50M at 1M tokens):
                         1k at 128 -> 10k at 1024, so the final model is scratch's.
Tokens per step are the same at both lengths (4 x 1024 = 32 x 128 tokens: the batch in
sequences grows as the length shrinks, as LWM keeps its tokens per batch), so the lr
schedule means the same thing in tokens; a step at 128 costs about half the FLOPs
(1.47M vs 2.85M per token: attention is 55% of a token's FLOPs at 1024 at this width), so
the grown runs train 372 steps for scratch's 300 (24% more tokens) at the same FLOPs. The report's compute-saved table gives the FLOPs each needs to reach
scratch's final val loss; every evaluation is at 1024 (the same 8 batches, 32k tokens,
every 30 steps, about 5% of a run), and the last one also splits the val loss by how
many earlier tokens of its document a target could see (train.eval_positions: buckets
0-63, 64-127, 128-255, 256-511, 512-1023), paired against scratch by seed: the report's
"Val loss by position" table. That is where a model trained mostly at 128 should lose
(positions past 128) and where its extra tokens should win (short range).

Sizes: d 64, 4 layers, 4 query heads / 2 KV heads (GQA), 300 steps of 4 x 1024 tokens
(1.2M tokens, ~6 per parameter): one scratch run is about 8 minutes with two runs at a
time on the 2-core CPU, so the twelve runs fit about an hour.
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxlab.models.flops import flops_per_token

SEEDS = 3
SHORT = 128
FRACTION = 0.5          # of scratch's tokens at T = SHORT
THETA_SHORT = 1_000.0   # the _theta variant's RoPE base at SHORT (10k at the full length)


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2),
      optim=OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.1),
      data=DataConfig(seq_len=1024),
      train=TrainConfig(steps=300, batch_size=4, log_every=10, eval_every=30,
                        eval_batches=8, checkpoint_every=150, eval_positions=True),
  )


def matched(cfg: Config, fraction: float, theta_short: float | None = None) -> list[str]:
  """Overrides for a run at T = SHORT for `fraction` of scratch's tokens, then at
  data.seq_len for the rest of scratch's FLOPs budget."""
  tps = cfg.train.batch_size * cfg.data.seq_len
  at_step = max(1, round(fraction * cfg.train.steps))
  short_model = cfg.model if theta_short is None else dataclasses.replace(
      cfg.model, rope_theta=theta_short)
  full = flops_per_token(cfg.model, cfg.data.seq_len)
  budget = cfg.train.steps * tps * full
  spent = at_step * tps * flops_per_token(short_model, SHORT)
  long_steps = round((budget - spent) / (tps * full))
  out = [f'growth.seq_lens={SHORT},{cfg.data.seq_len}', f'growth.seq_at_tokens={at_step * tps}',
         f'train.steps={at_step + long_steps}']
  if theta_short is not None:
    out.append(f'growth.rope_theta={theta_short:g},{cfg.model.rope_theta:g}')
  return out


def runs(cfg: Config) -> dict[str, list[str]]:
  p = f'{round(100 * FRACTION)}pct'
  return {'scratch': ['data.packing=lanes'],
          'scratch_rows': [],
          f'ctx{SHORT}_{p}': matched(cfg, FRACTION),
          f'ctx{SHORT}_{p}_theta': matched(cfg, FRACTION, THETA_SHORT)}


if __name__ == '__main__':
  cfg = config()
  full = flops_per_token(cfg.model, cfg.data.seq_len)
  short = flops_per_token(cfg.model, SHORT)
  print(f'FLOPs per token: {full:,.0f} at {cfg.data.seq_len}, {short:,.0f} at {SHORT}')
  for label, overrides in runs(cfg).items():
    print(f'{label:24s} {" ".join(overrides)}')
