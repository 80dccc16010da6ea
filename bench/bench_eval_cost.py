"""Seconds per train step and per evaluation batch of experiments' configs, side by side
in one process, and their ratio r (jaxlab.data.pipeline.EVAL_BATCH_COST; README,
"Validation"): evaluating E tokens every K steps costs about r x E / (batch x seq_len) / K
of a run.

  python bench/bench_eval_cost.py                       # the studies' models
  python bench/bench_eval_cost.py demo gstack_vs_scratch:model.n_layers=4

Each argument is EXPERIMENT[:override,override...]. Timings skip the first (compiling)
call and average 8 train steps and 4 evaluation batches.
"""
from __future__ import annotations

import sys
import time

import jax

from jaxlab import config as config_lib
from jaxlab import data as data_lib
from jaxlab.parallel import make_mesh
from jaxlab.train.program import build_program

DEFAULT = ('demo', 'gstack_vs_scratch', 'gstack_operators', 'multilevel_vcycle', 'adamp_vs_adamw',
           'mup_transfer:model.d_model=128')


def measure(spec: str) -> tuple[float, float]:
  experiment, _, overrides = spec.partition(':')
  cfg = config_lib.load(experiment, [o for o in overrides.split(',') if o])
  program = build_program(cfg, make_mesh(cfg.mesh))
  state = program.init_state()
  tokenizer = data_lib.make_tokenizer(cfg.data)
  iterator = data_lib.make_train_iterator(cfg.data, tokenizer, cfg.train.batch_size)

  def put(batch):
    return {k: jax.device_put(v, program.batch_sharding) for k, v in batch.items()}
  train = [put(next(iterator)) for _ in range(9)]
  evals = [put(b) for b in data_lib.eval_batches(cfg.data, tokenizer, cfg.train.batch_size, 5)]
  state, metrics = program.train_step(state, train[0])
  jax.block_until_ready(metrics)
  jax.block_until_ready(program.eval_step(state.params, evals[0], state.step))
  t0 = time.perf_counter()
  for batch in train[1:]:
    state, metrics = program.train_step(state, batch)
  jax.block_until_ready(metrics)
  t_train = (time.perf_counter() - t0) / (len(train) - 1)
  t0 = time.perf_counter()
  for batch in evals[1:]:
    out = program.eval_step(state.params, batch, state.step)
  jax.block_until_ready(out)
  return t_train, (time.perf_counter() - t0) / (len(evals) - 1)


def main() -> None:
  specs = sys.argv[1:] or list(DEFAULT)
  print('| config | train step ms | eval batch ms | r |\n|---|---:|---:|---:|')
  for spec in specs:
    t_train, t_eval = measure(spec)
    print(f'| {spec} | {1e3 * t_train:.0f} | {1e3 * t_eval:.0f} | {t_eval / t_train:.2f} |',
          flush=True)


if __name__ == '__main__':
  main()
