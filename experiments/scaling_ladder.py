"""A scaling ladder on the embedded corpus, scratch and G_stack at every rung, fitted with
`launch.py fit` (jaxlab.scaling); then a prediction for a larger model at a larger
budget, committed before the run that tests it (experiments/scaling_ladder_predict.py).

  python launch.py sweep scaling_ladder --jobs 2
  python launch.py fit runs/scaling_ladder --law chinchilla --predict N=<N>,D=<D>
  python launch.py fit runs/scaling_ladder --law frontier --predict C=3e12
  python launch.py fit runs/scaling_ladder --law multiplier --method stack --predict C=3e12
  python launch.py fit runs/scaling_ladder --law isoflop

The family: 4 layers, 4 heads (2 KV heads), d_model in SIZES (24 to 96; 38k to 456k
parameters with the byte vocabulary's embedding and head), sequences of 128 tokens,
batches of 8. Each size trains for each FLOPs budget in BUDGETS (1e11, 3e11, 1e12; the
runs' own FLOPs accounting, attention included), so D = C / FLOPs-per-token: 15 (N, D)
points per method, from 34 steps (d 96 at 1e11) to about 2,800 (d 24 at 1e12).
Warm-up is a tenth of each run's steps (at least 2), cosine decay to the end, lr 3e-3
(the demo's); val loss on 8 batches (8k tokens, the same every time) about six times
per run, which gives the frontier its curves.

G_stack: the 2-layer source (growth.factor 2) trained for 20% of scratch's tokens (the
demo's growth time), stacked to 4 layers and trained for the FLOPs that remain, so both
methods spend the same FLOPs at every rung (experiments/gstack_vs_scratch.py `matched`).

Seeds: 3 paired seeds (SEEDS; seed k of both methods shares its data order).

History (docs/results/scaling_ladder.md, "First ladder"): the first ladder (4eac01b) ran 2
seeds, and its G_stack runs spent 4-5% more FLOPs than scratch (`matched` probed the
source with the default growth factor; fixed in 3b42cf5); its prediction for d_model 128
at 3e12 held. This ladder (3 seeds, G_stack at equal FLOPs) keeps that ladder's scratch
runs of seeds 0 and 1 (their configs and code path are unchanged: the fix touched only
G_stack's steps) and runs the rest; its prediction is for a rung not measured before,
d_model 160 (1.25M parameters) at 3e12 FLOPs.

Fixed before any run of this ladder (this file and its commit):
  * the fits: Chinchilla approach 3 on the scratch runs (all parameters, final val
    loss, one point per run, bootstrap over runs, 200 refits); the frontier of each
    method through the envelope of its runs' val curves; G_stack's compute multiplier
    from those two frontiers; isoFLOP profiles where a budget brackets its optimum;
  * the prediction target: PREDICT_D_MODEL = 160 (1.25M parameters) at PREDICT_BUDGET =
    3e12 FLOPs, scratch and G_stack, all seeds; measured as the mean over seeds of the
    final val loss, compared with the Chinchilla fit's interval for one new run and
    the frontier's value at 3e12 (the numbers go into
    docs/results/scaling_ladder.md, committed before scaling_ladder_predict runs).
"""
from __future__ import annotations

import dataclasses

from jaxlab.config import (Config, DataConfig, GrowthConfig, ModelConfig, OptimConfig,
                           TrainConfig, load_module)
from jaxlab.models.flops import flops_per_token

_study = load_module('gstack_vs_scratch')

SEEDS = 3
SIZES = (24, 32, 48, 64, 96)          # d_model of the rungs
BUDGETS = (1e11, 3e11, 1e12)          # training FLOPs per run
FRACTION = 0.2                        # G_stack: tokens before growth, share of scratch's
PREDICT_D_MODEL = 160
PREDICT_BUDGET = 3e12


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2),
      optim=OptimConfig(lr=3e-3, warmup_steps=10, weight_decay=0.1),
      data=DataConfig(seq_len=128),
      growth=GrowthConfig(factor=2),
      train=TrainConfig(steps=100, batch_size=8, log_every=10, eval_every=20,
                        eval_batches=8, checkpoint_every=1000),
  )


def rung(cfg: Config, d_model: int, budget: float) -> tuple[Config, list[str]]:
  """The scratch run of one rung: its config and overrides (steps for `budget` FLOPs)."""
  model = dataclasses.replace(cfg.model, d_model=d_model)
  tps = cfg.train.batch_size * cfg.data.seq_len
  steps = max(1, round(budget / (tps * flops_per_token(model, cfg.data.seq_len))))
  overrides = [f'model.d_model={d_model}', f'train.steps={steps}',
               f'optim.warmup_steps={max(2, steps // 10)}',
               f'train.eval_every={max(1, steps // 6)}', f'train.log_every={max(1, steps // 6)}',
               f'train.checkpoint_every={max(1, steps // 2)}']
  return dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, steps=steps)), overrides


def both_methods(cfg: Config, d_model: int, budget: float, name: str) -> dict[str, list[str]]:
  """{label: overrides} of scratch and G_stack at one rung."""
  rcfg, overrides = rung(cfg, d_model, budget)
  stack = _study.matched(rcfg, 'stack', FRACTION)
  steps = int(stack[-1].split('=')[1])
  return {f'{name}_scratch': overrides,
          f'{name}_stack': overrides + stack + [f'train.eval_every={max(1, steps // 6)}']}


def runs(cfg: Config) -> dict[str, list[str]]:
  out = {}
  for d in SIZES:
    for c in BUDGETS:
      out.update(both_methods(cfg, d, c, f'd{d}_c{c:.0e}'))
  return out


if __name__ == '__main__':
  from jaxlab.growth import plan
  cfg = config()
  for label, overrides in runs(cfg).items():
    print(f'{label:22s} {" ".join(overrides)}')
  m = dataclasses.replace(cfg.model, d_model=PREDICT_D_MODEL)
  print(f'prediction: d {PREDICT_D_MODEL}, {plan.n_params(m):,} params, {PREDICT_BUDGET:.0e} FLOPs')
