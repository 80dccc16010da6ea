"""G_stack vs training from scratch at the same FLOPs budget (Du et al. 2024,
docs/growth.md), on the embedded offline corpus, over 3 paired seeds.

  python launch.py sweep gstack_vs_scratch --jobs 2             # the full study
  python launch.py report runs/gstack_vs_scratch --baseline scratch

Runs (labels, each `<label>/seed<k>` for seeds k = 0, 1, 2; seed k of every label
shares its data order, so differences are paired): 'scratch' trains the target model
(config(): 16 layers, d 128) for train.steps steps. The others spend the same training
FLOPs: a 4-layer source model (growth factor g = 4, the paper's) trained for a fraction
of scratch's tokens, stacked, and the 16-layer target trained for the FLOPs that remain
(so it sees more tokens in total).
  stack_<p>pct        G_stack grown after p% of scratch's tokens

Growth time: Du et al.'s fitted rule (jaxlab.growth.growth_timing) asks, at this scale,
for far more tokens than the whole run (it was fitted at 410M-7B and does not
extrapolate down; `python experiments/gstack_vs_scratch.py` prints it). The rule's own
ratio d / D at the scales it was fitted on is about 7% (410M params, 100B tokens ->
7.02B tokens; 7B params, 300B tokens -> 20B), so the study grows at 7% and, later, 20%.
The depth (4 -> 16 layers, as the paper's 4x) is chosen because the effect grows with
depth; the token budget (400 steps of 16 x 128 tokens, 0.8M tokens for 3.4M params) is
what three seeds of three runs allow in about an hour on two CPU cores (about 5x the
demo's FLOPs). That is far fewer tokens per parameter than the paper's (300B for 7B),
and at 7% the 4-layer model trains for only 28 steps: read the result as "at this
scale". The other depth operators are in gstack_operators.py; `experiments/demo.py` is
the short version (make demo).

Validation: 12 batches (25k tokens, an eighth of the split) every 25 steps, the same
tokens every time: about 8% of the run (an evaluation batch costs ~0.2 train steps); the
whole split at every evaluation would cost about 60% of it.
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxlab.growth import plan
from jaxlab.models.flops import flops_per_token

SEEDS = 3
FRACTIONS = (0.07, 0.2)            # tokens before growth, as a fraction of scratch's tokens


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=16, n_heads=4, n_kv_heads=2),
      optim=OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=400, batch_size=16, log_every=10, eval_every=25,
                        eval_batches=12, checkpoint_every=200),
  )


def matched(cfg: Config, method: str, fraction: float, *extra: str) -> list[str]:
  """Overrides for a run that grows after `fraction` of scratch's tokens and then trains
  the target for the rest of scratch's FLOPs budget."""
  tps = cfg.train.batch_size * cfg.data.seq_len
  at_step = max(1, round(fraction * cfg.train.steps))
  # The experiment's own growth settings (factor, source sizes) with this method and time.
  probe = dataclasses.replace(cfg, growth=dataclasses.replace(
      cfg.growth, method=method, at_tokens=at_step * tps))
  small, big = plan.source_model(probe), cfg.model
  budget = cfg.train.steps * tps * flops_per_token(big, cfg.data.seq_len)
  spent = at_step * tps * flops_per_token(small, cfg.data.seq_len)
  big_steps = round((budget - spent) / (tps * flops_per_token(big, cfg.data.seq_len)))
  return [f'growth.method={method}', f'growth.at_tokens={at_step * tps}',
          f'train.steps={at_step + big_steps}', *extra]


def pct(fraction: float) -> str:
  return f'{round(100 * fraction)}pct'


def runs(cfg: Config) -> dict[str, list[str]]:
  out = {'scratch': []}
  for f in FRACTIONS:
    out[f'stack_{pct(f)}'] = matched(cfg, 'stack', f)
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
