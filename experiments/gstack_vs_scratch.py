"""G_stack vs training from scratch at the same FLOPs budget (Du et al. 2024, §1 of
RESEARCH_NOTES.md), on the embedded offline corpus.

  python launch.py sweep gstack_vs_scratch                      # the full study
  python launch.py report runs/gstack_vs_scratch --baseline scratch

Runs (labels): 'scratch' trains the target model (config()) for train.steps steps;
'scratch_seed1' is the same with another init and data order (the noise floor).
Every other run spends the same training FLOPs: a source model (quarter depth for
depth methods, growth factor g = 4) trained for a fraction of scratch's tokens, grown,
and the target trained for the FLOPs that remain (so it sees more tokens in total).
  stack_<p>pct        G_stack grown after p% of scratch's tokens (three times)
  zero/random/interleave_<p>pct   the other depth operators at the first time
  stack_<p>pct_growopt            G_stack with grown Adam moments instead of a reset

Growth time: Du et al.'s fitted rule (jaxlab.growth.growth_timing) asks, for this
scale (N ~ 2M params, D ~ 3M tokens), for thousands of times more tokens than the whole
run: it was fitted at 410M-7B and does not extrapolate down (the study prints it). The
first time used here, 7% of the target's tokens, is the rule's own d / D at the smallest
scale it was fitted on (410M params, 100B tokens -> 7.02B tokens); 20% and 40% are later.
The report plots val loss vs FLOPs and tabulates the FLOPs each run needs to reach
scratch's final val loss. `experiments/demo.py` is the short version (make demo).
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import (Config, DataConfig, GrowthConfig, ModelConfig, OptimConfig,
                           TrainConfig)
from jaxlab.growth import plan
from jaxlab.metrics import flops_per_token

FRACTIONS = (0.07, 0.2, 0.4)       # tokens before growth, as a fraction of scratch's tokens
RAMP_FRACTION = 0.05               # 'random': new layers blend in over 5% of scratch's steps


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2),
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=1000, batch_size=16, log_every=10, eval_every=50,
                        eval_batches=8, checkpoint_every=500),
  )


def matched(cfg: Config, method: str, fraction: float, *extra: str) -> list[str]:
  """Overrides for a run that grows after `fraction` of scratch's tokens and then trains
  the target for the rest of scratch's FLOPs budget."""
  tps = cfg.train.batch_size * cfg.data.seq_len
  at_step = max(1, round(fraction * cfg.train.steps))
  probe = dataclasses.replace(cfg, growth=GrowthConfig(method=method, at_tokens=at_step * tps))
  small, big = plan.source_model(probe), cfg.model
  budget = cfg.train.steps * tps * flops_per_token(big, cfg.data.seq_len)
  spent = at_step * tps * flops_per_token(small, cfg.data.seq_len)
  big_steps = round((budget - spent) / (tps * flops_per_token(big, cfg.data.seq_len)))
  return [f'growth.method={method}', f'growth.at_tokens={at_step * tps}',
          f'train.steps={at_step + big_steps}', *extra]


def runs(cfg: Config) -> dict[str, list[str]]:
  first = FRACTIONS[0]

  def pct(f):
    return f'{round(100 * f)}pct'

  ramp = max(1, round(RAMP_FRACTION * cfg.train.steps))
  # A second scratch run (other init and data order) measures the run-to-run noise
  # that every saving in the table has to be read against.
  out = {'scratch': [], 'scratch_seed1': ['train.seed=1', 'data.seed=1']}
  for f in FRACTIONS:
    out[f'stack_{pct(f)}'] = matched(cfg, 'stack', f)
  out[f'zero_{pct(first)}'] = matched(cfg, 'zero', first)
  out[f'random_{pct(first)}'] = matched(cfg, 'random', first, f'growth.ramp_steps={ramp}')
  out[f'interleave_{pct(first)}'] = matched(cfg, 'interleave', first)
  out[f'stack_{pct(first)}_growopt'] = matched(cfg, 'stack', first, 'growth.optimizer=grow')
  return out


if __name__ == '__main__':
  from jaxlab.growth import growth_timing
  cfg = config()
  n = plan.n_params(cfg.model)
  d_total = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
  rule = growth_timing(n, 6 * n * d_total)
  print(f'target {n:,} params, {d_total:,} tokens: the fitted rule says grow after '
        f'{rule:.3g} tokens = {rule / d_total:.0f}x the whole run')
  for label, overrides in runs(cfg).items():
    print(f'{label:24s} {" ".join(overrides)}')
